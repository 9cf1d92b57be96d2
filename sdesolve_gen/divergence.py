r"""Divergence of a score field: exact trace of the Jacobian, or Hutchinson's estimator.

For a score :math:`s(x, t)` with :math:`x` of shape ``(B, D)`` (flattened; each sample's score
depends on that sample only), the divergence is :math:`\nabla\cdot s = \operatorname{tr}\,\partial s/\partial x`.

* **exact**: :math:`\operatorname{tr} J = \sum_{i=1}^{D} e_i^\top J e_i`, computed as ``D``
  vector-Jacobian products against the basis vectors, batched into one vectorised backward pass
  (``torch.autograd.grad(..., is_grads_batched=True)``), with a per-basis-vector loop as a
  fallback for operations that do not support batching. Cost: about ``D`` backward passes.
* **Hutchinson**: :math:`\operatorname{tr} J = \mathbb E[\epsilon^\top J \epsilon]` for probes with
  :math:`\mathbb E[\epsilon\epsilon^\top] = I` (Rademacher :math:`\pm1` or standard Gaussian).
  ``K`` probes are contracted in one batched backward pass. Cost: about ``K`` backward passes,
  independent of ``D``; variance :math:`2\sum_{i\neq j} J_{ij}^2`-ish (Rademacher:
  :math:`\sum_{i\ne j} (J_{ij}^2 + J_{ij}J_{ji})`), zero when J is diagonal (e.g. isotropic).

The score must be differentiable in ``x`` with its graph kept: a score built from
``torch.autograd.grad(log_p, x)`` needs ``create_graph=True``. A score whose output carries no
graph back to ``x`` has a Jacobian autograd cannot see (it would silently count as 0), so
:func:`score_divergence` raises ``ValueError`` instead.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Tensor = torch.Tensor

__all__ = ["PROBES", "score_divergence", "draw_probes"]

PROBES = ("rademacher", "gaussian")


def draw_probes(
    kind: str, n_probes: int, shape: torch.Size, *, generator: Optional[torch.Generator], dtype: torch.dtype, device: torch.device
) -> Tensor:
    r"""Draw Hutchinson probes :math:`\epsilon` of shape ``(n_probes, *shape)`` with :math:`E[\epsilon\epsilon^\top]=I`.

    Args:
        kind: ``"rademacher"`` (:math:`\pm 1` with probability 1/2) or ``"gaussian"`` (N(0, 1)).
        n_probes: number of probes K.
        shape: shape of one probe, ``(B, D)``.
        generator: optional ``torch.Generator`` (draws are made on the generator's device, then moved).
    """
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    full = (n_probes, *shape)
    if kind == "rademacher":
        e = torch.randint(0, 2, full, generator=generator, device=gen_device).to(dtype) * 2 - 1
    else:
        e = torch.randn(full, generator=generator, device=gen_device, dtype=dtype)
    return e.to(device=device, dtype=dtype)


def _vjps(s: Tensor, x: Tensor, vs: Tensor) -> Tensor:
    """``vs[k] @ ds/dx`` for each k: ``vs`` ``(K, B, D)`` -> ``(K, B, D)`` (batched, loop fallback)."""
    if vs.shape[0] == 1:  # a single vector: a plain backward pass (vmap has overhead)
        return torch.autograd.grad(s, x, vs[0], retain_graph=True)[0][None]
    try:
        return torch.autograd.grad(s, x, vs, retain_graph=True, is_grads_batched=True)[0]
    except (RuntimeError, NotImplementedError):
        return torch.stack([torch.autograd.grad(s, x, v, retain_graph=True)[0] for v in vs])


def score_divergence(
    score: Callable[[Tensor], Tensor], x: Tensor, probes: Optional[Tensor] = None, *, chunk: Optional[int] = None
) -> tuple[Tensor, Tensor]:
    r"""Evaluate a score and its divergence.

    Args:
        score: ``x -> s(x)``, maps ``(B, D)`` to ``(B, D)``, each row depending on its own sample.
        x: points, shape ``(B, D)`` (no graph is needed; a detached copy is differentiated).
        probes: ``None`` for the exact trace, or Hutchinson probes of shape ``(K, B, D)``.
        chunk: for the exact trace, number of basis vectors per batched backward pass
            (default: all ``D`` at once; lower it to bound memory at ``chunk * B * D``).

    Returns:
        ``(s, div)``: the score ``(B, D)`` (detached) and the divergence, ``(B, 1)`` for the exact
        trace or ``(B, K)`` per-probe estimates :math:`\epsilon_k^\top J \epsilon_k`.

    Raises:
        ValueError: if the score's output has no autograd graph back to ``x`` (graph cut).
    """
    B, D = x.shape
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score(xg)
        if not s.requires_grad:
            raise ValueError(
                "score_fn's output carries no autograd graph back to x, so its Jacobian (and the "
                "likelihood's divergence) would silently be wrong: do not .detach() the score, and "
                "compute autograd scores with torch.autograd.grad(..., create_graph=True)"
            )
        if probes is not None:
            vjp = _vjps(s, xg, probes)  # (K, B, D)
            div = (vjp * probes).sum(-1).transpose(0, 1)  # (B, K)
        else:
            step = D if chunk is None else max(1, int(chunk))
            eye = torch.eye(D, dtype=x.dtype, device=x.device)
            div = torch.zeros(B, dtype=x.dtype, device=x.device)
            for i0 in range(0, D, step):
                basis = eye[i0 : i0 + step, None, :].expand(-1, B, D)  # (c, B, D)
                vjp = _vjps(s, xg, basis)  # (c, B, D): row i of J per sample
                div = div + torch.diagonal(vjp[:, :, i0 : i0 + step], dim1=0, dim2=2).sum(-1)
            div = div[:, None]
    return s.detach(), div.detach()

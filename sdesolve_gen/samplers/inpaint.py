r"""Inpainting / imputation by replacement (Song et al. 2021, appendix I.2), as a sampler.

Run the unconditional reverse sampler and, after every step to time :math:`t`, overwrite the
known coordinates with a fresh forward-noised copy :math:`\alpha_t x_{\rm known} + \sigma_t z`.
The result is exact only when the known and unknown blocks are independent; with correlated
blocks it is biased (see :doc:`/guidance` for measured numbers, and
:func:`~sdesolve_gen.analytic.gaussian_conditional` for the exact oracle).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .._checks import check_batch, check_tensor
from ..reverse import ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run
from .langevin import PREDICTORS, corrector_alpha, langevin_step
from .sde import reverse_diffusion_step

Tensor = torch.Tensor

__all__ = ["inpaint", "INPAINT_SAMPLERS"]

#: The unconditional samplers :func:`inpaint` can run (``"pc"`` is predictor-corrector, ``"ode"`` DDIM).
INPAINT_SAMPLERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode")


def _check_mask(mask: object, x_known: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor (bool or 0/1), got {type(mask).__name__}")
    shape, ev = tuple(mask.shape), tuple(x_known.shape[1:])
    if shape not in (tuple(x_known.shape), ev):
        raise ValueError(f"mask must have shape {tuple(x_known.shape)} or {ev} to match x_known, got {shape}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or hold only 0/1 values")
        mask = mask != 0
    return mask.to(x_known.device).expand_as(x_known)


def _ddim_step(run: Run, x: Tensor, i: int) -> Tensor:
    r"""First-order exponential-integrator step of the PF-ODE (DDIM / DPM-Solver-1):
    :math:`x_s = \alpha_s\hat x_0 + \sigma_s\hat\epsilon` with :math:`\hat\epsilon = -\sigma_t s`,
    :math:`\hat x_0 = (x + \sigma_t^2 s)/\alpha_t`."""
    s = run.score(x, i)
    a_t, sg_t, a_s, sg_s = run.alpha[i], run.sigma[i], run.alpha[i + 1], run.sigma[i + 1]
    return a_s * (x + sg_t * sg_t * s) / a_t - sg_s * sg_t * s


def inpaint(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    ts: Tensor,
    *,
    sampler: str = "euler_maruyama",
    generator: Optional[torch.Generator] = None,
    x_T: Optional[Tensor] = None,
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    progress: bool = False,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None,
    differentiable: bool = False,
    check_finite: str = "end",
) -> Solution:
    r"""Inpainting / imputation by replacement (Song et al. 2021, appendix I.2).

    Start from :math:`x_T` (default: the standard prior, with known coordinates replaced). For each
    grid step :math:`t_i \to t_{i+1}`: one step of the unconditional reverse sampler, then

    .. math:: x_{t_{i+1}}[m] \leftarrow \alpha_{t_{i+1}}\, x_{\rm known}[m] + \sigma_{t_{i+1}}\, z[m],

    on the known coordinates :math:`m`. SDE samplers (``"euler_maruyama"``, ``"reverse_diffusion"``,
    ``"ancestral"``, ``"pc"`` = reverse-diffusion predictor + Langevin corrector, replacement after
    each corrector and predictor step) draw a *fresh* :math:`z` every step. ``"ode"`` runs the
    PF-ODE with a DDIM (first-order exponential-integrator) step and uses *one* :math:`z` drawn at
    the start for the whole path, so the known coordinates follow the deterministic curve
    :math:`\alpha_t x_{\rm known} + \sigma_t z` (DDIM's encoding of :math:`x_{\rm known}` for that
    noise); this is a choice, not an exact PF-ODE encoding, which would need the unknown
    coordinates too. The returned sample has ``x[m] == x_known[m]`` exactly (the last
    replacement uses the clean data).

    Replacement is exact when known and unknown blocks are independent; otherwise the unknown
    coordinates see only noised known values and are *biased* towards the marginal (measured
    numbers in :doc:`/guidance`; oracle :func:`~sdesolve_gen.analytic.gaussian_conditional`).

    Args:
        sde: forward linear SDE.
        score_fn: unconditional score ``(x, t) -> (B, *shape)``.
        x_known: ``(B, *shape)``; only the masked entries are used.
        mask: bool (or 0/1) of shape ``(B, *shape)`` or ``shape``; True where known.
        ts: float64 grid from T down to eps.
        sampler: one of :data:`INPAINT_SAMPLERS`.
        generator: ``torch.Generator`` for the prior, the step noise and the replacement noise.
        x_T: optional initial state ``(B, *shape)``.
        snr, n_corrector_steps: Langevin corrector settings for ``"pc"``.
        progress: tqdm progress bar.
        model_kwargs, callback, differentiable, check_finite: as for every sampler
            (:class:`~sdesolve_gen.samplers.Run`).

    Returns:
        :class:`~sdesolve_gen.Solution` with the samples ``x`` of shape ``(B, *shape)`` in
        ``x_known``'s dtype.
    """
    if not isinstance(sampler, str) or sampler not in INPAINT_SAMPLERS:
        raise ValueError(f"sampler must be one of {INPAINT_SAMPLERS}, got {sampler!r}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
    x_known = check_batch("x_known", x_known)
    if not bool(torch.isfinite(x_known).all()):
        raise ValueError("x_known contains NaN or inf")
    m = _check_mask(mask, x_known)
    if x_T is None:
        x_T = sde.prior_sample(tuple(x_known.shape), generator=generator, dtype=x_known.dtype, device=x_known.device)
    else:
        x_T = check_tensor("x_T", x_T)
        if x_T.shape != x_known.shape:
            raise ValueError(f"x_T must have the shape of x_known {tuple(x_known.shape)}, got {tuple(x_T.shape)}")
    if sampler == "pc":
        if not (isinstance(snr, (int, float)) and not isinstance(snr, bool) and snr > 0):
            raise ValueError(f"snr must be a number > 0, got {snr!r}")
        if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
            raise ValueError(f"n_corrector_steps must be an int >= 0, got {n_corrector_steps!r}")
    run = Run(f"inpaint[{sampler}]", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite)
    z_fixed = run.noise(x_known) if sampler == "ode" else None

    def replace(x: Tensor, i: int) -> Tensor:
        z = z_fixed if z_fixed is not None else run.noise(x)
        return torch.where(m, run.alpha[i] * x_known + run.sigma[i] * z, x)

    x = replace(run.x_T, 0)
    for i in run.steps(progress):
        if sampler == "pc":
            alpha_i = corrector_alpha(run, i)
            for _ in range(n_corrector_steps):
                x = replace(langevin_step(run, x, i, float(snr), alpha_i), i)
            x = reverse_diffusion_step(run, x, i)
        elif sampler == "ode":
            x = _ddim_step(run, x, i)
        else:
            x = PREDICTORS[sampler](run, x, i)
        x = replace(x, i + 1)
        run.done(i, x)
    x = torch.where(m, x_known, x)
    return run.finish(x, sampler=sampler)

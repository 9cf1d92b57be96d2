r"""Conditional generation: classifier guidance, classifier-free guidance, inpainting.

**Bayes for scores.** For a label :math:`y`, :math:`p_t(x\mid y) \propto p_t(x)\,p_t(y\mid x)`, so

.. math::

    \nabla_x\log p_t(x\mid y) = \nabla_x\log p_t(x) + \nabla_x\log p_t(y\mid x).

*Classifier guidance* (Dhariwal & Nichol 2021) scales the classifier term by ``scale`` :math:`w`:
:math:`s_w(x,t) = s(x,t) + w\,\nabla_x\log p_t(y\mid x)`. With the exact noise-conditional classifier,
:math:`w=1` is the exact conditional score, :math:`w=0` the unconditional one, and :math:`w>1`
gives the score of the sharpened density :math:`\propto p_t(x)\,p_t(y\mid x)^w`. For :math:`w \ne 0, 1`
these tilted densities at different t are not the marginals of one forward process, so the
reverse SDE does not sample the tilted data distribution :math:`p_0(x)\,p_0(y\mid x)^w` exactly;
it is a heuristic that trades diversity for label fidelity.

*Classifier-free guidance* (Ho & Salimans 2021) uses a conditional and an unconditional score,
:math:`s = (1+w)\,s(x\mid y) - w\,s(x)`, which with exact scores equals classifier guidance at
scale :math:`1+w`. The other common convention (Imagen, ``diffusers``'s ``guidance_scale``) writes
:math:`\gamma = 1+w`: :math:`s = s(x) + \gamma\,(s(x\mid y) - s(x))`; ``gamma=1`` is then plain conditional.

*Inpainting by replacement* (Song et al. 2021, appendix I.2) runs the unconditional reverse
sampler and, after every step to time :math:`t`, overwrites the known coordinates with a fresh
forward-noised copy :math:`\alpha_t x_{\rm known} + \sigma_t z`. The result is exact only when
the known and unknown blocks are independent; with correlated blocks it is biased (see
:doc:`/guidance` for measured numbers, and :func:`gaussian_conditional` for the exact oracle).

Every returned score is a plain ``score_fn(x, t)`` callable: it plugs into every sampler,
:class:`~sdesolve_gen.reverse.ReverseSDE` and :class:`~sdesolve_gen.reverse.ProbabilityFlowODE`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch

from ._checks import as_time64, check_batch, check_tensor
from .analytic import GaussianMixture
from .correctors import _em_step, langevin_step
from .reverse import ScoreFn
from .samplers import SampleResult, _ancestral_step, _reverse_diffusion_step, _Run
from .sde import LinearSDE

Tensor = torch.Tensor
Label = Union[int, Tensor]
LogProbYFn = Callable[[Tensor, Tensor, Tensor], Tensor]
CondScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "classifier_guidance",
    "classifier_free_guidance",
    "analytic_classifier",
    "analytic_conditional_score",
    "inpaint",
    "gaussian_conditional",
    "INPAINT_SAMPLERS",
]

INPAINT_SAMPLERS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode")


# ---------------------------------------------------------------------------------- checks


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _check_label(y: object, n_classes: Optional[int] = None) -> Tensor:
    """Return ``y`` as an int64 tensor of shape ``()`` or ``(B,)``; raise on anything else."""
    if isinstance(y, bool):
        raise TypeError("y must be an int or an integer tensor of labels, got bool")
    if isinstance(y, int):
        yt = torch.tensor(y, dtype=torch.int64)
    elif isinstance(y, Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of labels, got dtype {y.dtype}")
        if y.dim() > 1:
            raise ValueError(f"y must be a scalar or have shape (B,), got shape {tuple(y.shape)}")
        yt = y.to(torch.int64)
    else:
        raise TypeError(f"y must be an int or an integer tensor of labels, got {type(y).__name__}")
    if yt.numel() > 0 and bool((yt < 0).any()):
        raise ValueError(f"y must be >= 0, got min {int(yt.min())}")
    if n_classes is not None and yt.numel() > 0 and bool((yt >= n_classes).any()):
        raise ValueError(f"y must be in [0, {n_classes - 1}] (the data has {n_classes} components), got max {int(yt.max())}")
    return yt


def _label_for_batch(y: Tensor, batch: int) -> Tensor:
    if y.dim() == 1 and y.shape[0] != batch:
        raise ValueError(f"y has shape ({y.shape[0]},) but x has batch size {batch}")
    return y


# ---------------------------------------------------------------------------------- guidance


def classifier_guidance(score_fn: ScoreFn, log_prob_y_fn: LogProbYFn, y: Label, scale: float = 1.0) -> ScoreFn:
    r"""Classifier guidance: :math:`s_w(x, t) = s(x, t) + w\,\nabla_x \log p_t(y \mid x)`.

    The classifier gradient is taken by autograd. If ``x`` requires grad (e.g. a likelihood's
    exact divergence differentiates the score), the graph is kept (``create_graph=True``) so the
    Jacobian of the guided score is exact; otherwise the gradient is detached so a sampler's
    state never accumulates a graph over steps.

    Args:
        score_fn: unconditional score ``(x, t) -> (B, *shape)``.
        log_prob_y_fn: noise-conditional classifier ``(x, t, y) -> log p_t(y | x)``, shape ``(B,)``;
            ``t`` is a float64 0-d or ``(B,)`` tensor, ``y`` an int64 tensor ``()`` or ``(B,)``.
        y: the requested label, an int or an integer tensor of shape ``(B,)``.
        scale: guidance weight :math:`w` (finite real; 1 = Bayes, 0 = unconditional, < 0 pushes
            away from ``y``).

    Returns:
        A score function ``(x, t) -> (B, *shape)``.

    Raises:
        TypeError / ValueError: on a non-callable function, a non-number ``scale`` or a bad ``y``.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    if not callable(log_prob_y_fn):
        raise TypeError(f"log_prob_y_fn must be callable as log_prob_y_fn(x, t, y), got {type(log_prob_y_fn).__name__}")
    w = _check_scale(scale)
    y = _check_label(y)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        s = score_fn(x, t)
        if w == 0.0:
            return s
        return s + w * _classifier_grad(log_prob_y_fn, x, t, _label_for_batch(y, x.shape[0]))

    return guided


def _classifier_grad(log_prob_y_fn: LogProbYFn, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    r""":math:`\nabla_x \log p_t(y \mid x)`, shape of ``x``; keeps the graph iff ``x`` requires grad."""
    keep = x.requires_grad and torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if keep else x.detach().requires_grad_(True)
        lp = log_prob_y_fn(xg, t, y)
        if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"log_prob_y_fn must return shape (B,) = ({x.shape[0]},), got {got}")
        (grad,) = torch.autograd.grad(lp.sum(), xg, create_graph=keep)
    return grad if keep else grad.detach()


def classifier_free_guidance(cond_score_fn: CondScoreFn, uncond_score_fn: ScoreFn, y: Label, scale: float) -> ScoreFn:
    r"""Classifier-free guidance: :math:`s = (1+w)\,s(x, t \mid y) - w\,s(x, t)`.

    Convention (Ho & Salimans 2021): ``scale`` is :math:`w`; ``0`` gives the conditional score
    and, for exact scores, :math:`w` equals classifier guidance at scale :math:`1+w` since
    :math:`s(x\mid y) - s(x) = \nabla_x\log p_t(y\mid x)`. With the other common convention
    :math:`\gamma` (``guidance_scale`` in Imagen/``diffusers``, :math:`s = s(x) + \gamma(s(x\mid y) - s(x))`),
    pass ``scale = gamma - 1``.

    Args:
        cond_score_fn: ``(x, t, y) -> (B, *shape)``, the conditional score.
        uncond_score_fn: ``(x, t) -> (B, *shape)``, the unconditional score (for a single
            network, the same net with the null label).
        y: the requested label, an int or an integer tensor of shape ``(B,)``.
        scale: :math:`w`, a finite real number.

    Returns:
        A score function ``(x, t) -> (B, *shape)``. Two score evaluations per call (one if
        ``scale == 0``).
    """
    if not callable(cond_score_fn):
        raise TypeError(f"cond_score_fn must be callable as cond_score_fn(x, t, y), got {type(cond_score_fn).__name__}")
    if not callable(uncond_score_fn):
        raise TypeError(f"uncond_score_fn must be callable as uncond_score_fn(x, t), got {type(uncond_score_fn).__name__}")
    w = _check_scale(scale)
    y = _check_label(y)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        s_c = cond_score_fn(x, t, _label_for_batch(y, x.shape[0]))
        if w == 0.0:
            return s_c
        return (1.0 + w) * s_c - w * uncond_score_fn(x, t)

    return guided


# ---------------------------------------------------------------------------------- analytic oracles


def _check_oracle_args(data: object, sde: object) -> None:
    if not isinstance(data, GaussianMixture):
        raise TypeError(f"data must be an analytic GaussianMixture, got {type(data).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")


def analytic_classifier(data: GaussianMixture, sde: LinearSDE) -> LogProbYFn:
    r"""The exact noise-conditional classifier of a mixture's component label.

    .. math::

        \log p_t(y{=}k \mid x) = \log\frac{w_k\,\mathcal N(x;\alpha_t\mu_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)}
        {\sum_j w_j\,\mathcal N(x;\alpha_t\mu_j, \alpha_t^2\Sigma_j + \sigma_t^2 I)},

    i.e. ``data.log_responsibilities(x, t, sde)[:, k]``.

    Returns:
        ``log_prob_y_fn(x, t, y) -> (B,)``, differentiable in ``x``; ``y`` an int or ``(B,)``
        integer tensor in ``[0, K)``.
    """
    _check_oracle_args(data, sde)
    K = data.n_components

    def log_prob_y(x: Tensor, t: Tensor, y: Label) -> Tensor:
        yt = _label_for_batch(_check_label(y, K), x.shape[0]).to(x.device)
        log_r = data.log_responsibilities(x, as_time64(t).clamp(0.0, sde.T), sde)  # (B, K)
        if yt.dim() == 0:
            return log_r[:, yt]
        return log_r.gather(1, yt[:, None])[:, 0]

    return log_prob_y


def analytic_conditional_score(data: GaussianMixture, sde: LinearSDE) -> CondScoreFn:
    r"""The exact conditional score of a mixture given its component label.

    Component :math:`k` alone is the Gaussian :math:`\mathcal N(\mu_k, \Sigma_k)`, so
    :math:`\nabla_x\log p_t(x\mid y{=}k) = -(\alpha_t^2\Sigma_k + \sigma_t^2 I)^{-1}(x - \alpha_t\mu_k)`,
    computed by a one-component :class:`~sdesolve_gen.analytic.GaussianMixture`.

    Returns:
        ``cond_score_fn(x, t, y) -> (B, *event_shape)`` with ``y`` an int or ``(B,)`` integer tensor.
    """
    _check_oracle_args(data, sde)
    K = data.n_components
    parts = [
        GaussianMixture(data.means[k : k + 1], data.covs[k : k + 1], event_shape=data.event_shape).score_fn(sde)
        for k in range(K)
    ]

    def cond_score(x: Tensor, t: Tensor, y: Label) -> Tensor:
        yt = _label_for_batch(_check_label(y, K), x.shape[0])
        if yt.dim() == 0:
            return parts[int(yt)](x, t)
        out = torch.zeros_like(x)
        for k in torch.unique(yt).tolist():
            sel = (yt == k).to(x.device)
            tk = t[sel.cpu()] if isinstance(t, Tensor) and t.dim() == 1 and t.shape[0] == x.shape[0] else t
            out = out.index_put((sel.nonzero()[:, 0],), parts[k](x[sel], tk))
        return out

    return cond_score


def gaussian_conditional(mean: Tensor, cov: Tensor, mask: Tensor, x_known: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Exact conditional of a Gaussian :math:`\mathcal N(\mu, \Sigma)` given the known coordinates.

    With known block :math:`k` and unknown block :math:`u`,

    .. math::

        x_u \mid x_k \sim \mathcal N\big(\mu_u + \Sigma_{uk}\Sigma_{kk}^{-1}(x_k - \mu_k),\
        \Sigma_{uu} - \Sigma_{uk}\Sigma_{kk}^{-1}\Sigma_{ku}\big).

    Args:
        mean: ``(D,)``.
        cov: ``(D, D)``.
        mask: ``(D,)`` bool, True where known.
        x_known: ``(B, D)`` (unknown entries ignored).

    Returns:
        ``(cond_mean (B, D_u), cond_cov (D_u, D_u))`` in float64, over the unknown coordinates in order.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    D = mean.shape[0]
    mask = torch.as_tensor(mask).to(torch.bool).reshape(-1)
    if mask.shape != (D,):
        raise ValueError(f"mask must have shape (D,) = ({D},), got {tuple(mask.shape)}")
    if cov.shape != (D, D):
        raise ValueError(f"cov must have shape (D, D) = ({D}, {D}), got {tuple(cov.shape)}")
    x_known = check_batch("x_known", x_known).reshape(x_known.shape[0], -1).to(torch.float64)
    if x_known.shape[1] != D:
        raise ValueError(f"x_known must have D={D} coordinates per sample, got {x_known.shape[1]}")
    k, u = mask, ~mask
    S_kk, S_uk, S_uu = cov[k][:, k], cov[u][:, k], cov[u][:, u]
    gain = torch.linalg.solve(S_kk, S_uk.T).T  # (D_u, D_k) = S_uk S_kk^{-1}
    cond_mean = mean[u] + (x_known[:, k] - mean[k]) @ gain.T
    return cond_mean, S_uu - gain @ S_uk.T


# ---------------------------------------------------------------------------------- inpainting


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


_SDE_STEPS = {"euler_maruyama": _em_step, "reverse_diffusion": _reverse_diffusion_step, "ancestral": _ancestral_step}


def _ddim_step(run: _Run, x: Tensor, i: int) -> Tensor:
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
) -> SampleResult:
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
    numbers in :doc:`/guidance`; oracle :func:`gaussian_conditional`).

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

    Returns:
        ``(x, info)``: samples ``(B, *shape)`` in ``x_known``'s dtype and a
        :class:`~sdesolve_gen.result.SolveInfo`.
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
    run = _Run(f"inpaint[{sampler}]", sde, score_fn, x_T, ts, generator)
    z_fixed = run.noise(x_known) if sampler == "ode" else None

    def replace(x: Tensor, i: int) -> Tensor:
        z = z_fixed if z_fixed is not None else run.noise(x)
        return torch.where(m, run.alpha[i] * x_known + run.sigma[i] * z, x)

    x = replace(run.x_T, 0)
    for i in run.steps(progress):
        if sampler == "pc":
            alpha_i = (run.alpha[i + 1] / run.alpha[i]) ** 2
            for _ in range(n_corrector_steps):
                x = replace(langevin_step(run, x, i, float(snr), alpha_i), i)
            x = _reverse_diffusion_step(run, x, i)
        elif sampler == "ode":
            x = _ddim_step(run, x, i)
        else:
            x = _SDE_STEPS[sampler](run, x, i)
        x = replace(x, i + 1)
    x = torch.where(m, x_known, x)
    return run.finish(x, False, sampler=sampler)

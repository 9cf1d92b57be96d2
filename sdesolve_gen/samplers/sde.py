r"""Stochastic samplers of the reverse-time SDE: Euler-Maruyama, reverse diffusion, ancestral, adaptive.

All share the signature of :mod:`sdesolve_gen.samplers._run`. ``denoise=True`` ends with one
Tweedie step :math:`\hat x_0 = (x + \sigma^2 s(x, \epsilon))/\alpha` at the last time (one extra
evaluation). NaN/inf in a score raises :class:`~sdesolve_gen.NonFiniteError` naming the time.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import torch

from .._checks import check_int, check_positive, check_range
from ..reverse import ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run, tweedie_x0

Tensor = torch.Tensor

__all__ = ["euler_maruyama", "reverse_diffusion", "ancestral", "adaptive_sde", "em_step", "reverse_diffusion_step", "ancestral_step"]


def euler_maruyama(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
) -> Solution:
    r"""Euler-Maruyama on the reverse-time SDE.

    .. math:: x_{s} = x_t - \big[f(x_t, t) - g(t)^2 s(x_t, t)\big] h + g(t)\sqrt{h}\,z,\qquad z\sim\mathcal N(0, I).

    One score evaluation per step; weak order 1 (strong order 1 here, the noise being additive).
    """
    run = Run("euler_maruyama", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    x = run.x_T
    for i in run.steps(progress):
        x = em_step(run, x, i)
        run.done(i, x)
    return run.finish(x)


def em_step(run: Run, x: Tensor, i: int) -> Tensor:
    h = run.t[i] - run.t[i + 1]
    return x + (run.g2[i] * run.score(x, i) - run.a[i] * x) * h + math.sqrt(run.g2[i] * h) * run.noise(x)


def _transition(run: Run, i: int) -> Tuple[float, float]:
    r"""Exact forward kernel from :math:`t_{i+1}` to :math:`t_i`: ``(a_ratio, var)`` with
    :math:`x_{t_i} = \tfrac{\alpha_i}{\alpha_{i+1}} x_{t_{i+1}} + \sqrt{var}\,z`,
    :math:`var = \sigma_i^2 - (\alpha_i/\alpha_{i+1})^2\sigma_{i+1}^2`."""
    r = run.alpha[i] / run.alpha[i + 1]
    var = run.sigma[i] ** 2 - r * r * run.sigma[i + 1] ** 2
    return r, max(var, 0.0)


def reverse_diffusion_step(run: Run, x: Tensor, i: int) -> Tensor:
    r, G2 = _transition(run, i)
    # forward discretisation x_i = x_{i+1} + f_i + G_i z with f_i = (r - 1) x; reversed:
    return x - (r - 1.0) * x + G2 * run.score(x, i) + math.sqrt(G2) * run.noise(x)


def reverse_diffusion(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
) -> Solution:
    r"""The reverse-diffusion predictor of Song et al. (2021).

    Discretise the forward SDE exactly between grid times,
    :math:`x_{t_i} = x_{t_{i+1}} + f_i + G_i z` with :math:`f_i = (\alpha_i/\alpha_{i+1} - 1)x` and
    :math:`G_i^2 = \sigma_i^2 - (\alpha_i/\alpha_{i+1})^2\sigma_{i+1}^2` (DDPM's
    :math:`\sqrt{1-\beta_i}`, :math:`\beta_i` for VP; SMLD's :math:`\sigma_i^2 - \sigma_{i-1}^2` for VE),
    then step the reverse chain

    .. math:: x_{t_{i+1}} = x_{t_i} - f_i + G_i^2\, s(x_{t_i}, t_i) + G_i z .
    """
    run = Run("reverse_diffusion", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    x = run.x_T
    for i in run.steps(progress):
        x = reverse_diffusion_step(run, x, i)
        run.done(i, x)
    return run.finish(x)


def ancestral_step(run: Run, x: Tensor, i: int) -> Tensor:
    r, var_ts = _transition(run, i)
    sig_t2, sig_s2 = run.sigma[i] ** 2, run.sigma[i + 1] ** 2
    x0 = tweedie_x0(x, run.score(x, i), run.alpha[i], run.sigma[i])
    mean = (r * sig_s2 / sig_t2) * x + (run.alpha[i + 1] * var_ts / sig_t2) * x0
    std = math.sqrt(var_ts * sig_s2 / sig_t2)
    return mean + std * run.noise(x)


def ancestral(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
) -> Solution:
    r"""Ancestral sampling: draw :math:`x_s \sim q(x_s \mid x_t, \hat x_0)`, the exact Gaussian
    posterior of the forward chain with :math:`\hat x_0` from Tweedie.

    With :math:`\alpha_{t|s} = \alpha_t/\alpha_s` and :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2\sigma_s^2`,

    .. math::

        x_s = \frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} x_t + \frac{\alpha_s\sigma_{t|s}^2}{\sigma_t^2}\hat x_0
        + \sqrt{\frac{\sigma_{t|s}^2\sigma_s^2}{\sigma_t^2}}\,z .

    For VP this is DDPM's sampler (Ho et al. 2020); for VE it is SMLD's ancestral rule
    :math:`x_{i-1} = x_i + (\sigma_i^2 - \sigma_{i-1}^2) s + \sqrt{\sigma_{i-1}^2(\sigma_i^2-\sigma_{i-1}^2)/\sigma_i^2}\,z`
    (Song et al. 2021, appendix).
    """
    run = Run("ancestral", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    x = run.x_T
    for i in run.steps(progress):
        x = ancestral_step(run, x, i)
        run.done(i, x)
    return run.finish(x)


def adaptive_sde(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    rtol: float = 1e-2, atol: float = 1e-2, h_init: float = 1e-2,
    theta: float = 0.9, r: float = 0.9, max_steps: int = 100_000,
) -> Solution:
    r"""Adaptive-step reverse SDE solver of Jolicoeur-Martineau et al. (2021), "Gotta Go Fast".

    Each attempt from t with step h draws one :math:`z` and forms the Euler-Maruyama proposal
    :math:`x' = x + h\,b(x, t) + g(t)\sqrt h z` and the improved-Euler one
    :math:`x'' = \tfrac12\big(x' + x + h\,b(x', t-h) + g(t-h)\sqrt h z\big)`, with
    :math:`b = g^2 s - f` the reverse drift. The error
    :math:`E = \|(x' - x'')/\delta\|_2/\sqrt{D}`, :math:`\delta = \max(\mathrm{atol}, \mathrm{rtol}\max(|x'|, |x'_{prev}|))`,
    is taken per sample and maximised over the batch (every sample meets the tolerance). Accept if
    :math:`E \le 1` (keep :math:`x''`); the next step is :math:`h \leftarrow \min(t - \epsilon, \theta h E^{-r})`.
    Two evaluations per attempt. Only ``ts[0]`` and ``ts[-1]`` are used.
    """
    rtol, atol, h = check_positive("rtol", rtol), check_positive("atol", atol), check_positive("h_init", h_init)
    theta = check_range("theta", theta, 0.0, 1.0, lo_open=True)  # theta = 0 would never move t
    r = check_range("r", r, 0.0, 1.0, lo_open=True)
    max_steps = check_int("max_steps", max_steps, 1)
    run = Run("adaptive_sde", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    t, t_end = run.t[0], run.t[-1]
    x = run.x_T
    x_prev = x
    D = x[0].numel()
    accepted = rejected = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t - t_end, desc="adaptive_sde", leave=False)

    def coeffs(tau: float) -> Tuple[Tensor, float, float]:
        # schedule arithmetic on the host; the score's time is filled on x's device (no copy)
        host = torch.tensor(tau, dtype=torch.float64, device="cpu")
        tt = torch.full((), tau, dtype=torch.float64, device=x.device)
        return tt, float(sde.drift_coef(host)), float(sde.diffusion2(host))

    while t - t_end > 1e-12 * max(1.0, t_end):
        if accepted + rejected >= max_steps:
            raise RuntimeError(f"adaptive_sde: max_steps={max_steps} reached at t={t:.6g}; loosen rtol/atol")
        h = min(h, t - t_end)
        tt, a, g2 = coeffs(t)
        tn, an, g2n = coeffs(t - h)
        z = run.noise(x)
        x1 = x + h * (g2 * run.caller.score(x, tt) - a * x) + math.sqrt(g2 * h) * z
        x2 = 0.5 * (x1 + x + h * (g2n * run.caller.score(x1, tn) - an * x1) + math.sqrt(g2n * h) * z)
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev.abs()), min=atol)
        err = ((x1 - x2) / delta).flatten(1).norm(dim=1) / math.sqrt(D)
        E = float(err.max())
        if E <= 1.0:
            t -= h
            x, x_prev = x2, x1
            accepted += 1
            if run.callback is not None:
                run.callback({"i": accepted - 1, "t": tn, "x": x, "denoised": None})
            if bar is not None:
                bar.update(h)
        else:
            rejected += 1
        h = theta * h * max(E, 1e-10) ** (-r)
    if bar is not None:
        bar.close()
    sol = run.finish(x, rtol=rtol, atol=atol)
    sol.n_steps, sol.n_rejected = accepted, rejected
    return sol

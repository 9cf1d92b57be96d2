r"""Samplers: small functions with one signature (the style of k-diffusion's ``sampling.py``).

Every sampler is called as::

    x, info = sampler(sde, score_fn, x_T, ts, *, generator=None, denoise=False, progress=False, ...)

with ``sde`` a :class:`~sdesolve_gen.sde.LinearSDE`, ``score_fn(x, t)`` a score, ``x_T`` the
initial noise of shape ``(B, *shape)``, ``ts`` a float64 grid running from ``T`` down to ``eps``
(e.g. :func:`~sdesolve_gen.integrate.timesteps`), and returns the samples ``(B, *shape)`` and a
:class:`~sdesolve_gen.result.SolveInfo` with the number of score evaluations. A step goes from
:math:`t = t_i` to :math:`s = t_{i+1} < t` with :math:`h = t - s`.

``denoise=True`` ends with one Tweedie step :math:`\hat x_0 = (x + \sigma^2 s(x, \epsilon))/\alpha`
at the last time (one extra evaluation). NaN/inf in a score raises
:class:`~sdesolve_gen.NonFiniteError` naming the time.
"""

from __future__ import annotations

import math
import time as _time
from typing import Any, Iterable, List, Optional, Tuple

import torch

from ._checks import check_batch, check_positive
from .integrate import ADAPTIVE_ODE_METHODS, odeint, t_of_lambda
from .result import SolveInfo
from .reverse import ProbabilityFlowODE, ScoreFn, _ScoreCaller
from .sde import LinearSDE, VPSDE

Tensor = torch.Tensor
SampleResult = Tuple[Tensor, SolveInfo]

__all__ = [
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "ode",
    "heun",
    "dpm_solver",
    "dpm_solver_pp_2m",
    "adaptive_sde",
    "tweedie_denoise",
    "vp_t_of_lambda",
]


# ---------------------------------------------------------------------------------- plumbing


class _Run:
    """Validated inputs and per-grid schedule values shared by the samplers.

    Attributes:
        t: list of grid times (floats, decreasing); ``tt`` the same as 0-d float64 tensors.
        alpha, sigma, a, g2: lists of :math:`\\alpha, \\sigma, (\\log\\alpha)', g^2` on the grid.
    """

    def __init__(self, name: str, sde: Any, score_fn: Any, x_T: Any, ts: Any, generator: Optional[torch.Generator]) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.x_T = check_batch("x_T", x_T)
        if not bool(torch.isfinite(self.x_T).all()):
            raise ValueError("x_T contains NaN or inf")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        ts = _check_ts(ts, sde)
        self.name, self.sde, self.generator = name, sde, generator
        self.caller = _ScoreCaller(sde, score_fn, None, True)
        self.tt = [ts[i] for i in range(ts.numel())]
        self.t = ts.tolist()
        self.alpha = torch.exp(sde.log_alpha(ts)).tolist()
        self.sigma = torch.sqrt(sde.sigma2(ts)).tolist()
        self.a = sde.drift_coef(ts).tolist()
        self.g2 = sde.diffusion2(ts).tolist()
        self.start = _time.perf_counter()

    def score(self, x: Tensor, i_or_t: Any) -> Tensor:
        t = self.tt[i_or_t] if isinstance(i_or_t, int) else i_or_t
        return self.caller.score(x, t)

    def noise(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def steps(self, progress: bool) -> Iterable[int]:
        rng = range(len(self.t) - 1)
        if progress:
            from tqdm.auto import tqdm

            return tqdm(rng, desc=self.name, leave=False)
        return rng

    def finish(self, x: Tensor, denoise: bool, **extra: Any) -> SampleResult:
        if denoise:
            x = tweedie_x0(x, self.score(x, len(self.t) - 1), self.alpha[-1], self.sigma[-1])
        info = SolveInfo(
            method=self.name,
            nfe=self.caller.nfe,
            n_steps=len(self.t) - 1,
            wall_time=_time.perf_counter() - self.start,
            extra=extra,
        )
        return x, info


def _check_ts(ts: Any, sde: LinearSDE) -> Tensor:
    if not isinstance(ts, torch.Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError("ts must be a 1-D tensor of times") from None
    ts = ts.detach().to(torch.float64).cpu()
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times (T -> eps), got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("ts must be finite")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly decreasing (sampling runs from T down to eps)")
    if float(ts[-1]) <= 0.0 or float(ts[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"ts must lie in (0, T] = (0, {sde.T}], got [{float(ts[-1])}, {float(ts[0])}]")
    return ts


def tweedie_x0(x: Tensor, score: Tensor, alpha: float, sigma: float) -> Tensor:
    r"""Tweedie's posterior mean :math:`\mathbb E[x_0 \mid x_t] = (x + \sigma^2 s)/\alpha`."""
    return (x + sigma * sigma * score) / alpha


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    r"""One Tweedie step at time ``t``: :math:`\hat x_0 = (x + \sigma(t)^2 s(x, t))/\alpha(t)`."""
    tt = sde.time(t)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    return tweedie_x0(x, _ScoreCaller(sde, score_fn, None, True).score(x, tt), alpha, sigma)


# ---------------------------------------------------------------------------------- SDE samplers


def euler_maruyama(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False,
) -> SampleResult:
    r"""Euler-Maruyama on the reverse-time SDE.

    .. math:: x_{s} = x_t - \big[f(x_t, t) - g(t)^2 s(x_t, t)\big] h + g(t)\sqrt{h}\,z,\qquad z\sim\mathcal N(0, I).

    One score evaluation per step; weak order 1 (strong order 1 here, the noise being additive).
    """
    run = _Run("euler_maruyama", sde, score_fn, x_T, ts, generator)
    x = run.x_T
    for i in run.steps(progress):
        x = _em_step(run, x, i)
    return run.finish(x, denoise)


def _em_step(run: _Run, x: Tensor, i: int) -> Tensor:
    h = run.t[i] - run.t[i + 1]
    return x + (run.g2[i] * run.score(x, i) - run.a[i] * x) * h + math.sqrt(run.g2[i] * h) * run.noise(x)


def _transition(run: _Run, i: int) -> Tuple[float, float]:
    r"""Exact forward kernel from :math:`t_{i+1}` to :math:`t_i`: ``(a_ratio, var)`` with
    :math:`x_{t_i} = \tfrac{\alpha_i}{\alpha_{i+1}} x_{t_{i+1}} + \sqrt{var}\,z`,
    :math:`var = \sigma_i^2 - (\alpha_i/\alpha_{i+1})^2\sigma_{i+1}^2`."""
    r = run.alpha[i] / run.alpha[i + 1]
    var = run.sigma[i] ** 2 - r * r * run.sigma[i + 1] ** 2
    return r, max(var, 0.0)


def _reverse_diffusion_step(run: _Run, x: Tensor, i: int) -> Tensor:
    r, G2 = _transition(run, i)
    # forward discretisation x_i = x_{i+1} + f_i + G_i z with f_i = (r - 1) x; reversed:
    return x - (r - 1.0) * x + G2 * run.score(x, i) + math.sqrt(G2) * run.noise(x)


def reverse_diffusion(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False,
) -> SampleResult:
    r"""The reverse-diffusion predictor of Song et al. (2021).

    Discretise the forward SDE exactly between grid times,
    :math:`x_{t_i} = x_{t_{i+1}} + f_i + G_i z` with :math:`f_i = (\alpha_i/\alpha_{i+1} - 1)x` and
    :math:`G_i^2 = \sigma_i^2 - (\alpha_i/\alpha_{i+1})^2\sigma_{i+1}^2` (DDPM's
    :math:`\sqrt{1-\beta_i}`, :math:`\beta_i` for VP; SMLD's :math:`\sigma_i^2 - \sigma_{i-1}^2` for VE),
    then step the reverse chain

    .. math:: x_{t_{i+1}} = x_{t_i} - f_i + G_i^2\, s(x_{t_i}, t_i) + G_i z .
    """
    run = _Run("reverse_diffusion", sde, score_fn, x_T, ts, generator)
    x = run.x_T
    for i in run.steps(progress):
        x = _reverse_diffusion_step(run, x, i)
    return run.finish(x, denoise)


def _ancestral_step(run: _Run, x: Tensor, i: int) -> Tensor:
    r, var_ts = _transition(run, i)
    sig_t2, sig_s2 = run.sigma[i] ** 2, run.sigma[i + 1] ** 2
    x0 = tweedie_x0(x, run.score(x, i), run.alpha[i], run.sigma[i])
    mean = (r * sig_s2 / sig_t2) * x + (run.alpha[i + 1] * var_ts / sig_t2) * x0
    std = math.sqrt(var_ts * sig_s2 / sig_t2)
    return mean + std * run.noise(x)


def ancestral(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False,
) -> SampleResult:
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
    run = _Run("ancestral", sde, score_fn, x_T, ts, generator)
    x = run.x_T
    for i in run.steps(progress):
        x = _ancestral_step(run, x, i)
    return run.finish(x, denoise)


# ---------------------------------------------------------------------------------- ODE samplers


def ode(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
) -> SampleResult:
    r"""Probability-flow ODE :math:`dx/dt = f - \tfrac12 g^2 s` from ``ts[0]`` to ``ts[-1]`` with a
    torchdiffeq solver (adaptive ``dopri5`` by default, tolerances explicit). Only the end
    points of ``ts`` are used by adaptive methods; fixed-step methods step on ``ts``.
    ``generator`` is unused (the sampler is deterministic given ``x_T``)."""
    run = _Run("ode", sde, score_fn, x_T, ts, generator)
    func = ProbabilityFlowODE(sde, score_fn)
    grid = torch.stack([run.tt[0], run.tt[-1]]) if method in ADAPTIVE_ODE_METHODS else torch.stack(run.tt)
    xs, info = odeint(func, run.x_T, grid, method=method, rtol=rtol, atol=atol, return_info=True, progress=progress)
    run.caller.nfe = func.nfe
    x, out = run.finish(xs[-1], denoise, rtol=rtol, atol=atol, solver=method)
    out.method = f"ode[{method}]"
    out.n_steps = 0 if grid.numel() == 2 else len(run.t) - 1
    return x, out


def heun(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, last_euler: bool = True,
) -> SampleResult:
    r"""Heun's second-order method on the PF-ODE in EDM's variables (Karras et al. 2022, Alg. 1).

    With :math:`\bar x = x/\alpha` and :math:`\bar\sigma = \sigma/\alpha` the PF-ODE of any linear SDE
    becomes :math:`d\bar x/d\bar\sigma = (\bar x - \hat x_0)/\bar\sigma = -\sigma\,s(x, t)`, whose
    trajectories are nearly straight; Heun steps it:

    .. math::

        d_i = -\sigma_i s(x_i, t_i),\quad \tilde x = \bar x_i + (\bar\sigma_{i+1} - \bar\sigma_i) d_i,\quad
        \bar x_{i+1} = \bar x_i + (\bar\sigma_{i+1}-\bar\sigma_i)\tfrac12(d_i + \tilde d),

    with :math:`\tilde d` the slope at :math:`(\tilde x, t_{i+1})`. 2 evaluations per step; with
    ``last_euler`` the final step is Euler (1 evaluation), as in EDM.
    """
    run = _Run("heun", sde, score_fn, x_T, ts, generator)
    sbar = [s / a for s, a in zip(run.sigma, run.alpha)]
    xbar = run.x_T / run.alpha[0]
    n = len(run.t) - 1
    for i in run.steps(progress):
        d = -run.sigma[i] * run.score(xbar * run.alpha[i], i)
        ds = sbar[i + 1] - sbar[i]
        x_euler = xbar + ds * d
        if last_euler and i == n - 1:
            xbar = x_euler
            continue
        d2 = -run.sigma[i + 1] * run.score(x_euler * run.alpha[i + 1], i + 1)
        xbar = xbar + ds * 0.5 * (d + d2)
    return run.finish(xbar * run.alpha[-1], denoise)


def vp_t_of_lambda(sde: VPSDE, lam: Tensor) -> Tensor:
    r"""Closed-form inverse of :math:`\lambda(t) = \log(\alpha_t/\sigma_t)` for the VP SDE
    (Lu et al. 2022, appendix).

    With :math:`\log\alpha_t = -\tfrac14 t^2(\beta_1-\beta_0) - \tfrac12 t\beta_0` and
    :math:`\sigma_t^2 = 1 - \alpha_t^2`, :math:`e^{2\lambda} = \alpha^2/(1-\alpha^2)` gives
    :math:`L := -\log\alpha_t^2 = \mathrm{softplus}(-2\lambda)` and, solving the quadratic
    :math:`\tfrac12(\beta_1-\beta_0)t^2 + \beta_0 t = L` stably,

    .. math:: t(\lambda) = \frac{2L}{\beta_0 + \sqrt{\beta_0^2 + 2(\beta_1-\beta_0)L}} .

    Args:
        sde: a :class:`~sdesolve_gen.sde.VPSDE`.
        lam: half-log-SNR values, any shape.

    Returns:
        float64 times of the same shape.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    L = torch.nn.functional.softplus(-2.0 * lam)
    b0, b1 = float(sde.beta_min), float(sde.beta_max)
    return 2.0 * L / (b0 + torch.sqrt(b0 * b0 + 2.0 * (b1 - b0) * L))


def _t_of_lambda(sde: LinearSDE, lam: Tensor, lo: float, hi: float) -> Tensor:
    """Closed form for VP, vectorised bisection (:func:`~sdesolve_gen.integrate.t_of_lambda`) otherwise."""
    if type(sde) is VPSDE:
        return vp_t_of_lambda(sde, lam)
    return t_of_lambda(sde, lam, lo=lo, hi=hi)


def _lambdas(run: _Run) -> List[float]:
    return [math.log(a / s) for a, s in zip(run.alpha, run.sigma)]


def dpm_solver(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, order: int = 2,
) -> SampleResult:
    r"""Singlestep DPM-Solver-1/2/3 (Lu et al. 2022), an exponential integrator in
    :math:`\lambda = \log(\alpha/\sigma)` with the noise prediction :math:`\hat\epsilon = -\sigma s`.

    Step from :math:`t` to :math:`s` (:math:`h = \lambda_s - \lambda_t > 0`):

    * order 1 (= DDIM): :math:`x_s = \tfrac{\alpha_s}{\alpha_t}x_t - \sigma_s(e^h - 1)\hat\epsilon_t`;
    * order 2 (:math:`r_1 = \tfrac12`): an intermediate point :math:`u` at :math:`\lambda_t + r_1 h` by
      the order-1 rule, then
      :math:`x_s = \tfrac{\alpha_s}{\alpha_t}x_t - \sigma_s(e^h-1)\hat\epsilon_t - \tfrac{\sigma_s}{2r_1}(e^h-1)(\hat\epsilon_u - \hat\epsilon_t)`;
    * order 3 (:math:`r_1 = \tfrac13, r_2 = \tfrac23`): the paper's Algorithm 2 (DPM-Solver-3).

    ``order`` evaluations per step; use a log-SNR-uniform grid (``timesteps(..., kind="logsnr")``).
    Intermediate times come from inverting :math:`\lambda(t)`: closed form for VP
    (:func:`vp_t_of_lambda`), vectorised bisection otherwise (once per call).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    run = _Run(f"dpm_solver{order}", sde, score_fn, x_T, ts, generator)
    lam = _lambdas(run)
    n = len(run.t) - 1
    r1, r2 = (0.5, None) if order == 2 else (1 / 3, 2 / 3)
    mids: dict = {}
    if order > 1:
        want = [lam[i] + r * (lam[i + 1] - lam[i]) for i in range(n) for r in ((r1,) if order == 2 else (r1, r2))]
        tm = _t_of_lambda(sde, torch.tensor(want, dtype=torch.float64), run.t[-1], run.t[0])
        am = torch.exp(sde.log_alpha(tm)).tolist()
        sm = torch.sqrt(sde.sigma2(tm)).tolist()
        k = 1 if order == 2 else 2
        for i in range(n):
            mids[i] = [(tm[i * k + j], am[i * k + j], sm[i * k + j]) for j in range(k)]
    x = run.x_T

    def eps_hat(xx: Tensor, t: Any, sigma: float) -> Tensor:
        return -sigma * run.score(xx, t)

    for i in run.steps(progress):
        a_t, s_t, a_s, s_s = run.alpha[i], run.sigma[i], run.alpha[i + 1], run.sigma[i + 1]
        h = lam[i + 1] - lam[i]
        e_t = eps_hat(x, i, s_t)
        if order == 1:
            x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t
            continue
        t1, a1, s1 = mids[i][0]
        u1 = (a1 / a_t) * x - s1 * math.expm1(r1 * h) * e_t
        d1 = eps_hat(u1, t1, s1) - e_t
        if order == 2:
            x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t - (s_s / (2 * r1)) * math.expm1(h) * d1
            continue
        t2, a2, s2 = mids[i][1]
        u2 = (a2 / a_t) * x - s2 * math.expm1(r2 * h) * e_t - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
        d2 = eps_hat(u2, t2, s2) - e_t
        x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t - (s_s / r2) * (math.expm1(h) / h - 1) * d2
    return run.finish(x, denoise, order=order)


def dpm_solver_pp_2m(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False,
) -> SampleResult:
    r"""Multistep DPM-Solver++(2M) (Lu et al. 2022b): data prediction :math:`\hat x_0` (Tweedie),
    one evaluation per step.

    .. math::

        x_s = \frac{\sigma_s}{\sigma_t}x_t - \alpha_s(e^{-h} - 1)\,D_i,\qquad
        D_i = \Big(1 + \frac{1}{2r_i}\Big)\hat x_0^{(i)} - \frac{1}{2r_i}\hat x_0^{(i-1)},\quad r_i = h_{i-1}/h_i,

    with :math:`D_0 = \hat x_0^{(0)}` (first step first order).
    """
    run = _Run("dpm_solver_pp_2m", sde, score_fn, x_T, ts, generator)
    lam = _lambdas(run)
    x, prev_x0, prev_h = run.x_T, None, None
    for i in run.steps(progress):
        x0 = tweedie_x0(x, run.score(x, i), run.alpha[i], run.sigma[i])
        h = lam[i + 1] - lam[i]
        if prev_x0 is None:
            D = x0
        else:
            r = prev_h / h
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (run.sigma[i + 1] / run.sigma[i]) * x - run.alpha[i + 1] * math.expm1(-h) * D
        prev_x0, prev_h = x0, h
    return run.finish(x, denoise)


# ---------------------------------------------------------------------------------- adaptive SDE


def adaptive_sde(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, rtol: float = 1e-2, atol: float = 1e-2, h_init: float = 1e-2,
    theta: float = 0.9, r: float = 0.9, max_steps: int = 100_000,
) -> SampleResult:
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
    run = _Run("adaptive_sde", sde, score_fn, x_T, ts, generator)
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
        tt = torch.tensor(tau, dtype=torch.float64)
        return tt, float(sde.drift_coef(tt)), float(sde.diffusion2(tt))

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
            if bar is not None:
                bar.update(h)
        else:
            rejected += 1
        h = theta * h * max(E, 1e-10) ** (-r)
    if bar is not None:
        bar.close()
    x_out, info = run.finish(x, denoise, rtol=rtol, atol=atol)
    info.n_steps, info.n_rejected = accepted, rejected
    return x_out, info


r"""Deterministic samplers of the probability-flow ODE: torchdiffeq, Heun (EDM), DPM-Solver, DPM-Solver++(2M).

All share the signature of :mod:`sdesolve_gen.samplers._run`; ``generator`` is accepted and
unused (the samplers are deterministic given ``x_T``).
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

import torch

from .._checks import check_int
from ..integrate import ADAPTIVE_ODE_METHODS, odeint
from ..reverse import ProbabilityFlowODE, ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run, tweedie_x0

Tensor = torch.Tensor

__all__ = ["ode", "heun", "dpm_solver", "dpm_solver_pp_2m"]


def ode(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    method: str = "dopri5", rtol: Optional[float] = None, atol: Optional[float] = None,
) -> Solution:
    r"""Probability-flow ODE :math:`dx/dt = f - \tfrac12 g^2 s` from ``ts[0]`` to ``ts[-1]`` with a
    torchdiffeq solver (adaptive ``dopri5`` by default, ``rtol = atol = 1e-5`` unless given). Only
    the end points of ``ts`` are used by adaptive methods; fixed-step methods step on ``ts`` and
    refuse ``rtol`` / ``atol``.
    ``generator`` is unused (the sampler is deterministic given ``x_T``). ``callback`` is
    torchdiffeq's step callback: it sees the state at the *start* of each (accepted) step."""
    run = Run("ode", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    func = ProbabilityFlowODE(sde, score_fn, model_kwargs=model_kwargs, differentiable=differentiable, check_finite=check_finite)
    if callback is not None:
        steps = {"k": 0}

        def on_step(t0: Tensor, y0: Tensor, dt: Tensor) -> None:
            callback({"i": steps["k"], "t": t0, "x": y0, "denoised": None})
            steps["k"] += 1

        setattr(func, "callback_accept_step" if method in ADAPTIVE_ODE_METHODS else "callback_step", on_step)
    grid = torch.stack([run.tt[0], run.tt[-1]]) if method in ADAPTIVE_ODE_METHODS else torch.stack(run.tt)
    sol = odeint(func, run.x_T, grid, method=method, rtol=rtol, atol=atol, save="final", progress=progress)
    run.caller.nfe = func.nfe
    out = run.finish(sol.x, rtol=sol.extra["rtol"], atol=sol.extra["atol"], solver=method)
    out.method = f"ode[{method}]"
    out.n_steps, out.n_rejected = sol.n_steps, sol.n_rejected
    return out


def heun(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    last_euler: bool = True,
) -> Solution:
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
    run = Run("heun", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    sbar = [s / a for s, a in zip(run.sigma, run.alpha)]
    xbar = run.x_T / run.alpha[0]
    n = len(run.t) - 1
    for i in run.steps(progress):
        d = -run.sigma[i] * run.score(xbar * run.alpha[i], i)
        ds = sbar[i + 1] - sbar[i]
        x_euler = xbar + ds * d
        denoised = xbar - sbar[i] * d if run.callback is not None else None  # Tweedie: d = (xbar - x0_hat) / sbar
        if last_euler and i == n - 1:
            xbar = x_euler
        else:
            d2 = -run.sigma[i + 1] * run.score(x_euler * run.alpha[i + 1], i + 1)
            xbar = xbar + ds * 0.5 * (d + d2)
        run.done(i, xbar * run.alpha[i + 1], denoised)
    return run.finish(xbar * run.alpha[-1])


def _lambdas(run: Run) -> List[float]:
    return [math.log(a / s) for a, s in zip(run.alpha, run.sigma)]


def dpm_solver(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    order: int = 2,
) -> Solution:
    r"""Singlestep DPM-Solver-1/2/3 (Lu et al. 2022), an exponential integrator in
    :math:`\lambda = \log(\alpha/\sigma)` with the noise prediction :math:`\hat\epsilon = -\sigma s`.

    Step from :math:`t` to :math:`s` (:math:`h = \lambda_s - \lambda_t > 0`):

    * order 1 (= DDIM): :math:`x_s = \tfrac{\alpha_s}{\alpha_t}x_t - \sigma_s(e^h - 1)\hat\epsilon_t`;
    * order 2 (:math:`r_1 = \tfrac12`): an intermediate point :math:`u` at :math:`\lambda_t + r_1 h` by
      the order-1 rule, then
      :math:`x_s = \tfrac{\alpha_s}{\alpha_t}x_t - \sigma_s(e^h-1)\hat\epsilon_t - \tfrac{\sigma_s}{2r_1}(e^h-1)(\hat\epsilon_u - \hat\epsilon_t)`;
    * order 3 (:math:`r_1 = \tfrac13, r_2 = \tfrac23`): the paper's Algorithm 2 (DPM-Solver-3).

    ``order`` evaluations per step; use a log-SNR-uniform grid (``timesteps(..., kind="logsnr")``).
    Intermediate times come from :meth:`~sdesolve_gen.sde.LinearSDE.t_of_lambda` (closed forms
    for the built-in schedules, bisection for custom ones; once per call).
    """
    order = check_int("order", order, 1, 3)
    run = Run(f"dpm_solver{order}", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lam = _lambdas(run)
    n = len(run.t) - 1
    r1, r2 = (0.5, 1.0) if order == 2 else (1 / 3, 2 / 3)  # (r2 is used by order 3 only)
    mids: dict = {}
    if order > 1:
        want = [lam[i] + r * (lam[i + 1] - lam[i]) for i in range(n) for r in ((r1,) if order == 2 else (r1, r2))]
        tm = sde.t_of_lambda(torch.tensor(want, dtype=torch.float64, device="cpu"))
        am = torch.exp(sde.log_alpha(tm)).tolist()
        sm = torch.sqrt(sde.sigma2(tm)).tolist()
        tm = tm.to(run.x_T.device)  # device rule: the score sees times on x's device
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
        denoised = (x - s_t * e_t) / a_t if run.callback is not None else None
        if order == 1:
            x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t
        else:
            t1, a1, s1 = mids[i][0]
            u1 = (a1 / a_t) * x - s1 * math.expm1(r1 * h) * e_t
            d1 = eps_hat(u1, t1, s1) - e_t
            if order == 2:
                x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t - (s_s / (2 * r1)) * math.expm1(h) * d1
            else:
                t2, a2, s2 = mids[i][1]
                u2 = (a2 / a_t) * x - s2 * math.expm1(r2 * h) * e_t - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
                d2 = eps_hat(u2, t2, s2) - e_t
                x = (a_s / a_t) * x - s_s * math.expm1(h) * e_t - (s_s / r2) * (math.expm1(h) / h - 1) * d2
        run.done(i, x, denoised)
    return run.finish(x, order=order)


def dpm_solver_pp_2m(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
) -> Solution:
    r"""Multistep DPM-Solver++(2M) (Lu et al. 2022b): data prediction :math:`\hat x_0` (Tweedie),
    one evaluation per step.

    .. math::

        x_s = \frac{\sigma_s}{\sigma_t}x_t - \alpha_s(e^{-h} - 1)\,D_i,\qquad
        D_i = \Big(1 + \frac{1}{2r_i}\Big)\hat x_0^{(i)} - \frac{1}{2r_i}\hat x_0^{(i-1)},\quad r_i = h_{i-1}/h_i,

    with :math:`D_0 = \hat x_0^{(0)}` (first step first order).
    """
    run = Run("dpm_solver_pp_2m", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lam = _lambdas(run)
    x, prev_x0, prev_h = run.x_T, None, 0.0
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
        run.done(i, x, x0)
    return run.finish(x)

r"""Few-step stochastic samplers: DPM-Solver++(2M) SDE, EDM's stochastic sampler, SA-Solver.

Notation as in :mod:`sdesolve_gen.samplers.multistep` (:math:`\lambda = \log\alpha - \log\sigma`,
:math:`h = \lambda_{i+1} - \lambda_i`, :math:`m_i = \hat x_0(x_i, t_i)` the Tweedie data prediction).
All three solve members of the family of reverse SDEs with the PF-ODE's marginals,

.. math:: dx = \big[f x - \tfrac{1+\tau^2}{2} g^2 s(x, t)\big]dt + \tau g\,d\bar w ,

(:math:`\tau = 0`: the PF-ODE, :math:`\tau = 1`: the reverse SDE), whose exact solution over a step is

.. math::

    x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\tau^2 h}x_i
        + \alpha_{i+1}\int_{\lambda_i}^{\lambda_{i+1}}(1+\tau^2)e^{-(1+\tau^2)(\lambda_{i+1}-\lambda)}\hat x_0(\lambda)\,d\lambda
        + \sigma_{i+1}\sqrt{1 - e^{-2\tau^2 h}}\;z,\qquad z\sim\mathcal N(0, I),

up to the approximation of :math:`\hat x_0(\lambda)` on the step. Draws come from ``generator``
(one ``randn`` of ``x``'s shape per step); shapes ``(B, *shape)`` throughout.
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

import torch

from ..reverse import ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run, tweedie_x0
from .multistep import _check_order, _this_order, lagrange_exp_weights
from .ode import _lambdas

Tensor = torch.Tensor

__all__ = ["dpm_solver_pp_2m_sde", "edm_sde", "sa_solver"]


def dpm_solver_pp_2m_sde(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    eta: float = 1.0, solver_type: str = "midpoint",
) -> Solution:
    r"""DPM-Solver++(2M) SDE (Lu et al. 2022b; the k-diffusion sampler ``dpmpp_2m_sde``), one evaluation per step.

    With :math:`\tau^2 = \eta` and :math:`c = (1 + \eta)h`, :math:`r = h_{i-1}/h_i`:

    .. math::

        x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\eta h}x_i + \alpha_{i+1}(1 - e^{-c})\,m_i
            + \alpha_{i+1}\,k(c)\,\frac{m_i - m_{i-1}}{r} + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\,z,

    :math:`k(c) = \tfrac12(1 - e^{-c})` (``"midpoint"``) or :math:`1 - (1 - e^{-c})/c` (``"heun"``);
    the first step has no correction term. ``eta=0`` is the deterministic DPM-Solver++(2M)
    (``"midpoint"``).

    Args:
        eta: noise scale :math:`\eta \ge 0` (1: the reverse SDE).
        solver_type: ``"midpoint"`` or ``"heun"``.
    """
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    run = Run("dpm_solver_pp_2m_sde", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lam = _lambdas(run)
    x, prev = run.x_T, None
    for i in run.steps(progress):
        m = tweedie_x0(x, run.score(x, i), run.alpha[i], run.sigma[i])
        h = lam[i + 1] - lam[i]
        c = (1 + eta) * h
        one_m = -math.expm1(-c)
        a_s, s_s = run.alpha[i + 1], run.sigma[i + 1]
        x_new = (s_s / run.sigma[i]) * math.exp(-eta * h) * x + a_s * one_m * m
        if prev is not None:
            r = (lam[i] - lam[i - 1]) / h
            k = 0.5 * one_m if solver_type == "midpoint" else 1.0 - one_m / c
            x_new = x_new + (a_s * k / r) * (m - prev)
        if eta > 0:
            x_new = x_new + s_s * math.sqrt(-math.expm1(-2 * eta * h)) * run.noise(x)
        x, prev = x_new, m
        run.done(i, x, m)
    return run.finish(x, eta=eta, solver_type=solver_type)


def edm_sde(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    S_churn: float = 40.0, S_tmin: float = 0.05, S_tmax: float = 50.0, S_noise: float = 1.0, last_euler: bool = True,
) -> Solution:
    r"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2) in :math:`\bar x = x/\alpha`, :math:`\bar\sigma = \sigma/\alpha`.

    Step :math:`i` first "churns": with :math:`\gamma_i = \min(S_\mathrm{churn}/n, \sqrt2 - 1)` if
    :math:`S_{t\min} \le \bar\sigma_i \le S_{t\max}` (else 0), :math:`\hat\sigma = \bar\sigma_i(1 + \gamma_i)`
    (capped at :math:`\bar\sigma(T)`, the largest noise level the SDE defines),

    .. math::

        \hat x = \bar x_i + S_\mathrm{noise}\sqrt{\hat\sigma^2 - \bar\sigma_i^2}\,z,\qquad
        d = \frac{\hat x - D(\hat x, \hat\sigma)}{\hat\sigma},\qquad
        \bar x_{i+1} = \hat x + (\bar\sigma_{i+1} - \hat\sigma)\tfrac12(d + d'),

    :math:`D(\bar x, \bar\sigma) = \hat x_0(\alpha\bar x, t(\bar\sigma))`, :math:`d'` the slope at the Euler
    point; the last step is Euler with ``last_euler`` (2 evaluations per step, one fewer in all).
    ``S_churn=0`` is :func:`~sdesolve_gen.samplers.ode.heun`. The defaults are EDM's ImageNet-64
    settings with :math:`S_\mathrm{noise} = 1` (an exact score needs no noise inflation). The churned
    times :math:`t(\hat\sigma)` are known from the grid and inverted once, before the loop.

    Args:
        S_churn, S_tmin, S_tmax, S_noise: EDM's churn amount, its :math:`\bar\sigma` window and the noise scale.
        last_euler: final step Euler (as EDM).
    """
    for nm, v in (("S_churn", S_churn), ("S_noise", S_noise)):
        if not v >= 0.0:
            raise ValueError(f"{nm} must be >= 0, got {v!r}")
    run = Run("edm_sde", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    n = len(run.t) - 1
    sbar = [s / a for s, a in zip(run.sigma, run.alpha)]
    s_top = sbar[0]
    gam = [min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sbar[i] <= S_tmax else 0.0 for i in range(n)]
    shat = [min(sbar[i] * (1 + gam[i]), max(s_top, sbar[i])) for i in range(n)]
    churned = [i for i in range(n) if shat[i] > sbar[i]]
    th = {}
    if churned:
        tt = sde.t_of_lambda(torch.tensor([-math.log(shat[i]) for i in churned], dtype=torch.float64, device="cpu"))
        at = torch.exp(sde.log_alpha(tt)).tolist()
        st = torch.sqrt(sde.sigma2(tt)).tolist()
        tt = tt.to(run.x_T.device)
        th = {i: (tt[k], at[k], st[k]) for k, i in enumerate(churned)}

    def D(xb: Tensor, t: Any, a: float, s: float) -> Tensor:
        return tweedie_x0(a * xb, run.score(a * xb, t), a, s)

    xb = run.x_T / run.alpha[0]
    for i in run.steps(progress):
        if i in th:
            t_h, a_h, s_h = th[i]
            xh = xb + (S_noise * math.sqrt(shat[i] ** 2 - sbar[i] ** 2)) * run.noise(xb)
        else:
            t_h, a_h, s_h = run.tt[i], run.alpha[i], run.sigma[i]
            xh = xb
        x0 = D(xh, t_h, a_h, s_h)
        d = (xh - x0) / shat[i]
        ds = sbar[i + 1] - shat[i]
        xe = xh + ds * d
        if last_euler and i == n - 1:
            xb = xe
        else:
            d2 = (xe - D(xe, i + 1, run.alpha[i + 1], run.sigma[i + 1])) / sbar[i + 1]
            xb = xh + ds * 0.5 * (d + d2)
        run.done(i, xb * run.alpha[i + 1], x0)
    return run.finish(xb * run.alpha[-1], S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)


def sa_solver(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    order: int = 2, tau: float = 1.0, lower_order_final: bool = True,
) -> Solution:
    r"""SA-Solver's stochastic Adams predictor (Xue et al. 2023), one evaluation per step.

    :math:`\hat x_0(\lambda)` on step :math:`i` is the Lagrange polynomial through the last
    :math:`p` data predictions (nodes :math:`\lambda_{i-j}`), integrated exactly against the
    kernel of the module docstring:

    .. math::

        x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i}e^{-\tau^2 h}x_i + \alpha_{i+1}\sum_{j<p} w_j\,m_{i-j}
            + \sigma_{i+1}\sqrt{1 - e^{-2\tau^2 h}}\,z,\quad
        w_j = \int_{\lambda_i}^{\lambda_{i+1}}(1+\tau^2)e^{-(1+\tau^2)(\lambda_{i+1}-\lambda)}\ell_j(\lambda)\,d\lambda .

    ``tau=0`` is the deterministic Adams exponential integrator, ``order=1, tau=1`` the
    exponential Euler-Maruyama step (SEEDS-1 / DPM-Solver++(1) SDE). No corrector (SA-Corrector) is applied.

    Args:
        order: predictor order 1..3 (warm-up on the first steps; ``lower_order_final`` on the last).
        tau: noise level :math:`\tau \ge 0`, constant over the solve.
    """
    _check_order(order, 3)
    if not tau >= 0.0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    run = Run("sa_solver", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lam = _lambdas(run)
    n = len(run.t) - 1
    c = 1.0 + tau * tau
    x = run.x_T
    ms: List[Tensor] = []
    for i in run.steps(progress):
        m = tweedie_x0(x, run.score(x, i), run.alpha[i], run.sigma[i])
        ms = (ms + [m])[-order:]
        p = _this_order(order, i, n, lower_order_final)
        h = lam[i + 1] - lam[i]
        w = lagrange_exp_weights([lam[i - j] for j in range(p)], lam[i], lam[i + 1], -c, lam[i + 1])
        acc = (c * w[0]) * ms[-1]
        for j in range(1, p):
            acc = acc + (c * w[j]) * ms[-1 - j]
        x_new = (run.sigma[i + 1] / run.sigma[i]) * math.exp(-tau * tau * h) * x + run.alpha[i + 1] * acc
        if tau > 0:
            x_new = x_new + run.sigma[i + 1] * math.sqrt(-math.expm1(-2 * tau * tau * h)) * run.noise(x)
        x = x_new
        run.done(i, x, m)
    return run.finish(x, order=order, tau=tau)

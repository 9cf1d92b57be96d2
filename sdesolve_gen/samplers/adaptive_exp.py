r"""Adaptive exponential integrator in log-SNR: embedded DPM-Solver++ pairs (12 and 23) with per-sample error control.

Lu et al. (2022, Alg. 4) step the PF-ODE in :math:`\lambda = \log\alpha - \log\sigma` with a
singlestep DPM-Solver of order :math:`k` and an embedded one of order :math:`k - 1` that reuses
its evaluations. Here both are the data-prediction (DPM-Solver++) forms. From :math:`(x, \lambda_t)`
with step :math:`h`, :math:`m_0 = \hat x_0(x, t)`, :math:`\varphi_1 = e^{-h} - 1`,
:math:`\varphi_2 = \varphi_1/h + 1`, :math:`\mathrm{base} = \tfrac{\sigma_s}{\sigma_t}x`:

* pair ``12`` (2 evaluations): midpoint :math:`u` at :math:`\lambda_t + h/2`, :math:`m_1 = \hat x_0(u)`;
  low :math:`x^{(1)} = \mathrm{base} - \alpha_s\varphi_1 m_0`, high :math:`x^{(2)} = \mathrm{base} - \alpha_s\varphi_1 m_1`;
* pair ``23`` (3 evaluations): points at :math:`r_1 = 1/3, r_2 = 2/3` of the step,
  :math:`u_1 = \tfrac{\sigma_1}{\sigma_t}x - \alpha_1(e^{-r_1h}-1)m_0`,
  :math:`u_2 = \tfrac{\sigma_2}{\sigma_t}x - \alpha_2(e^{-r_2h}-1)m_0 + \tfrac{r_2}{r_1}\alpha_2\big(\tfrac{e^{-r_2h}-1}{r_2h}+1\big)(m_1 - m_0)`;
  low :math:`x^{(2)} = \mathrm{base} - \alpha_s\varphi_1 m_0 + \tfrac{\alpha_s\varphi_2}{r_1}(m_1 - m_0)`,
  high :math:`x^{(3)} = \mathrm{base} - \alpha_s\varphi_1 m_0 + \tfrac{\alpha_s\varphi_2}{r_2}(m_2 - m_0)`.

Error control is **per sample**: with :math:`\delta = x^{high} - x^{low}` and the elementwise scale
:math:`c = \alpha_s\,\mathrm{atol} + \mathrm{rtol}\max(|x^{high}|, |x|)` (``atol`` in data units,
see ``_error_ratio``), each sample's error is its RMS
:math:`e_b = (\mathrm{mean}_d (\delta/c)^2)^{1/2}` and the step's error is :math:`E = \max_b e_b`, so
no sample's error is averaged away by the batch. The step is accepted if :math:`E \le 1`
(the high-order solution is kept, local extrapolation) and the next step is
:math:`h \leftarrow h\,\min(f_{\max}, \max(0.2, \theta E^{-1/k}))`. The accept decision is the one host
synchronisation per attempted step (inherent in step-size control).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import torch

from .._checks import check_positive
from ..reverse import ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run, tweedie_x0

Tensor = torch.Tensor

__all__ = ["dpm_solver_adaptive", "dpm_solver_adaptive_multistep"]


def dpm_solver_adaptive(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    order: int = 3, rtol: float = 0.05, atol: float = 0.05, h_init: Optional[float] = None, theta: float = 0.8,
    max_steps: int = 1000, max_factor: float = 2.0, controller: str = "i", final_stretch: float = 1.0,
) -> Solution:
    r"""Adaptive DPM-Solver++-12 (``order=2``) or -23 (``order=3``) from ``ts[0]`` to ``ts[-1]``.

    Only the end points of ``ts`` are used. See the module docstring for the formulas and the
    per-sample error norm.

    Args:
        order: 2 (pair 1/2, 2 evaluations per attempted step) or 3 (pair 2/3, 3 evaluations).
        rtol, atol: tolerances of the per-sample RMS error norm (``atol`` in data units, times
            :math:`\alpha_s`); the defaults reach a mean trajectory error below 1e-2 on the
            benchmark mixtures (see ``docs/benchmarks.rst``).
        h_init: first step in :math:`\lambda` (default: a tenth of the log-SNR range).
        theta: safety factor of the step-size update.
        max_factor: largest growth of the step from one step to the next.
        max_steps: cap on attempted steps (raises ``RuntimeError`` when exceeded).
        controller: ``"i"`` (default, the plain :math:`h \leftarrow h\,\theta E_n^{-1/k}`) or ``"pi"``
            (Gustafsson's PI controller :math:`h \leftarrow h\,\theta E_n^{-0.7/k}E_{n-1}^{0.4/k}`, no
            growth right after a rejection; measured on the benchmark mixtures: fewer rejections,
            about the same error per NFE).
        final_stretch: ``1.0`` (default) clips the last step at ``eps``; above 1, when the remaining
            log-SNR interval is at most ``final_stretch`` times the proposed step the step is
            stretched to end at ``eps``, and when it is under twice the step it is split into two
            equal steps (no tiny last step).

    Returns:
        :class:`~sdesolve_gen.Solution` (``x`` of shape ``(B, *shape)``, ``n_steps`` accepted and
        ``n_rejected`` rejected steps, ``extra["lambdas"]`` the accepted log-SNR grid).
    """
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order!r}")
    if controller not in ("pi", "i"):
        raise ValueError(f"controller must be 'pi' or 'i', got {controller!r}")
    if not (isinstance(final_stretch, (int, float)) and 1.0 <= final_stretch <= 2.0):
        raise ValueError(f"final_stretch must be a number in [1, 2], got {final_stretch!r}")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    run = Run(f"dpm_solver_adaptive{order}", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lo, hi = run.t[-1], run.t[0]
    lam_start = math.log(run.alpha[0] / run.sigma[0])
    lam_end = math.log(run.alpha[-1] / run.sigma[-1])
    dev = run.x_T.device

    def sched(lams: Any) -> Tuple[Tensor, list, list]:
        tt = sde.t_of_lambda(torch.tensor(lams, dtype=torch.float64, device="cpu")).clamp(lo, hi)
        return tt.to(dev), torch.exp(sde.log_alpha(tt)).tolist(), torch.sqrt(sde.sigma2(tt)).tolist()

    def x0(x: Tensor, t: Any, a: float, s: float) -> Tensor:
        return tweedie_x0(x, run.score(x, t), a, s)

    h = (lam_end - lam_start) / 10 if h_init is None else check_positive("h_init", h_init)
    x, lam_t = run.x_T, lam_start
    t_cur, a_t, s_t = run.tt[0], run.alpha[0], run.sigma[0]
    lams, n_acc, n_rej = [lam_start], 0, 0
    e_prev, just_rejected = 1.0, False
    m0 = x0(x, t_cur, a_t, s_t)
    while lam_end - lam_t > 1e-12 * max(1.0, abs(lam_end)):
        if n_acc + n_rej >= max_steps:
            raise RuntimeError(f"dpm_solver_adaptive: {max_steps} steps without reaching the end; loosen rtol/atol")
        h, last = _fit_step(lam_end - lam_t, h, final_stretch)
        lam_s = lam_end if last else lam_t + h
        phi1 = math.expm1(-h)
        if order == 2:
            tt, (am, a_s), (sm, s_s) = sched([lam_t + 0.5 * h, lam_s])
            tm = tt[0]
            u = (sm / s_t) * x - am * math.expm1(-0.5 * h) * m0
            m1 = x0(u, tm, am, sm)
            base = (s_s / s_t) * x
            x_low = base - a_s * phi1 * m0
            x_high = base - a_s * phi1 * m1
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            tt, aa, ss_ = sched([lam_t + r1 * h, lam_t + r2 * h, lam_s])
            t1, t2, _ = tt.unbind()
            (a1, a2, a_s), (s1, s2, s_s) = aa, ss_
            u1 = (s1 / s_t) * x - a1 * math.expm1(-r1 * h) * m0
            m1 = x0(u1, t1, a1, s1)
            u2 = (s2 / s_t) * x - a2 * math.expm1(-r2 * h) * m0 + (r2 / r1) * a2 * (math.expm1(-r2 * h) / (r2 * h) + 1) * (m1 - m0)
            m2 = x0(u2, t2, a2, s2)
            phi2 = phi1 / h + 1
            base = (s_s / s_t) * x - a_s * phi1 * m0
            x_low = base + (a_s * phi2 / r1) * (m1 - m0)
            x_high = base + (a_s * phi2 / r2) * (m2 - m0)
        E = _error_ratio(x_high, x_low, x, a_s, rtol, atol)
        if E <= 1.0:
            x, lam_t = x_high, lam_s
            n_acc += 1
            lams.append(lam_t)
            if last:
                t_cur, a_t, s_t = run.tt[-1], run.alpha[-1], run.sigma[-1]
            else:
                tt, (a_t,), (s_t,) = sched([lam_t])
                t_cur = tt[0]
            if run.callback is not None:
                run.callback({"i": n_acc - 1, "t": t_cur, "x": x, "denoised": m0})
            if not last:
                m0 = x0(x, t_cur, a_t, s_t)
        if controller == "pi" and E <= 1.0:
            fac = theta * E ** (-0.7 / order) * e_prev ** (0.4 / order)
        else:
            fac = theta * E ** (-1.0 / order)
        fac = min(1.0 if just_rejected and controller == "pi" else max_factor, max(0.2, fac))
        if E <= 1.0:
            e_prev, just_rejected = E, False
        else:
            n_rej += 1
            just_rejected = True
        h = h * fac
    out = run.finish(x, order=order, rtol=rtol, atol=atol, lambdas=lams)
    out.n_steps, out.n_rejected = n_acc, n_rej
    return out


def _fit_step(rest: float, h: float, final_stretch: float) -> Tuple[float, bool]:
    r"""The step actually taken when :math:`\mathrm{rest}` of the log-SNR interval remains and the
    controller proposes :math:`h`: ``(h, last)``. With ``final_stretch = 1`` the step is clipped
    at the end; above 1, a remainder of at most ``final_stretch * h`` is taken in one (stretched)
    step and one under ``2 h`` is split into two equal steps (no tiny last step)."""
    if rest <= final_stretch * h:
        h = rest
    elif final_stretch > 1.0 and rest < 2.0 * h:
        h = 0.5 * rest
    return h, rest - h <= 1e-12


def _error_ratio(x_high: Tensor, x_low: Tensor, x: Tensor, alpha_s: float, rtol: float, atol: float) -> float:
    r"""The step's error ratio :math:`E = \max_b e_b` (accept when :math:`E \le 1`).

    :math:`e_b = (\mathrm{mean}_d(\delta/c)^2)^{1/2}` with :math:`\delta = x^{high} - x^{low}` and
    :math:`c = \alpha_s\,\mathrm{atol} + \mathrm{rtol}\max(|x^{high}|, |x|)` element-wise: ``atol`` is
    in data units (an error :math:`\alpha_s\,\mathrm{atol}` in :math:`x_s = \alpha_s x_0 + \sigma_s z` is an
    error ``atol`` in :math:`x_s/\alpha_s`, the data-scale units of the benchmark error). ``x_high``,
    ``x_low``, ``x`` of shape ``(B, *shape)``; a non-finite ratio becomes ``1e10`` (reject, shrink)
    and the ratio is floored at ``1e-10``. The ``float`` is the controller's one host synchronisation."""
    scale = alpha_s * atol + rtol * torch.maximum(x_high.abs(), x.abs())
    per = ((x_high - x_low) / scale).reshape(x.shape[0], -1).pow(2).mean(1).sqrt()
    E = float(per.max())
    return max(E, 1e-10) if math.isfinite(E) else 1e10


def _quad_weights(h: float) -> Tuple[float, float, float]:
    r""":math:`I_k = \int_0^h e^{\tau - h}\tau^k\,d\tau` for :math:`k = 0, 1, 2`, written with
    :math:`\varphi_1 = e^{-h} - 1` (``expm1``, no cancellation): :math:`I_0 = -\varphi_1`,
    :math:`I_1 = h + \varphi_1`, :math:`I_2 = h^2 - 2h - 2\varphi_1`."""
    phi1 = math.expm1(-h)
    return -phi1, h + phi1, h * h - 2.0 * h - 2.0 * phi1


def dpm_solver_adaptive_multistep(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    rtol: float = 0.03, atol: float = 0.03, h_init: Optional[float] = None, theta: float = 0.8,
    max_steps: int = 1000, max_factor: float = 2.0, final_stretch: float = 1.5,
) -> Solution:
    r"""Adaptive exponential multistep predictor-corrector in log-SNR: **one** evaluation per attempted step.

    With the step :math:`h`, :math:`\mathrm{base} = \tfrac{\sigma_s}{\sigma_t}x`, :math:`m_0 = \hat x_0`
    at the current point, :math:`m_{-1}` at the previous accepted point (:math:`r = h_{\mathrm{prev}}/h`)
    and :math:`I_k = \int_0^h e^{\tau-h}\tau^k\,d\tau`, the PF-ODE solution
    :math:`x_s = \mathrm{base} + \alpha_s\int_0^h e^{\tau-h}\hat x_0(\lambda_t+\tau)\,d\tau` is approximated by

    * predictor (DPM-Solver++(2M) with variable steps, linear extrapolation of :math:`\hat x_0`):
      :math:`x^P = \mathrm{base} + \alpha_s\big(I_0 m_0 + I_1 (m_0 - m_{-1})/(rh)\big)`;
    * one evaluation :math:`m_1 = \hat x_0(x^P, \lambda_t + h)`;
    * corrector (quadratic interpolation of :math:`\hat x_0` through :math:`m_{-1}, m_0, m_1`,
      integrated exactly): with :math:`A = (m_1 - m_0)/h`, :math:`D = (m_0 - m_{-1})/(rh)`,
      :math:`c = (A - D)/((1 + r)h)`, :math:`b = A - ch`:
      :math:`x^C = \mathrm{base} + \alpha_s(I_0 m_0 + I_1 b + I_2 c)`.

    The local errors are :math:`O(h^3)` (predictor) and :math:`O(h^4)` (corrector), so
    :math:`\delta = x^C - x^P` estimates the predictor's local error; the per-sample norm is that of
    :func:`dpm_solver_adaptive` (:math:`E = \max_b e_b`, ``alpha_s * atol + rtol * max(|x^C|, |x|)``), the
    step is accepted when :math:`E \le 1` (keeping :math:`x^C`; the next step reuses :math:`m_1`,
    evaluated at :math:`x^P` as in UniPC, so an accepted step costs no extra evaluation) and
    :math:`h` follows the PI controller of :func:`dpm_solver_adaptive` with :math:`k = 3`. A rejected
    step costs its one evaluation. The first step has no :math:`m_{-1}`: predictor DPM-Solver++(1),
    corrector the linear interpolant (:math:`c = 0`, :math:`b = A`), :math:`k = 2`.

    Args:
        rtol, atol: tolerances of the per-sample RMS norm (``atol`` in data units, times
            :math:`\alpha_s`); the defaults reached a mean trajectory error of at most 8e-3 in
            at most 28 NFE on the six benchmark mixtures (see ``docs/benchmarks.rst``).
        h_init: first step in :math:`\lambda` (default: a tenth of the log-SNR range).
        theta, max_factor, max_steps, final_stretch: as in :func:`dpm_solver_adaptive`.

    Returns:
        :class:`~sdesolve_gen.Solution` (``x`` of shape ``(B, *shape)``, ``n_steps``, ``n_rejected``,
        ``extra["lambdas"]`` the accepted log-SNR grid); ``nfe = 1 + n_steps + n_rejected``.
    """
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    if not (isinstance(final_stretch, (int, float)) and 1.0 <= final_stretch <= 2.0):
        raise ValueError(f"final_stretch must be a number in [1, 2], got {final_stretch!r}")
    run = Run("dpm_solver_adaptive_multistep", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    lo, hi = run.t[-1], run.t[0]
    lam_start = math.log(run.alpha[0] / run.sigma[0])
    lam_end = math.log(run.alpha[-1] / run.sigma[-1])
    dev = run.x_T.device

    def sched(lam: float) -> Tuple[Tensor, float, float]:
        tt = sde.t_of_lambda(torch.tensor([lam], dtype=torch.float64, device="cpu")).clamp(lo, hi)
        return tt.to(dev)[0], math.exp(float(sde.log_alpha(tt))), math.sqrt(float(sde.sigma2(tt)))

    h = (lam_end - lam_start) / 10 if h_init is None else check_positive("h_init", h_init)
    x, lam_t, s_t = run.x_T, lam_start, run.sigma[0]
    m0 = tweedie_x0(x, run.score(x, run.tt[0]), run.alpha[0], s_t)
    m_prev: Optional[Tensor] = None
    h_prev = 0.0
    lams, n_acc, n_rej = [lam_start], 0, 0
    e_prev, just_rejected = 1.0, False
    while lam_end - lam_t > 1e-12 * max(1.0, abs(lam_end)):
        if n_acc + n_rej >= max_steps:
            raise RuntimeError(f"dpm_solver_adaptive_multistep: {max_steps} steps without reaching the end; loosen rtol/atol")
        h, last = _fit_step(lam_end - lam_t, h, final_stretch)
        if last:
            t_s, a_s, s_s = run.tt[-1], run.alpha[-1], run.sigma[-1]
        else:
            t_s, a_s, s_s = sched(lam_t + h)
        i0, i1, i2 = _quad_weights(h)
        base = (s_s / s_t) * x
        if m_prev is None:
            k = 2
            x_p = base + (a_s * i0) * m0
        else:
            k = 3
            d = (m0 - m_prev) / (h_prev)
            x_p = base + (a_s * i0) * m0 + (a_s * i1) * d
        m1 = tweedie_x0(x_p, run.score(x_p, t_s), a_s, s_s)
        a_ = (m1 - m0) / h
        if m_prev is None:
            x_c = base + (a_s * i0) * m0 + (a_s * i1) * a_
        else:
            c = (a_ - d) / (h + h_prev)
            x_c = base + (a_s * i0) * m0 + (a_s * i1) * (a_ - c * h) + (a_s * i2) * c
        E = _error_ratio(x_c, x_p, x, a_s, rtol, atol)
        if E <= 1.0:
            fac = theta * E ** (-0.7 / k) * e_prev ** (0.4 / k)
            x, lam_t, s_t = x_c, lam_end if last else lam_t + h, s_s
            m_prev, m0, h_prev = m0, m1, h
            n_acc += 1
            lams.append(lam_t)
            if run.callback is not None:
                run.callback({"i": n_acc - 1, "t": t_s, "x": x, "denoised": m1})
            fac = min(1.0 if just_rejected else max_factor, max(0.2, fac))
            e_prev, just_rejected = E, False
        else:
            fac = min(1.0, max(0.2, theta * E ** (-1.0 / k)))
            n_rej += 1
            just_rejected = True
        h = h * fac
    out = run.finish(x, rtol=rtol, atol=atol, lambdas=lams)
    out.n_steps, out.n_rejected = n_acc, n_rej
    return out

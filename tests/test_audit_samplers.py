"""Audit value tests for the samplers: hand-written recursions at non-default settings.

Every sampler here runs on a *non-uniform* grid (random times, step ratios far from 1) of a VP
SDE with ``T != 1``, on a ``D = 3`` Gaussian with a non-zero mean and an anisotropic diagonal
covariance, with a batch of several samples, so that no factor of ``T``, no step ratio, no
mean and no coordinate scale can vanish. The score is the closed form written here,

.. math:: s(x, t) = -(x - \\alpha_t\\mu)/(\\alpha_t^2 v + \\sigma_t^2),

and each oracle is the paper's recursion written here from the formulas (schedule values
:math:`\\alpha, \\sigma` are read from the SDE; the samplers' own coefficients are never called).
Stochastic samplers draw from a seeded ``torch.Generator``; the hand recursion draws the same
``torch.randn`` stream in the documented order. Each test names the bug class it guards and has a
negative control (the same comparison rejects the plausible wrong variant).
"""

from __future__ import annotations

import math
from typing import Callable, List

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import guidance as G
from sdesolve_gen import samplers as S

F64 = torch.float64
MU = torch.tensor([0.7, -1.3, 2.1], dtype=F64)
V = torch.tensor([0.25, 1.7, 0.6], dtype=F64)
TOL = 1e-10  # float64 recursions of ~10 steps: agreement to rounding (stated == asserted)


def _sde() -> sg.VPSDE:
    return sg.VPSDE(beta_min=0.1, beta_max=12.0, T=1.7, eps=2e-3)


def _ab(sde, t: float):
    tt = torch.tensor(t, dtype=F64)
    return math.exp(float(sde.log_alpha(tt))), math.sqrt(float(sde.sigma2(tt)))


def _score(sde) -> Callable:
    def score(x, t):
        a = torch.exp(sde.log_alpha(t.to(F64)))
        s2 = sde.sigma2(t.to(F64))
        return -(x - a * MU) / (a * a * V + s2)
    return score


def _grid(sde, n: int = 8, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    inner = torch.sort(torch.rand(n - 1, generator=g, dtype=F64) * (sde.T - sde.eps) + sde.eps, descending=True).values
    ts = torch.cat([torch.tensor([sde.T], dtype=F64), inner, torch.tensor([sde.eps], dtype=F64)])
    return ts


def _x_T(B: int = 5) -> torch.Tensor:
    return torch.randn(B, 3, generator=torch.Generator().manual_seed(11), dtype=F64) * 1.3 + 0.4


def _tw(x, s, a, sg_):
    return (x + sg_ * sg_ * s) / a


def _lam(a, s):
    return math.log(a / s)


def _close(got, want, tol=TOL):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _far(a, b, gap=1e-5):
    assert float((a - b).abs().max()) > gap


# ------------------------------------------------------------------------------ Heun / EDM


@pytest.mark.parametrize("last_euler", [True, False])
def test_heun_matches_karras_algorithm_1_on_a_nonuniform_vp_grid(last_euler):
    """Bug class: a dropped 1/2, the wrong slope time, last_euler ignored or inverted, the
    alpha-scaling of EDM's variables dropped. Oracle: Karras et al. Alg. 1 in x/alpha, sigma/alpha
    written here. Control: the other last_euler setting differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]

    def hand(le):
        n = len(ts) - 1
        xb = x_T / AB[0][0]
        for i in range(n):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            d = -s0 * score(xb * a0, ts[i])
            ds = s1 / a1 - s0 / a0
            xe = xb + ds * d
            if le and i == n - 1:
                xb = xe
            else:
                xb = xb + ds * 0.5 * (d - s1 * score(xe * a1, ts[i + 1]))
        return xb * AB[-1][0]

    got = S.heun(sde, score, x_T, ts, last_euler=last_euler)
    _close(got.x, hand(last_euler))
    _far(got.x, hand(not last_euler))
    n = len(ts) - 1
    assert got.nfe == 2 * n - (1 if last_euler else 0)


def test_edm_sde_noise_scale_window_and_last_step_on_vp():
    """Bug class: S_noise not applied (or squared), the S_tmin/S_tmax window inverted or
    ignored, alpha-scaling of D dropped, last_euler=False ignored. Oracle: Karras Alg. 2 written
    here in x/alpha (VP: alpha != 1), churned times by inverting lambda = -log(sigma_hat). The
    window [0.3, 4] leaves the first and last steps unchurned. Controls: S_noise = 1 and a
    window containing every step both differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde, n=8, seed=9), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    sbar = [s / a for a, s in AB]
    n = len(ts) - 1
    churn, tmin, tmax, noise = 3.0, 0.3, 4.0, 0.7
    assert any(not tmin <= sb <= tmax for sb in sbar[:-1]) and any(tmin <= sb <= tmax for sb in sbar[:-1])

    def hand(S_noise, lo, hi, last_euler):
        g = torch.Generator().manual_seed(4)
        xb = x_T / AB[0][0]
        for i in range(n):
            gam = min(churn / n, math.sqrt(2) - 1) if lo <= sbar[i] <= hi else 0.0
            sh = min(sbar[i] * (1 + gam), max(sbar[0], sbar[i]))
            if sh > sbar[i]:
                th = sde.t_of_lambda(torch.tensor([-math.log(sh)], dtype=F64))[0]
                ah = math.exp(float(sde.log_alpha(th)))
                xh = xb + S_noise * math.sqrt(sh * sh - sbar[i] ** 2) * torch.randn(xb.shape, generator=g, dtype=F64)
            else:
                th, ah = ts[i], AB[i][0]
                xh = xb
            sgh = ah * sh
            d = (xh - _tw(ah * xh, score(ah * xh, th), ah, sgh)) / sh
            ds = sbar[i + 1] - sh
            xe = xh + ds * d
            if last_euler and i == n - 1:
                xb = xe
            else:
                a1, s1 = AB[i + 1]
                d2 = (xe - _tw(a1 * xe, score(a1 * xe, ts[i + 1]), a1, s1)) / sbar[i + 1]
                xb = xh + ds * 0.5 * (d + d2)
        return xb * AB[-1][0]

    got = S.edm_sde(sde, score, x_T, ts, generator=torch.Generator().manual_seed(4), S_churn=churn,
                    S_tmin=tmin, S_tmax=tmax, S_noise=noise, last_euler=False).x
    want = hand(noise, tmin, tmax, False)
    _close(got, want, 1e-9)
    _far(got, hand(1.0, tmin, tmax, False))
    _far(got, hand(noise, 0.0, 1e9, False))
    _far(got, hand(noise, tmin, tmax, True))


# ------------------------------------------------------------------------------ singlestep exponential


@pytest.mark.parametrize("order", [1, 2])
def test_dpm_solver_orders_1_2_match_the_paper_on_a_nonuniform_grid(order):
    """Bug class: expm1(h) vs expm1(-h), r1 = 1/2 changed, the 1/(2 r1) weight dropped, the
    midpoint time taken from the wrong lambda. Oracle: Lu et al. (2022) DPM-Solver-1/2 in eps
    prediction, midpoint time by inverting lambda (sde.t_of_lambda). Control: order 1 vs 2 differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]

    def hand(p):
        x = x_T
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            l0, l1 = _lam(a0, s0), _lam(a1, s1)
            h = l1 - l0
            e0 = -s0 * score(x, ts[i])
            if p == 1:
                x = a1 / a0 * x - s1 * (math.exp(h) - 1) * e0
            else:
                tm = sde.t_of_lambda(torch.tensor([l0 + 0.5 * h], dtype=F64))[0]
                am, sm = _ab(sde, float(tm))
                u = am / a0 * x - sm * (math.exp(0.5 * h) - 1) * e0
                eu = -sm * score(u, tm)
                x = a1 / a0 * x - s1 * (math.exp(h) - 1) * e0 - s1 * (math.exp(h) - 1) * (eu - e0)
        return x

    got = S.dpm_solver(sde, score, x_T, ts, order=order).x
    _close(got, hand(order))
    _far(got, hand(3 - order))


def test_dpm_solver_pp_2s_with_r_not_half_matches_algorithm_1():
    """Bug class: r not passed on (0.5 used), (1 - 1/(2r)) weights swapped, the intermediate
    point's alpha/sigma from the wrong time. Oracle: DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1)
    written here with r = 0.3. Control: the r = 0.5 recursion differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]

    def hand(r):
        x = x_T
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            l0, l1 = _lam(a0, s0), _lam(a1, s1)
            h = l1 - l0
            tu = sde.t_of_lambda(torch.tensor([l0 + r * h], dtype=F64))[0]
            au, su = _ab(sde, float(tu))
            m0 = _tw(x, score(x, ts[i]), a0, s0)
            u = su / s0 * x - au * (math.exp(-r * h) - 1) * m0
            mu = _tw(u, score(u, tu), au, su)
            x = s1 / s0 * x - a1 * (math.exp(-h) - 1) * ((1 - 1 / (2 * r)) * m0 + mu / (2 * r))
        return x

    got = S.dpm_solver_pp_2s(sde, score, x_T, ts, r=0.3).x
    _close(got, hand(0.3))
    _far(got, hand(0.5))


# ------------------------------------------------------------------------------ stochastic exponential


def _expint(c: float, h: float, k: int) -> float:
    """Closed form of int_0^h c e^{-c (h - u)} u^k du for k = 0, 1, 2."""
    E = -math.expm1(-c * h)
    if k == 0:
        return E
    if k == 1:
        return h - E / c
    return h * h - 2 * h / c + 2 * E / (c * c)


@pytest.mark.parametrize("order, lof", [(2, True), (3, True), (3, False)])
def test_sa_solver_tau_not_one_matches_the_exact_lagrange_integral(order, lof):
    """Bug class: tau^2 vs tau in the decay or the noise, the kernel rate (1 + tau^2) wrong, the
    Lagrange nodes shifted by one, lower_order_final ignored/inverted, the noise std's square root
    dropped. Oracle: the SA-Solver predictor (Xue et al. 2023) with the interpolant through the last
    p data predictions in u = lambda - lambda_i, integrated against (1+tau^2) e^{-(1+tau^2)(h-u)}
    in closed form (polynomial coefficients by divided differences), tau = 0.7. Controls: tau = 1
    and the other lower_order_final setting differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    lam = [_lam(a, s) for a, s in AB]
    n = len(ts) - 1

    def hand(tau, lo_final):
        c = 1 + tau * tau
        g = torch.Generator().manual_seed(8)
        x, ms = x_T, []
        for i in range(n):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            ms.append(_tw(x, score(x, ts[i]), a0, s0))
            p = min(order, i + 1)
            if lo_final:
                p = min(p, n - i)
            h = lam[i + 1] - lam[i]
            # Newton form in u = lambda - lambda_i: nodes u_j = lambda_{i-j} - lambda_i
            u = [lam[i - j] - lam[i] for j in range(p)]
            f = [ms[-1 - j] for j in range(p)]
            integ = _expint(c, h, 0) * f[0]
            if p >= 2:
                f01 = (f[0] - f[1]) / (u[0] - u[1])
                # p(u) = f0 + f01 u (+ f012 u (u - u1))
                integ = integ + _expint(c, h, 1) * f01
            if p >= 3:
                f12 = (f[1] - f[2]) / (u[1] - u[2])
                f012 = (f01 - f12) / (u[0] - u[2])
                integ = integ + f012 * (_expint(c, h, 2) - u[1] * _expint(c, h, 1))
            x = s1 / s0 * math.exp(-tau * tau * h) * x + a1 * integ
            x = x + s1 * math.sqrt(1 - math.exp(-2 * tau * tau * h)) * torch.randn(x.shape, generator=g, dtype=F64)
        return x

    got = S.sa_solver(sde, score, x_T, ts, generator=torch.Generator().manual_seed(8), order=order, tau=0.7,
                      lower_order_final=lof).x
    _close(got, hand(0.7, lof), 1e-9)
    _far(got, hand(1.0, lof))
    _far(got, hand(0.7, not lof))


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpm_solver_pp_2m_sde_eta_not_one_matches_the_k_diffusion_rule(solver_type):
    """Bug class: eta not used in the decay e^{-eta h} or the noise, c = (1 + eta) h wrong, the
    heun/midpoint k(c) swapped, r = h_{i-1}/h_i inverted. Oracle: k-diffusion's dpmpp_2m_sde
    written here from its formulas with eta = 0.6 on the non-uniform grid. Controls: eta = 1, the
    other solver type, and r inverted differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    lam = [_lam(a, s) for a, s in AB]

    def hand(eta, st, inv=False):
        g = torch.Generator().manual_seed(2)
        x, prev = x_T, None
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            m = _tw(x, score(x, ts[i]), a0, s0)
            h = lam[i + 1] - lam[i]
            c = (1 + eta) * h
            xn = s1 / s0 * math.exp(-eta * h) * x + a1 * (1 - math.exp(-c)) * m
            if prev is not None:
                r = (lam[i] - lam[i - 1]) / h
                if inv:
                    r = 1 / r
                k = 0.5 * (1 - math.exp(-c)) if st == "midpoint" else 1 - (1 - math.exp(-c)) / c
                xn = xn + a1 * k / r * (m - prev)
            xn = xn + s1 * math.sqrt(1 - math.exp(-2 * eta * h)) * torch.randn(x.shape, generator=g, dtype=F64)
            x, prev = xn, m
        return x

    got = S.dpm_solver_pp_2m_sde(sde, score, x_T, ts, generator=torch.Generator().manual_seed(2), eta=0.6,
                                 solver_type=solver_type).x
    _close(got, hand(0.6, solver_type), 1e-9)
    _far(got, hand(1.0, solver_type))
    _far(got, hand(0.6, "heun" if solver_type == "midpoint" else "midpoint"))
    _far(got, hand(0.6, solver_type, inv=True))


# ------------------------------------------------------------------------------ multistep


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_without_corrector_is_its_predictor(order):
    """Bug class: ``corrector`` or ``predictor`` not passed on / inverted, lower_order_final
    dropped on the dpmpp path. Exact invariance: UniPC with ``predictor="dpmpp", corrector=False``
    is DPM-Solver++(pM) with lower_order_final=True, and UniP-1 without corrector is DDIM
    (DPM-Solver-1). Control: the corrected run differs from the uncorrected one."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    plain = S.unipc(sde, score, x_T, ts, order=order, predictor="dpmpp", corrector=False).x
    _close(plain, S.dpm_solver_pp_3m(sde, score, x_T, ts, order=order, lower_order_final=True).x)
    _far(plain, S.unipc(sde, score, x_T, ts, order=order, predictor="dpmpp", corrector=True).x)
    if order == 1:
        _close(S.unipc(sde, score, x_T, ts, order=1, corrector=False).x, S.dpm_solver(sde, score, x_T, ts, order=1).x)


@pytest.mark.parametrize("order, lof", [(2, False), (3, True)])
def test_deis_matches_lagrange_eps_integrated_against_exp_minus_lambda(order, lof):
    """Bug class: the e^{-lambda_i} scale dropped, the kernel sign flipped, the Lagrange nodes
    shifted, lower_order_final ignored. Oracle: DEIS-tAB (Zhang & Chen 2023) in lambda written
    here: the Newton interpolant of eps through the last p points in u = lambda - lambda_i,
    integrated against e^{-(lambda - lambda_i)} in closed form. Control: the other
    lower_order_final setting (order 3) / order 1 (order 2) differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    lam = [_lam(a, s) for a, s in AB]
    n = len(ts) - 1

    def J(h, k):  # int_0^h e^{-u} u^k du
        E = -math.expm1(-h)
        return [E, E - h * math.exp(-h), 2 * E - (h * h + 2 * h) * math.exp(-h)][k]

    def hand(p_max, lo_final):
        x, es = x_T, []
        for i in range(n):
            (a0, s0), (a1, _) = AB[i], AB[i + 1]
            es.append(-s0 * score(x, ts[i]))
            p = min(p_max, i + 1)
            if lo_final:
                p = min(p, n - i)
            h = lam[i + 1] - lam[i]
            u = [lam[i - j] - lam[i] for j in range(p)]
            f = [es[-1 - j] for j in range(p)]
            integ = J(h, 0) * f[0]
            if p >= 2:
                f01 = (f[0] - f[1]) / (u[0] - u[1])
                integ = integ + J(h, 1) * f01
            if p >= 3:
                f012 = (f01 - (f[1] - f[2]) / (u[1] - u[2])) / (u[0] - u[2])
                integ = integ + f012 * (J(h, 2) - u[1] * J(h, 1))
            x = a1 * (x / a0 - math.exp(-lam[i]) * integ)
        return x

    got = S.deis(sde, score, x_T, ts, order=order, lower_order_final=lof).x
    _close(got, hand(order, lof), 1e-9)
    _far(got, hand(order, not lof) if order == 3 else hand(1, lof))


@pytest.mark.parametrize("order", [2, 3])
def test_ipndm_lower_orders_use_their_adams_bashforth_weights(order):
    """Bug class: the coefficient table indexed off by one, the warm-up order wrong, the
    rho = sigma/alpha step taken as a sigma step. Oracle: iPNDM written here with the
    Adams-Bashforth weights (1), (3, -1)/2, (23, -16, 5)/12 on eps, DDIM steps in rho.
    Control: the next-higher order differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    W = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}

    def hand(p_max):
        x, es = x_T, []
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            es.append(-s0 * score(x, ts[i]))
            w = W[min(p_max, i + 1)]
            acc = sum(wj * es[-1 - j] for j, wj in enumerate(w))
            x = a1 * (x / a0 + (s1 / a1 - s0 / a0) * acc)
        return x

    got = S.ipndm(sde, score, x_T, ts, order=order).x
    _close(got, hand(order))
    _far(got, hand(order + 1))


# ------------------------------------------------------------------------------ callback contract

_CALLBACK_SAMPLERS = {
    "heun": lambda sde, f, x, ts, **kw: S.heun(sde, f, x, ts, **kw),
    "dpm_solver1": lambda sde, f, x, ts, **kw: S.dpm_solver(sde, f, x, ts, order=1, **kw),
    "dpm_solver2": lambda sde, f, x, ts, **kw: S.dpm_solver(sde, f, x, ts, order=2, **kw),
    "dpm_solver3": lambda sde, f, x, ts, **kw: S.dpm_solver(sde, f, x, ts, order=3, **kw),
    "dpm_solver_pp_2m": lambda sde, f, x, ts, **kw: S.dpm_solver_pp_2m(sde, f, x, ts, **kw),
    "dpm_solver_pp_3m": lambda sde, f, x, ts, **kw: S.dpm_solver_pp_3m(sde, f, x, ts, **kw),
    "dpm_solver_pp_2s": lambda sde, f, x, ts, **kw: S.dpm_solver_pp_2s(sde, f, x, ts, **kw),
    "unipc": lambda sde, f, x, ts, **kw: S.unipc(sde, f, x, ts, order=3, **kw),
    "deis": lambda sde, f, x, ts, **kw: S.deis(sde, f, x, ts, **kw),
    "ipndm": lambda sde, f, x, ts, **kw: S.ipndm(sde, f, x, ts, **kw),
    "sa_solver": lambda sde, f, x, ts, **kw: S.sa_solver(sde, f, x, ts, generator=torch.Generator().manual_seed(0), **kw),
    "dpm_solver_pp_2m_sde": lambda sde, f, x, ts, **kw: S.dpm_solver_pp_2m_sde(sde, f, x, ts,
                                                                         generator=torch.Generator().manual_seed(0), **kw),
    "edm_sde_no_churn": lambda sde, f, x, ts, **kw: S.edm_sde(sde, f, x, ts, S_churn=0.0, **kw),
}


@pytest.mark.parametrize("name", sorted(_CALLBACK_SAMPLERS))
def test_callback_denoised_is_tweedie_at_the_state_that_started_the_step(name):
    """Bug class: the callback's ``denoised`` formed with the wrong sigma/alpha or sign, ``t``
    reporting the step's start instead of the time reached, ``i`` off by one. Oracle: Tweedie's
    (x + sigma_i^2 s(x, t_i))/alpha_i at the state the step started from (the previous callback's
    x, x_T for step 0), written here. Control: Tweedie with sigma_{i+1} in place of sigma_i is
    rejected."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    seen: List[dict] = []

    def cb(info):
        seen.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in info.items()})

    _CALLBACK_SAMPLERS[name](sde, score, x_T, ts, callback=cb)
    n = len(ts) - 1
    assert [d["i"] for d in seen] == list(range(n))
    for d in seen:
        assert float(d["t"]) == float(ts[d["i"] + 1])
    x_prev = x_T
    for d in seen:
        i = d["i"]
        a0, s0 = _ab(sde, float(ts[i]))
        want = _tw(x_prev, score(x_prev, ts[i]), a0, s0)
        _close(d["denoised"], want, 1e-9)
        a1, s1 = _ab(sde, float(ts[i + 1]))
        _far(d["denoised"], _tw(x_prev, score(x_prev, ts[i]), a0, s1))
        x_prev = d["x"]


# ------------------------------------------------------------------------------ Langevin / PC / inpaint


def _beta(sde, t: float) -> float:
    """VP closed form beta(t) = beta_min + t (beta_max - beta_min)  (f = -beta x / 2, g^2 = beta)."""
    return sde.beta_min + t * (sde.beta_max - sde.beta_min)


def _langevin(x, s, z, snr, alpha_i):
    """score_sde's corrector: eps = 2 alpha_i (snr mean||z|| / mean||s||)^2, x + eps s + sqrt(2 eps) z."""
    step = 2 * alpha_i * (snr * float(z.norm(dim=1).mean()) / float(s.norm(dim=1).mean())) ** 2
    return x + step * s + math.sqrt(2 * step) * z


def _ancestral(x, s, a0, s0, a1, s1, z):
    """DDPM posterior q(x_s | x_t, x0_hat) written from Ho et al. (2020) for a general linear SDE."""
    r = a0 / a1
    var = s0 ** 2 - r * r * s1 ** 2
    x0 = _tw(x, s, a0, s0)
    return (r * s1 ** 2 / s0 ** 2) * x + (a1 * var / s0 ** 2) * x0 + math.sqrt(var * s1 ** 2 / s0 ** 2) * z


def test_predictor_corrector_with_two_ancestral_corrector_rounds_matches_algorithm_1():
    """Bug class: n_corrector_steps or snr not passed on, the corrector's alpha_i not the squared
    signal ratio (or inverted), the mean over the batch of norms replaced by one norm, the
    ancestral posterior's weights swapped. Oracle: Song et al. (2021) PC sampling written here
    (two Langevin rounds at t_i, then an ancestral step), same draw order. Controls: one corrector
    round, alpha_i = 1, and snr = 0.16 (the default) all differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]

    def hand(k, snr, use_alpha=True):
        g = torch.Generator().manual_seed(6)
        x = x_T
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            al = (a0 / a1) ** 2 if use_alpha else 1.0
            for _ in range(k):
                s = score(x, ts[i])
                x = _langevin(x, s, torch.randn(x.shape, generator=g, dtype=F64), snr, al)
            x = _ancestral(x, score(x, ts[i]), a0, s0, a1, s1, torch.randn(x.shape, generator=g, dtype=F64))
        return x

    got = S.predictor_corrector(sde, score, x_T, ts, generator=torch.Generator().manual_seed(6), predictor="ancestral",
                                snr=0.07, n_corrector_steps=2)
    _close(got.x, hand(2, 0.07), 1e-9)
    assert got.nfe == 3 * (len(ts) - 1)
    _far(got.x, hand(1, 0.07))
    _far(got.x, hand(2, 0.07, use_alpha=False))
    _far(got.x, hand(2, 0.16))


def test_annealed_langevin_runs_n_steps_each_at_every_level_including_the_last():
    """Bug class: n_steps_each or step_lr not passed on, a_i = lr sigma_i^2/sigma_L^2 with the
    wrong level (first instead of last) or exponent, the last level skipped, the 1/2 on the
    score dropped. Oracle: NCSN's Alg. 1 (Song & Ermon 2019) written here on the non-uniform grid
    with 3 steps per level. Controls: 2 steps per level and skipping the last level differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    sig = [_ab(sde, float(t))[1] for t in ts]
    lr = 1e-4
    assert lr < 2 * sig[-1] ** 2

    def hand(k, levels):
        g = torch.Generator().manual_seed(3)
        x = x_T
        for i in range(levels):
            a = lr * sig[i] ** 2 / sig[-1] ** 2
            for _ in range(k):
                x = x + 0.5 * a * score(x, ts[i]) + math.sqrt(a) * torch.randn(x.shape, generator=g, dtype=F64)
        return x

    got = S.annealed_langevin(sde, score, x_T, ts, generator=torch.Generator().manual_seed(3), n_steps_each=3, step_lr=lr)
    _close(got.x, hand(3, len(ts)), 1e-9)
    assert got.nfe == 3 * len(ts)
    _far(got.x, hand(2, len(ts)))
    _far(got.x, hand(3, len(ts) - 1))


def test_inpaint_pc_replaces_after_every_corrector_and_predictor_step():
    """Bug class: the replacement after a corrector round dropped, replacement at t_i instead
    of t_{i+1} after the predictor, n_corrector_steps/snr not passed on, an event-shaped mask not
    broadcast over the batch, the last replacement not the clean data. Oracle: Song et al. (2021,
    App. I.2) replacement written here with the reverse-diffusion predictor (exact forward kernel
    reversed) and the Langevin corrector, same draw order. Controls: replacing only after the
    predictor, and one corrector round, differ."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    AB = [_ab(sde, float(t)) for t in ts]
    mask = torch.tensor([True, False, True])
    x_known = torch.randn(5, 3, generator=torch.Generator().manual_seed(21), dtype=F64)
    snr = 0.11

    def hand(k, replace_corr=True):
        g = torch.Generator().manual_seed(13)

        def rep(x, i):
            z = torch.randn(x.shape, generator=g, dtype=F64)
            return torch.where(mask, AB[i][0] * x_known + AB[i][1] * z, x)

        x = rep(x_T, 0)
        for i in range(len(ts) - 1):
            (a0, s0), (a1, s1) = AB[i], AB[i + 1]
            for _ in range(k):
                x = _langevin(x, score(x, ts[i]), torch.randn(x.shape, generator=g, dtype=F64), snr, (a0 / a1) ** 2)
                if replace_corr:
                    x = rep(x, i)
            r = a0 / a1
            G2 = s0 ** 2 - r * r * s1 ** 2
            x = x - (r - 1) * x + G2 * score(x, ts[i]) + math.sqrt(G2) * torch.randn(x.shape, generator=g, dtype=F64)
            x = rep(x, i + 1)
        return torch.where(mask, x_known, x)

    got = S.inpaint(sde, score, x_known, mask, ts, sampler="pc", generator=torch.Generator().manual_seed(13), x_T=x_T,
                    snr=snr, n_corrector_steps=2).x
    _close(got, hand(2), 1e-9)
    _far(got, hand(2, replace_corr=False))
    _far(got, hand(1))


# ------------------------------------------------------------------------------ ODE / registry / guidance


def test_ode_fixed_step_euler_steps_on_every_grid_time():
    """Bug class: a fixed-step torchdiffeq method given only the end points (or the adaptive
    branch taken), the PF-ODE's 1/2 on g^2 s dropped, the callback hook attached to the wrong
    torchdiffeq attribute. Oracle: Euler on dx/dt = -beta x/2 - beta s/2 (VP closed form) on the
    non-uniform grid, written here. Control: one Euler step over the whole interval differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()

    def hand(grid):
        x = x_T
        for t0, t1 in zip(grid[:-1], grid[1:]):
            b = _beta(sde, float(t0))
            x = x + (float(t1) - float(t0)) * (-0.5 * b * x - 0.5 * b * score(x, t0))
        return x

    seen = []
    got = S.ode(sde, score, x_T, ts, method="euler", callback=lambda info: seen.append(float(info["t"])))
    _close(got.x, hand(ts))
    _far(got.x, hand(ts[[0, -1]]))
    assert seen == [float(t) for t in ts[:-1]]  # torchdiffeq's step callback: the start of each step


def test_registered_kwargs_yield_to_explicit_ones_and_denoise_adds_one_evaluation():
    """Bug class: SamplerSpec.__call__ merging in the wrong order (registered kwargs overriding
    the caller's), denoise not counted or not passed on. Oracle: the registry's documented rule
    (explicit wins) against the direct call; denoise=True is one more evaluation and equals
    Tweedie at ts[-1] of the plain solve, written here. Control: the registered order differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()
    spec = S.SAMPLERS["dpm_solver1"]
    _close(spec(sde, score, x_T, ts, order=2).x, S.dpm_solver(sde, score, x_T, ts, order=2).x)
    _far(spec(sde, score, x_T, ts).x, S.dpm_solver(sde, score, x_T, ts, order=2).x)
    for name in ("dpm_solver2", "heun", "deis3", "sa_solver", "edm_sde"):
        spec = S.SAMPLERS[name]
        kw = {"generator": torch.Generator().manual_seed(1)}
        plain = spec(sde, score, x_T, ts, **kw)
        kw = {"generator": torch.Generator().manual_seed(1)}
        den = spec(sde, score, x_T, ts, denoise=True, **kw)
        n = len(ts) - 1
        assert (plain.nfe, den.nfe) == (spec.nfe(n), spec.nfe(n, denoise=True)) == (spec.nfe(n), spec.nfe(n) + 1)
        a, s = _ab(sde, float(ts[-1]))
        _close(den.x, _tw(plain.x, score(plain.x, ts[-1]), a, s), 1e-9)


def test_label_guidance_with_per_sample_times_pairs_each_time_with_both_branches():
    """Bug class: the per-sample time vector not repeated for the doubled batch (or repeated
    interleaved), the null half and the conditional half swapped, w and 1 + w swapped. Oracle:
    (1 + w) s(x, t_b | y_b) - w s(x, t_b | null) per sample, from a hand-written model whose
    output depends on t and on the label. Control: the swapped combination differs."""
    K, null, w = 3, 3, 0.8

    def model(x, t, y):
        return -x * (1.0 + t.reshape(-1, 1)) + 0.5 * y.to(x.dtype).reshape(-1, 1)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9, 1.3], dtype=F64)
    y = torch.tensor([0, 2, 1, 2])
    got = G.label_guidance(model, y, w, null_label=null, num_classes=K)(x, t)
    cond = -x * (1 + t[:, None]) + 0.5 * y[:, None].to(F64)
    unc = -x * (1 + t[:, None]) + 0.5 * null
    _close(got, (1 + w) * cond - w * unc)
    _far(got, (1 + w) * unc - w * cond)
    got0 = G.label_guidance(model, y, 0.0, null_label=null, num_classes=K)(x, t)
    _close(got0, cond)


# ------------------------------------------------------------------------------ adaptive controllers


@pytest.mark.parametrize("controller, stretch, h0", [("i", 1.0, 3.0), ("pi", 1.6, 10.0)])
def test_dpm_solver_adaptive_23_matches_a_hand_written_controller(controller, stretch, h0):
    """Bug class: rtol/atol swapped, atol not in data units (times alpha_s), or the scale taken from |x_low|, the error norm a 2-norm or a
    batch mean instead of the per-sample RMS maxed over the batch, theta / max_factor / h_init not
    passed on, the PI exponents (0.7, 0.4) or the "no growth after a rejection" rule wrong,
    final_stretch's stretch/split branches inverted, the r1/r2 stage weights swapped. Oracle:
    Lu et al. (2022) Alg. 4 with DPM-Solver++ stages (module docstring formulas) and the
    controller written here; rtol != atol, theta = 0.7, max_factor = 1.6, h_init = 3 or 10 (rejected first; with 10 the
    PI step after the rejection would grow without the no-growth rule).
    Checks: accepted lambda grid, counts, NFE = 1 + 2 attempts + (accepted - 1), final x.
    Control: the same hand loop with the batch-mean error norm gives another grid."""
    sde = _sde()
    score, x_T = _score(sde), _x_T(6)
    ts = torch.tensor([sde.T, sde.eps], dtype=F64)
    rtol, atol, theta, fmax = 3e-3, 1e-2, 0.7, 1.6

    def sched(lam):
        t = sde.t_of_lambda(torch.tensor([lam], dtype=F64)).clamp(sde.eps, sde.T)[0]
        a, s = _ab(sde, float(t))
        return t, a, s

    def hand(norm_over_batch):
        a0, s0 = _ab(sde, sde.T)
        ae, se = _ab(sde, sde.eps)
        lam_t, lam_end = _lam(a0, s0), _lam(ae, se)
        x, t_cur, a_t, s_t = x_T, ts[0], a0, s0
        m0 = _tw(x, score(x, t_cur), a_t, s_t)
        h, lams, acc, rej, e_prev, just_rej = h0, [lam_t], 0, 0, 1.0, False
        while lam_end - lam_t > 1e-12 * max(1.0, abs(lam_end)):
            rest = lam_end - lam_t
            if rest <= stretch * h:
                h = rest
            elif stretch > 1.0 and rest < 2 * h:
                h = rest / 2
            last = rest - h <= 1e-12
            t1, a1, s1 = sched(lam_t + h / 3)
            t2, a2, s2 = sched(lam_t + 2 * h / 3)
            _, a_s, s_s = (ts[1], ae, se) if last else sched(lam_t + h)
            e1, e2, e = math.expm1(-h / 3), math.expm1(-2 * h / 3), math.expm1(-h)
            u1 = s1 / s_t * x - a1 * e1 * m0
            m1 = _tw(u1, score(u1, t1), a1, s1)
            u2 = s2 / s_t * x - a2 * e2 * m0 + 2 * a2 * (e2 / (2 * h / 3) + 1) * (m1 - m0)
            m2 = _tw(u2, score(u2, t2), a2, s2)
            base = s_s / s_t * x - a_s * e * m0
            lo = base + 3 * a_s * (e / h + 1) * (m1 - m0)
            hi = base + 1.5 * a_s * (e / h + 1) * (m2 - m0)
            q = ((hi - lo) / (a_s * atol + rtol * torch.maximum(hi.abs(), x.abs()))) ** 2
            E = float(q.mean().sqrt()) if norm_over_batch else float(q.mean(1).sqrt().max())
            E = max(E, 1e-10)
            if E <= 1:
                x, lam_t = hi, (lam_end if last else lam_t + h)
                acc += 1
                lams.append(lam_t)
                if not last:
                    t_cur, a_t, s_t = sched(lam_t)
                    m0 = _tw(x, score(x, t_cur), a_t, s_t)
            if controller == "pi" and E <= 1:
                fac = theta * E ** (-0.7 / 3) * e_prev ** (0.4 / 3)
            else:
                fac = theta * E ** (-1 / 3)
            fac = min(1.0 if (just_rej and controller == "pi") else fmax, max(0.2, fac))
            if E <= 1:
                e_prev, just_rej = E, False
            else:
                rej, just_rej = rej + 1, True
            h *= fac
        return x, lams, acc, rej

    got = S.dpm_solver_adaptive(sde, score, x_T, ts, order=3, rtol=rtol, atol=atol, h_init=h0, theta=theta,
                                max_factor=fmax, controller=controller, final_stretch=stretch)
    x, lams, acc, rej = hand(False)
    assert rej > 0 and acc > 3  # both branches of the controller were taken
    assert (got.n_steps, got.n_rejected) == (acc, rej)
    assert got.nfe == 1 + 2 * (acc + rej) + (acc - 1)
    torch.testing.assert_close(torch.tensor(got.extra["lambdas"], dtype=F64), torch.tensor(lams, dtype=F64),
                               rtol=1e-12, atol=1e-12)
    _close(got.x, x, 1e-9)
    assert hand(True)[1] != lams


def test_adaptive_sde_matches_a_hand_written_gotta_go_fast_controller():
    """Bug class: theta, r or h_init not passed on, the shared z not shared between the two
    proposals, delta's max(|x'|, |x'_prev|) taken with the wrong previous state, the accepted
    state x' instead of x'', the step not clipped at the end, T scaled away. Oracle:
    Jolicoeur-Martineau et al. (2021) Alg. 1 written here with the VP closed forms
    f = -beta x / 2, g^2 = beta (T = 1.7), rtol != atol, theta = 0.8, r = 0.7, h_init = 0.05.
    Checks: counts, NFE = 2 per attempt, final x. Control: keeping x' (the EM proposal) differs."""
    sde = _sde()
    score, x_T = _score(sde), _x_T(4)
    ts = torch.tensor([sde.T, sde.eps], dtype=F64)
    rtol, atol, theta, r, h0 = 2e-2, 5e-2, 0.8, 0.7, 0.05

    def hand(keep_em):
        g = torch.Generator().manual_seed(17)
        t, x, x_prev, h, acc, rej = sde.T, x_T, x_T, h0, 0, 0
        while t - sde.eps > 1e-12:
            h = min(h, t - sde.eps)
            b0, b1 = _beta(sde, t), _beta(sde, t - h)
            tt, tn = torch.tensor(t, dtype=F64), torch.tensor(t - h, dtype=F64)
            z = torch.randn(x.shape, generator=g, dtype=F64)
            x1 = x + h * (b0 * score(x, tt) + 0.5 * b0 * x) + math.sqrt(b0 * h) * z
            x2 = 0.5 * (x1 + x + h * (b1 * score(x1, tn) + 0.5 * b1 * x1) + math.sqrt(b1 * h) * z)
            delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev.abs()), min=atol)
            E = float(((x1 - x2) / delta).pow(2).mean(1).sqrt().max())
            if E <= 1:
                t -= h
                x, x_prev = (x1 if keep_em else x2), x1
                acc += 1
            else:
                rej += 1
            h = theta * h * max(E, 1e-10) ** (-r)
        return x, acc, rej

    got = S.adaptive_sde(sde, score, x_T, ts, generator=torch.Generator().manual_seed(17), rtol=rtol, atol=atol,
                         h_init=h0, theta=theta, r=r)
    x, acc, rej = hand(False)
    assert rej > 0
    assert (got.n_steps, got.n_rejected, got.nfe) == (acc, rej, 2 * (acc + rej))
    _close(got.x, x, 1e-9)
    _far(got.x, hand(True)[0])


# ------------------------------------------------------------------------------ reverse-time objects


def test_reverse_sde_and_pf_ode_coefficients_in_solver_time_with_T_not_one():
    """Bug class: u = T - t replaced by 1 - t (T = 1 hides it), the drift sign in solver time
    flipped, g instead of g^2 on the score, the on_grid table keyed on the wrong time or storing
    g^2 for g, model_kwargs or data_shape not passed on, the PF-ODE's 1/2 dropped. Oracle: the VP
    closed forms f = -beta x / 2, g^2 = beta at t = T - u (T = 1.7), and a score with a keyword
    argument written here. Control: the value at t = u (T ignored) differs."""
    sde = _sde()
    base = _score(sde)

    def score(x, t, shift=0.0):
        assert x.shape[1:] == (3,)
        return base(x, t) + shift

    x = _x_T(4)
    rs = sg.ReverseSDE(sde, score, data_shape=(3,), model_kwargs={"shift": 0.3})
    us = rs.solver_times(torch.tensor([1.6, 0.9, 0.25], dtype=F64))
    _close(us, torch.tensor([0.1, 0.8, 1.45], dtype=F64))
    tab = rs.on_grid(us)
    v = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for u in us:
        t = float(sde.T - u)
        b = _beta(sde, t)
        s = base(x, torch.tensor(t, dtype=F64)) + 0.3
        want_f = b * s + 0.5 * b * x
        for obj in (rs, tab):
            _close(obj.f(u, x), want_f)
            _close(obj.g(u, x), torch.full_like(x, math.sqrt(b)))
            _close(obj.g_prod(u, x, v), math.sqrt(b) * v)
            f2, gv = obj.f_and_g_prod(u, x, v)
            _close(f2, want_f)
            _close(gv, math.sqrt(b) * v)
        _close(rs.reverse_drift(x, torch.tensor(t, dtype=F64)), -0.5 * b * x - b * s)
        _far(rs.f(u, x), _beta(sde, float(u)) * (base(x, u) + 0.3) + 0.5 * _beta(sde, float(u)) * x)
        pf = sg.ProbabilityFlowODE(sde, score, model_kwargs={"shift": 0.3})
        _close(pf(torch.tensor(t, dtype=F64), x), -0.5 * b * x - 0.5 * b * s)
    assert (tab.nfe, rs.nfe) == (3 * 2, 3 * 4)  # f + f_and_g_prod per time; rs also reverse_drift + control


def test_euler_maruyama_steps_the_reverse_sde_in_closed_form_on_a_nonuniform_grid():
    """Bug class: the drift coefficient (log alpha)' halved or sign-flipped, g^2 vs g on the score,
    sqrt(g^2 h) replaced by g^2 sqrt(h), the step h taken from the wrong pair of grid times.
    Oracle: Euler-Maruyama on dx = [f - g^2 s] dt + g dw backwards in time with the VP closed
    forms f = -beta x / 2, g^2 = beta (T = 1.7), written here, same draws. Control: the
    probability-flow drift (g^2 s / 2) differs."""
    sde = _sde()
    score, ts, x_T = _score(sde), _grid(sde), _x_T()

    def hand(c):
        g = torch.Generator().manual_seed(12)
        x = x_T
        for t0, t1 in zip(ts[:-1], ts[1:]):
            b, h = _beta(sde, float(t0)), float(t0 - t1)
            x = x + (c * b * score(x, t0) + 0.5 * b * x) * h + math.sqrt(b * h) * torch.randn(x.shape, generator=g, dtype=F64)
        return x

    got = S.euler_maruyama(sde, score, x_T, ts, generator=torch.Generator().manual_seed(12)).x
    _close(got, hand(1.0))
    _far(got, hand(0.5))

"""Audit-8 hand replays of the samplers on VE and sub-VP SDEs (the existing replays use VP).

Every oracle is the paper's recursion written here, with the schedule in closed form written
here too (``_Sched``: :math:`\\alpha, \\sigma, (\\log\\alpha)', g^2, \\lambda` and :math:`t(\\lambda)` by
bisection), never the library's coefficients. Problems: float64, a batch of 3 samples of odd
dimension 5, a nonlinear time-dependent score, non-uniform grids with ``T != 1``, and
non-default sampler settings. Stochastic replays draw the documented ``torch.randn`` stream
(one draw of the state's shape per use) from a generator seeded like the sampler's. Agreement is
to float64 rounding (``TOL``); each test also checks a nearby wrong variant is rejected.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import samplers as S

F64 = torch.float64
TOL = 1e-9


class _Sched:
    """Closed-form schedules written here (VE, sub-VP, VP with any T)."""

    def __init__(self, kind, **p):
        self.kind, self.p = kind, p
        if kind == "ve":
            self.sde = sg.VESDE(sigma_min=p["smin"], sigma_max=p["smax"], T=p["T"], eps=p["eps"])
        elif kind == "subvp":
            self.sde = sg.SubVPSDE(beta_min=p["b0"], beta_max=p["b1"], T=p["T"], eps=p["eps"])
        else:
            self.sde = sg.VPSDE(beta_min=p["b0"], beta_max=p["b1"], T=p["T"], eps=p["eps"])

    def B(self, t):
        return self.p["b0"] * t + 0.5 * (self.p["b1"] - self.p["b0"]) * t * t

    def alpha(self, t):
        return 1.0 if self.kind == "ve" else math.exp(-0.5 * self.B(t))

    def sigma(self, t):
        p = self.p
        if self.kind == "ve":
            return p["smin"] * (p["smax"] / p["smin"]) ** (t / p["T"])
        if self.kind == "subvp":
            return -math.expm1(-self.B(t))
        return math.sqrt(-math.expm1(-self.B(t)))

    def a(self, t):  # d log alpha / dt
        return 0.0 if self.kind == "ve" else -0.5 * (self.p["b0"] + t * (self.p["b1"] - self.p["b0"]))

    def g2(self, t):
        p = self.p
        if self.kind == "ve":
            return 2.0 * self.sigma(t) ** 2 * math.log(p["smax"] / p["smin"]) / p["T"]
        beta = p["b0"] + t * (p["b1"] - p["b0"])
        return beta if self.kind == "vp" else beta * (1.0 - math.exp(-2.0 * self.B(t)))

    def lam(self, t):
        return math.log(self.alpha(t) / self.sigma(t))

    def t_of_lam(self, lam):
        lo, hi = 0.0, self.p["T"]
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if self.lam(mid) > lam:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


VE = dict(smin=0.02, smax=8.0, T=1.6, eps=3e-3)
SUBVP = dict(b0=0.3, b1=11.0, T=1.4, eps=2e-3)
VP = dict(b0=0.15, b1=13.0, T=0.8, eps=3e-3)
SCHEDS = [("ve", VE), ("subvp", SUBVP)]


def _sched(kind, p):
    return _Sched(kind, **p)


def _score(sc):
    def score(x, t):
        tf = float(t)
        a, s = sc.alpha(tf), sc.sigma(tf)
        return -(x - 0.5 * a * torch.sin(x / (1.0 + a)) - 0.3 * a) / (s * s + 0.4 * a * a) + 0.05 * tf * torch.cos(x)
    return score


def _grid(sc, n=7, seed=2):
    g = torch.Generator().manual_seed(seed)
    T, e = sc.p["T"], sc.p["eps"]
    u = torch.sort(torch.rand(n - 1, generator=g, dtype=F64), descending=True).values
    # non-uniform in log-SNR as well as in t
    lT, le = sc.lam(T), sc.lam(e)
    inner = [sc.t_of_lam(lT + (le - lT) * (1 - float(v)) ** 1.3) for v in u]
    return torch.tensor([T] + inner + [e], dtype=F64)


def _x_T(sc, B=3, D=5, seed=4):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=F64) * sc.sigma(sc.p["T"])


def _close(a, b, tol=TOL):
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol * scale:.3g}"


def _far(a, b, gap=1e-6):
    assert float((a - b).abs().max()) > gap


def _tw(sc, x, s, t):
    return (x + sc.sigma(t) ** 2 * s) / sc.alpha(t)


# ------------------------------------------------------------------ SDE samplers


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_sde_samplers_replay_on_ve_and_subvp(kind, p, name):
    """Bug class: a wrong drift/diffusion coefficient, transition ratio, posterior weight or
    noise std that only shows where alpha == 1 (VE) or g^2 != beta (sub-VP)."""
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc), _x_T(sc)
    g = torch.Generator().manual_seed(9)
    t = ts.tolist()
    for i in range(len(t) - 1):
        ti, si = t[i], t[i + 1]
        s = score(x, torch.tensor(ti, dtype=F64))
        z = torch.randn(x.shape, generator=g, dtype=F64)
        if name == "euler_maruyama":
            h = ti - si
            x = x + (sc.g2(ti) * s - sc.a(ti) * x) * h + math.sqrt(sc.g2(ti) * h) * z
        else:
            r = sc.alpha(ti) / sc.alpha(si)
            var = sc.sigma(ti) ** 2 - r * r * sc.sigma(si) ** 2
            if name == "reverse_diffusion":
                x = x - (r - 1) * x + var * s + math.sqrt(var) * z
            else:
                x0 = _tw(sc, x, s, ti)
                st2, ss2 = sc.sigma(ti) ** 2, sc.sigma(si) ** 2
                x = (r * ss2 / st2) * x + (sc.alpha(si) * var / st2) * x0 + math.sqrt(var * ss2 / st2) * z
    got = getattr(S, name)(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(9))
    _close(got.x, x)
    _far(got.x, getattr(S, name)(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(10)).x)
    assert got.nfe == len(t) - 1 and got.n_steps == len(t) - 1


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("predictor", ["euler_maruyama", "ancestral"])
def test_predictor_corrector_replay_with_two_corrector_steps_and_snr(kind, p, predictor):
    """Bug class: ``snr`` / ``n_corrector_steps`` / predictor not handed on, the corrector's
    alpha_i (squared signal ratio; 1 for VE) or the batch-mean norm rule wrong."""
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=5), _x_T(sc)
    g = torch.Generator().manual_seed(21)
    t = ts.tolist()
    snr = 0.07
    for i in range(len(t) - 1):
        ti, si = t[i], t[i + 1]
        tt = torch.tensor(ti, dtype=F64)
        alpha_i = (sc.alpha(ti) / sc.alpha(si)) ** 2
        for _ in range(2):
            s = score(x, tt)
            z = torch.randn(x.shape, generator=g, dtype=F64)
            sn = float(s.norm(dim=1).mean())
            zn = float(z.norm(dim=1).mean())
            step = 2 * alpha_i * (snr * zn / sn) ** 2
            x = x + step * s + math.sqrt(2 * step) * z
        s = score(x, tt)
        z = torch.randn(x.shape, generator=g, dtype=F64)
        if predictor == "euler_maruyama":
            h = ti - si
            x = x + (sc.g2(ti) * s - sc.a(ti) * x) * h + math.sqrt(sc.g2(ti) * h) * z
        else:
            r = sc.alpha(ti) / sc.alpha(si)
            var = sc.sigma(ti) ** 2 - r * r * sc.sigma(si) ** 2
            x0 = _tw(sc, x, s, ti)
            st2, ss2 = sc.sigma(ti) ** 2, sc.sigma(si) ** 2
            x = (r * ss2 / st2) * x + (sc.alpha(si) * var / st2) * x0 + math.sqrt(var * ss2 / st2) * z
    sol = S.predictor_corrector(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(21),
                                predictor=predictor, snr=snr, n_corrector_steps=2)
    _close(sol.x, x)
    assert sol.nfe == 3 * (len(t) - 1)
    assert sol.extra == {"predictor": predictor, "corrector": "langevin", "snr": snr, "n_corrector_steps": 2}
    assert sol.method == f"pc[{predictor}+langevin]"
    other = S.predictor_corrector(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(21),
                                  predictor=predictor, snr=0.16, n_corrector_steps=2)
    _far(sol.x, other.x)


@pytest.mark.parametrize("kind,p", [("ve", VE)])
def test_annealed_langevin_replay_with_non_default_steps_and_lr(kind, p):
    """Bug class: ``step_lr`` / ``n_steps_each`` ignored, the level scaling sigma_i^2/sigma_L^2
    or the 1/2 on the score wrong, a level skipped."""
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=4), _x_T(sc)
    g = torch.Generator().manual_seed(5)
    lr = 3e-6
    sL2 = sc.sigma(float(ts[-1])) ** 2
    for t in ts.tolist():
        a_i = lr * sc.sigma(t) ** 2 / sL2
        for _ in range(3):
            x = x + 0.5 * a_i * score(x, torch.tensor(t, dtype=F64)) + math.sqrt(a_i) * torch.randn(x.shape, generator=g, dtype=F64)
    sol = S.annealed_langevin(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(5),
                              n_steps_each=3, step_lr=lr)
    _close(sol.x, x)
    assert sol.nfe == 3 * len(ts)
    assert sol.extra == {"n_steps_each": 3, "step_lr": lr}


# ------------------------------------------------------------------ ODE samplers


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("last_euler", [True, False])
def test_heun_replay_on_ve_and_subvp(kind, p, last_euler):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=5), _x_T(sc)
    t = ts.tolist()
    n = len(t) - 1
    for i in range(n):
        ti, si = t[i], t[i + 1]
        at, st, as_, ss = sc.alpha(ti), sc.sigma(ti), sc.alpha(si), sc.sigma(si)
        # PF-ODE in xbar = x/alpha, sbar = sigma/alpha: d xbar / d sbar = -sigma * s(x, t)
        xb = x / at
        d = -st * score(x, torch.tensor(ti, dtype=F64))
        ds = ss / as_ - st / at
        xe = xb + ds * d
        if last_euler and i == n - 1:
            xb = xe
        else:
            d2 = -ss * score(xe * as_, torch.tensor(si, dtype=F64))
            xb = xb + 0.5 * ds * (d + d2)
        x = xb * as_
    sol = S.heun(sc.sde, score, _x_T(sc), ts, last_euler=last_euler)
    _close(sol.x, x)
    assert sol.nfe == 2 * n - int(last_euler)
    _far(sol.x, S.heun(sc.sde, score, _x_T(sc), ts, last_euler=not last_euler).x)


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_singlestep_replay_on_ve_and_subvp(kind, p, order):
    """DPM-Solver-1/2/3 (Lu et al. 2022, Alg. 1-2) in eps-prediction; the intermediate times by
    bisection on lambda written here."""
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=4), _x_T(sc)
    t = ts.tolist()

    def eps(xx, tau):
        return -sc.sigma(tau) * score(xx, torch.tensor(tau, dtype=F64))

    for i in range(len(t) - 1):
        ti, si = t[i], t[i + 1]
        lt, ls = sc.lam(ti), sc.lam(si)
        h = ls - lt
        e0 = eps(x, ti)
        at, as_, ss = sc.alpha(ti), sc.alpha(si), sc.sigma(si)
        if order == 1:
            x = (as_ / at) * x - ss * math.expm1(h) * e0
        elif order == 2:
            t1 = sc.t_of_lam(lt + 0.5 * h)
            u = (sc.alpha(t1) / at) * x - sc.sigma(t1) * math.expm1(0.5 * h) * e0
            x = (as_ / at) * x - ss * math.expm1(h) * e0 - ss * math.expm1(h) * (eps(u, t1) - e0)
        else:
            r1, r2 = 1 / 3, 2 / 3
            t1, t2 = sc.t_of_lam(lt + r1 * h), sc.t_of_lam(lt + r2 * h)
            u1 = (sc.alpha(t1) / at) * x - sc.sigma(t1) * math.expm1(r1 * h) * e0
            D1 = eps(u1, t1) - e0
            u2 = ((sc.alpha(t2) / at) * x - sc.sigma(t2) * math.expm1(r2 * h) * e0
                  - sc.sigma(t2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1)
            D2 = eps(u2, t2) - e0
            x = (as_ / at) * x - ss * math.expm1(h) * e0 - (ss / r2) * (math.expm1(h) / h - 1) * D2
    sol = S.dpm_solver(sc.sde, score, _x_T(sc), ts, order=order)
    _close(sol.x, x, 1e-8)
    assert sol.nfe == order * (len(t) - 1) and sol.extra == {"order": order}
    _far(S.dpm_solver(sc.sde, score, _x_T(sc), ts, order=1 if order > 1 else 2).x, x)  # control: another order


def _dpmpp_ms(sc, score, x, t, order, lof, w2=1.0):
    lam = [sc.lam(v) for v in t]
    n = len(t) - 1
    ms = []
    for i in range(n):
        m = _tw(sc, x, score(x, torch.tensor(t[i], dtype=F64)), t[i])
        ms.append(m)
        p = min(order, i + 1)
        if lof:
            p = min(p, n - i)
        h = lam[i + 1] - lam[i]
        ss, st, as_ = sc.sigma(t[i + 1]), sc.sigma(t[i]), sc.alpha(t[i + 1])
        # data prediction integral with polynomial x0(lambda): Newton form in (lambda - lam_i)/h
        if p == 1:
            D = ms[-1]
            x = (ss / st) * x - as_ * math.expm1(-h) * D
        elif p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            D = ms[-1] + (ms[-1] - ms[-2]) / (2 * r0)
            x = (ss / st) * x - as_ * math.expm1(-h) * D
        else:
            r0 = (lam[i] - lam[i - 1]) / h
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d0 = (ms[-1] - ms[-2]) / r0
            d1 = (ms[-2] - ms[-3]) / r1
            D1 = d0 + r0 / (r0 + r1) * (d0 - d1)
            D2 = (d0 - d1) / (r0 + r1)
            phi = math.expm1(-h)
            x = (ss / st) * x - as_ * phi * ms[-1] + as_ * (phi / h + 1) * D1 - w2 * as_ * ((phi + h) / h ** 2 - 0.5) * D2
    return x


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order,lof,exact", [(3, True, False), (3, False, True), (2, True, False), (1, False, False)])
def test_dpm_solver_pp_multistep_replay(kind, p, order, lof, exact):
    """Bug class: ``order`` / ``lower_order_final`` / ``exact_quadratic`` not handed on, a step
    ratio r inverted, the second difference weighted wrongly."""
    sc = _sched(kind, p)
    score, ts = _score(sc), _grid(sc, n=6)
    want = _dpmpp_ms(sc, score, _x_T(sc), ts.tolist(), order, lof, 2.0 if exact else 1.0)
    sol = S.dpm_solver_pp_3m(sc.sde, score, _x_T(sc), ts, order=order, lower_order_final=lof, exact_quadratic=exact)
    _close(sol.x, want)
    assert sol.extra == {"order": order, "exact_quadratic": exact}
    if order == 2 and lof:
        _close(S.dpm_solver_pp_2m(sc.sde, score, _x_T(sc), ts).x, _dpmpp_ms(sc, score, _x_T(sc), ts.tolist(), 2, False))
    if order == 3:
        _far(sol.x, _dpmpp_ms(sc, score, _x_T(sc), ts.tolist(), order, not lof, 2.0 if exact else 1.0))


@pytest.mark.parametrize("kind,p", SCHEDS)
def test_dpm_solver_pp_2s_replay_with_r(kind, p):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=4), _x_T(sc)
    t = ts.tolist()
    r = 0.35
    for i in range(len(t) - 1):
        lt, ls = sc.lam(t[i]), sc.lam(t[i + 1])
        h = ls - lt
        m0 = _tw(sc, x, score(x, torch.tensor(t[i], dtype=F64)), t[i])
        tu = sc.t_of_lam(lt + r * h)
        u = (sc.sigma(tu) / sc.sigma(t[i])) * x - sc.alpha(tu) * math.expm1(-r * h) * m0
        mu = _tw(sc, u, score(u, torch.tensor(tu, dtype=F64)), tu)
        x = (sc.sigma(t[i + 1]) / sc.sigma(t[i])) * x - sc.alpha(t[i + 1]) * math.expm1(-h) * ((1 - 1 / (2 * r)) * m0 + mu / (2 * r))
    sol = S.dpm_solver_pp_2s(sc.sde, score, _x_T(sc), ts, r=r)
    _close(sol.x, x, 1e-8)
    assert sol.nfe == 2 * (len(t) - 1) and sol.extra == {"r": r}
    _far(S.dpm_solver_pp_2s(sc.sde, score, _x_T(sc), ts, r=0.5).x, x)  # control: r is honoured


def _lagrange_int(nodes, lo, hi, kernel):
    """int_lo^hi kernel(l) ell_j(l) dl for each j (scipy's adaptive quadrature, ~1e-14)."""
    from scipy.integrate import quad

    out = []
    for j, lj in enumerate(nodes):
        def f(v, j=j, lj=lj):
            b = 1.0
            for m, lm in enumerate(nodes):
                if m != j:
                    b *= (v - lm) / (lj - lm)
            return kernel(v) * b
        out.append(quad(f, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0])
    return out


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order,lof", [(3, True), (2, False)])
def test_deis_replay_on_ve_and_subvp(kind, p, order, lof):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=6), _x_T(sc)
    t = ts.tolist()
    lam = [sc.lam(v) for v in t]
    n = len(t) - 1
    es = []
    for i in range(n):
        es.append(-sc.sigma(t[i]) * score(x, torch.tensor(t[i], dtype=F64)))
        q = min(order, i + 1)
        if lof:
            q = min(q, n - i)
        w = _lagrange_int([lam[i - j] for j in range(q)], lam[i], lam[i + 1], lambda v: math.exp(-v))
        x = sc.alpha(t[i + 1]) * (x / sc.alpha(t[i]) - sum(w[j] * es[-1 - j] for j in range(q)))
    sol = S.deis(sc.sde, score, _x_T(sc), ts, order=order, lower_order_final=lof)
    _close(sol.x, x, 1e-8)
    _far(S.deis(sc.sde, score, _x_T(sc), ts, order=order, lower_order_final=not lof).x, x)  # control


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order", [3, 4])
def test_ipndm_replay_on_ve_and_subvp(kind, p, order):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=6), _x_T(sc)
    t = ts.tolist()
    C = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    es = []
    for i in range(len(t) - 1):
        es.append(-sc.sigma(t[i]) * score(x, torch.tensor(t[i], dtype=F64)))
        c = C[min(order, i + 1)]
        acc = sum(cj * es[-1 - j] for j, cj in enumerate(c))
        drho = sc.sigma(t[i + 1]) / sc.alpha(t[i + 1]) - sc.sigma(t[i]) / sc.alpha(t[i])
        x = sc.alpha(t[i + 1]) * (x / sc.alpha(t[i]) + drho * acc)
    sol = S.ipndm(sc.sde, score, _x_T(sc), ts, order=order)
    _close(sol.x, x)
    assert sol.extra == {"order": order}
    _far(S.ipndm(sc.sde, score, _x_T(sc), ts, order=7 - order).x, x)  # control: order 3 vs 4 differ from step 4 on


# ------------------------------------------------------------------ stochastic few-step samplers


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("eta,solver_type", [(0.6, "heun"), (1.0, "midpoint"), (0.0, "midpoint")])
def test_dpm_solver_pp_2m_sde_replay(kind, p, eta, solver_type):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=5), _x_T(sc)
    t = ts.tolist()
    lam = [sc.lam(v) for v in t]
    g = torch.Generator().manual_seed(3)
    prev = None
    for i in range(len(t) - 1):
        m = _tw(sc, x, score(x, torch.tensor(t[i], dtype=F64)), t[i])
        h = lam[i + 1] - lam[i]
        ss, as_ = sc.sigma(t[i + 1]), sc.alpha(t[i + 1])
        new = (ss / sc.sigma(t[i])) * math.exp(-eta * h) * x + as_ * (1 - math.exp(-(1 + eta) * h)) * m
        if prev is not None:
            r = (lam[i] - lam[i - 1]) / h
            c = (1 + eta) * h
            k = 0.5 * (1 - math.exp(-c)) if solver_type == "midpoint" else (1 - math.exp(-c)) / c - math.exp(-c)
            # heun: the exact integral of a linear x0 gives ((1 - e^-c)/c - e^-c) * c/h ... written per step below
            if solver_type == "heun":
                k = 1 - (1 - math.exp(-c)) / c
            new = new + as_ * k / r * (m - prev)
        if eta > 0:
            new = new + ss * math.sqrt(1 - math.exp(-2 * eta * h)) * torch.randn(x.shape, generator=g, dtype=F64)
        x, prev = new, m
    sol = S.dpm_solver_pp_2m_sde(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(3),
                                 eta=eta, solver_type=solver_type)
    _close(sol.x, x)
    assert sol.extra == {"eta": eta, "solver_type": solver_type}
    if eta == 0.0:
        _close(sol.x, S.dpm_solver_pp_2m(sc.sde, score, _x_T(sc), ts).x)


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("churn,tmin,tmax,snoise,last_euler", [(10.0, 0.05, 3.0, 1.007, True), (4.0, 0.2, 50.0, 0.9, False)])
def test_edm_sde_replay(kind, p, churn, tmin, tmax, snoise, last_euler):
    """Bug class: the churn window / cap, S_noise or last_euler not honoured, the churned time
    t(sigma_hat) wrong (its alpha, sigma), the Heun correction at the wrong point."""
    sc = _sched(kind, p)
    score, ts, xT = _score(sc), _grid(sc, n=6), _x_T(sc)
    t = ts.tolist()
    n = len(t) - 1
    sbar = [sc.sigma(v) / sc.alpha(v) for v in t]
    g = torch.Generator().manual_seed(13)

    def D(xb, tau):
        a = sc.alpha(tau)
        return _tw(sc, a * xb, score(a * xb, torch.tensor(tau, dtype=F64)), tau)

    xb = xT / sc.alpha(t[0])
    n_churned = 0
    for i in range(n):
        gam = min(churn / n, math.sqrt(2) - 1) if tmin <= sbar[i] <= tmax else 0.0
        shat = min(sbar[i] * (1 + gam), max(sbar[0], sbar[i]))
        if shat > sbar[i]:
            n_churned += 1
            th = sc.t_of_lam(-math.log(shat))
            xh = xb + snoise * math.sqrt(shat ** 2 - sbar[i] ** 2) * torch.randn(xb.shape, generator=g, dtype=F64)
        else:
            th, xh = t[i], xb
        d = (xh - D(xh, th)) / shat
        ds = sbar[i + 1] - shat
        xe = xh + ds * d
        if last_euler and i == n - 1:
            xb = xe
        else:
            d2 = (xe - D(xe, t[i + 1])) / sbar[i + 1]
            xb = xh + 0.5 * ds * (d + d2)
    want = xb * sc.alpha(t[-1])
    assert 0 < n_churned < n  # the window cuts the grid: both branches run
    sol = S.edm_sde(sc.sde, score, xT, ts, generator=torch.Generator().manual_seed(13), S_churn=churn, S_tmin=tmin,
                    S_tmax=tmax, S_noise=snoise, last_euler=last_euler)
    _close(sol.x, want, 1e-8)
    assert sol.nfe == 2 * n - int(last_euler)
    assert sol.extra == {"S_churn": churn, "S_tmin": tmin, "S_tmax": tmax, "S_noise": snoise}


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order,tau,lof", [(3, 0.7, True), (2, 1.3, False), (1, 1.0, True)])
def test_sa_solver_replay(kind, p, order, tau, lof):
    sc = _sched(kind, p)
    score, ts, x = _score(sc), _grid(sc, n=6), _x_T(sc)
    t = ts.tolist()
    lam = [sc.lam(v) for v in t]
    n = len(t) - 1
    c = 1 + tau * tau
    g = torch.Generator().manual_seed(8)
    ms = []
    for i in range(n):
        ms.append(_tw(sc, x, score(x, torch.tensor(t[i], dtype=F64)), t[i]))
        q = min(order, i + 1)
        if lof:
            q = min(q, n - i)
        h = lam[i + 1] - lam[i]
        w = _lagrange_int([lam[i - j] for j in range(q)], lam[i], lam[i + 1], lambda v, top=lam[i + 1]: c * math.exp(-c * (top - v)))
        acc = sum(w[j] * ms[-1 - j] for j in range(q))
        x = (sc.sigma(t[i + 1]) / sc.sigma(t[i])) * math.exp(-tau * tau * h) * x + sc.alpha(t[i + 1]) * acc \
            + sc.sigma(t[i + 1]) * math.sqrt(1 - math.exp(-2 * tau * tau * h)) * torch.randn(x.shape, generator=g, dtype=F64)
    sol = S.sa_solver(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(8), order=order, tau=tau,
                      lower_order_final=lof)
    _close(sol.x, x, 1e-8)
    assert sol.extra == {"order": order, "tau": tau}
    if tau > 0:  # control: the noise stream is the seeded one (tau = 0 draws no noise)
        _far(S.sa_solver(sc.sde, score, _x_T(sc), ts, generator=torch.Generator().manual_seed(9), order=order, tau=tau,
                         lower_order_final=lof).x, x)


# ------------------------------------------------------------------ adaptive samplers


def _ratio(xh, xl, x, a_s, rtol, atol):
    c = a_s * atol + rtol * torch.maximum(xh.abs(), x.abs())
    e = float(((xh - xl) / c).pow(2).mean(1).sqrt().max())
    return max(e, 1e-10) if math.isfinite(e) else 1e10


def _fit(rest, h, fs):
    if rest <= fs * h:
        h = rest
    elif fs > 1.0 and rest < 2.0 * h:
        h = 0.5 * rest
    return h, rest - h <= 1e-12


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order,controller,fs,h0,theta,mf", [(2, "pi", 1.4, 0.9, 0.7, 1.6), (3, "i", 1.0, None, 0.85, 3.0),
                                                             (3, "pi", 2.0, 0.3, 0.9, 2.5)])
def test_dpm_solver_adaptive_replays_its_controller(kind, p, order, controller, fs, h0, theta, mf):
    """Bug class: an adaptive option (theta, max_factor, h_init, controller, final_stretch) not
    handed on, or an internal stage wrong while the controller still accepts (masked by
    adaptivity). Oracle: the whole accept/reject loop written here from the module docstring;
    the accepted log-SNR grid, counts and the final state must agree."""
    sc = _sched(kind, p)
    score, x = _score(sc), _x_T(sc)
    T, e = sc.p["T"], sc.p["eps"]
    rtol, atol = 2e-3, 1e-3

    def x0(xx, tau):
        return _tw(sc, xx, score(xx, torch.tensor(tau, dtype=F64)), tau)

    l0, l1 = sc.lam(T), sc.lam(e)
    h = (l1 - l0) / 10 if h0 is None else h0
    lt, tcur = l0, T
    lams, acc, rej, nfe = [l0], 0, 0, 1
    e_prev, just_rej = 1.0, False
    m0 = x0(x, T)
    seen = []
    while l1 - lt > 1e-12 * max(1.0, abs(l1)):
        h, last = _fit(l1 - lt, h, fs)
        ls = l1 if last else lt + h
        ts_ = e if last else sc.t_of_lam(ls)
        a_s, s_s, s_t = sc.alpha(ts_), sc.sigma(ts_), sc.sigma(tcur)
        phi1 = math.expm1(-h)
        if order == 2:
            tm = sc.t_of_lam(lt + 0.5 * h)
            u = (sc.sigma(tm) / s_t) * x - sc.alpha(tm) * math.expm1(-0.5 * h) * m0
            m1 = x0(u, tm)
            nfe += 1
            lo_ = (s_s / s_t) * x - a_s * phi1 * m0
            hi_ = (s_s / s_t) * x - a_s * phi1 * m1
        else:
            r1, r2 = 1 / 3, 2 / 3
            t1, t2 = sc.t_of_lam(lt + r1 * h), sc.t_of_lam(lt + r2 * h)
            u1 = (sc.sigma(t1) / s_t) * x - sc.alpha(t1) * math.expm1(-r1 * h) * m0
            m1 = x0(u1, t1)
            u2 = ((sc.sigma(t2) / s_t) * x - sc.alpha(t2) * math.expm1(-r2 * h) * m0
                  + (r2 / r1) * sc.alpha(t2) * (math.expm1(-r2 * h) / (r2 * h) + 1) * (m1 - m0))
            m2 = x0(u2, t2)
            nfe += 2
            phi2 = phi1 / h + 1
            base = (s_s / s_t) * x - a_s * phi1 * m0
            lo_ = base + (a_s * phi2 / r1) * (m1 - m0)
            hi_ = base + (a_s * phi2 / r2) * (m2 - m0)
        E = _ratio(hi_, lo_, x, a_s, rtol, atol)
        if E <= 1.0:
            x, lt, tcur = hi_, ls, ts_
            acc += 1
            lams.append(lt)
            seen.append(acc - 1)
            if not last:
                m0 = x0(x, tcur)
                nfe += 1
        if controller == "pi" and E <= 1.0:
            fac = theta * E ** (-0.7 / order) * e_prev ** (0.4 / order)
        else:
            fac = theta * E ** (-1.0 / order)
        fac = min(1.0 if just_rej and controller == "pi" else mf, max(0.2, fac))
        if E <= 1.0:
            e_prev, just_rej = E, False
        else:
            rej += 1
            just_rej = True
        h *= fac
    got_cb = []
    ts = torch.tensor([T, e], dtype=F64)
    sol = S.dpm_solver_adaptive(sc.sde, score, _x_T(sc), ts, order=order, rtol=rtol, atol=atol, h_init=h0, theta=theta,
                                max_factor=mf, controller=controller, final_stretch=fs,
                                callback=lambda d: got_cb.append(d["i"]))
    assert rej > 0 or order == 3  # (the loop exercised rejections where it could)
    assert (sol.n_steps, sol.n_rejected, sol.nfe) == (acc, rej, nfe)
    assert got_cb == seen
    torch.testing.assert_close(torch.tensor(sol.extra["lambdas"]), torch.tensor(lams), rtol=1e-10, atol=1e-10)
    assert (sol.extra["rtol"], sol.extra["atol"], sol.extra["order"]) == (rtol, atol, order)
    _close(sol.x, x, 1e-8)


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("fs,h0,theta,mf", [(1.5, None, 0.8, 2.0), (1.0, 0.5, 0.7, 1.5), (2.0, 1.2, 0.9, 3.0)])
def test_adaptive_multistep_pece_replays_its_controller(kind, p, fs, h0, theta, mf):
    sc = _sched(kind, p)
    score, x = _score(sc), _x_T(sc)
    T, e = sc.p["T"], sc.p["eps"]
    rtol, atol = 3e-3, 2e-3

    def x0(xx, tau):
        return _tw(sc, xx, score(xx, torch.tensor(tau, dtype=F64)), tau)

    l0, l1 = sc.lam(T), sc.lam(e)
    h = (l1 - l0) / 10 if h0 is None else h0
    lt, tcur = l0, T
    m0, m_prev, h_prev = x0(x, T), None, 0.0
    lams, acc, rej = [l0], 0, 0
    e_prev, just_rej = 1.0, False
    while l1 - lt > 1e-12 * max(1.0, abs(l1)):
        h, last = _fit(l1 - lt, h, fs)
        ts_ = e if last else sc.t_of_lam(lt + h)
        a_s, s_s, s_t = sc.alpha(ts_), sc.sigma(ts_), sc.sigma(tcur)
        em = math.exp(-h)
        I0, I1, I2 = 1 - em, h - 1 + em, h * h - 2 * h + 2 - 2 * em  # int_0^h e^(tau-h) tau^k
        base = (s_s / s_t) * x
        if m_prev is None:
            k = 2
            xp = base + a_s * I0 * m0
        else:
            k = 3
            D = (m0 - m_prev) / h_prev
            xp = base + a_s * (I0 * m0 + I1 * D)
        m1 = x0(xp, ts_)
        A = (m1 - m0) / h
        if m_prev is None:
            xc = base + a_s * (I0 * m0 + I1 * A)
        else:
            c = (A - D) / (h + h_prev)
            xc = base + a_s * (I0 * m0 + I1 * (A - c * h) + I2 * c)
        E = _ratio(xc, xp, x, a_s, rtol, atol)
        if E <= 1.0:
            fac = theta * E ** (-0.7 / k) * e_prev ** (0.4 / k)
            x, lt, tcur = xc, (l1 if last else lt + h), ts_
            m_prev, m0, h_prev = m0, m1, h
            acc += 1
            lams.append(lt)
            fac = min(1.0 if just_rej else mf, max(0.2, fac))
            e_prev, just_rej = E, False
        else:
            fac = min(1.0, max(0.2, theta * E ** (-1.0 / k)))
            rej += 1
            just_rej = True
        h *= fac
    sol = S.dpm_solver_adaptive_multistep(sc.sde, score, _x_T(sc), torch.tensor([T, e], dtype=F64), rtol=rtol, atol=atol,
                                          h_init=h0, theta=theta, max_factor=mf, final_stretch=fs)
    assert (sol.n_steps, sol.n_rejected) == (acc, rej)
    assert sol.nfe == 1 + acc + rej
    torch.testing.assert_close(torch.tensor(sol.extra["lambdas"]), torch.tensor(lams), rtol=1e-10, atol=1e-10)
    _close(sol.x, x, 1e-8)


@pytest.mark.parametrize("kind,p", SCHEDS)
def test_adaptive_sde_replays_its_controller_with_non_default_options(kind, p):
    sc = _sched(kind, p)
    score, x = _score(sc), _x_T(sc)
    T, e = sc.p["T"], sc.p["eps"]
    rtol, atol, h, theta, r = 0.02, 0.03, 0.05, 0.8, 0.6
    g = torch.Generator().manual_seed(17)
    t, x_prev, acc, rej, nfe = T, x, 0, 0, 0
    D = x.shape[1]
    while t - e > 1e-12 * max(1.0, e):
        h = min(h, t - e)
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x1 = x + h * (sc.g2(t) * score(x, torch.tensor(t, dtype=F64)) - sc.a(t) * x) + math.sqrt(sc.g2(t) * h) * z
        tn = t - h
        x2 = 0.5 * (x1 + x + h * (sc.g2(tn) * score(x1, torch.tensor(tn, dtype=F64)) - sc.a(tn) * x1) + math.sqrt(sc.g2(tn) * h) * z)
        nfe += 2
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev.abs()), min=atol)
        E = float((((x1 - x2) / delta).norm(dim=1) / math.sqrt(D)).max())
        if E <= 1.0:
            t, x, x_prev = tn, x2, x1
            acc += 1
        else:
            rej += 1
        h = theta * h * max(E, 1e-10) ** (-r)
    sol = S.adaptive_sde(sc.sde, score, _x_T(sc), torch.tensor([T, e], dtype=F64), generator=torch.Generator().manual_seed(17),
                         rtol=rtol, atol=atol, h_init=0.05, theta=theta, r=r)
    assert (sol.n_steps, sol.n_rejected, sol.nfe) == (acc, rej, nfe)
    assert rej > 0
    assert (sol.extra["rtol"], sol.extra["atol"]) == (rtol, atol)
    _close(sol.x, x, 1e-8)


# ------------------------------------------------------------------ UniPC


def _unipc_replay(sc, score, x, t, order, variant, predictor, corrector, lof, prediction):
    import numpy as np

    lam = [sc.lam(v) for v in t]
    n = len(t) - 1
    data = prediction == "data"

    def keep(j):
        return sc.sigma(t[j + 1]) / sc.sigma(t[j]) if data else sc.alpha(t[j + 1]) / sc.alpha(t[j])

    def mult(j):
        return sc.alpha(t[j + 1]) if data else sc.sigma(t[j + 1])

    def coef(h, rks, p):
        hh = -h if data else h
        phi1 = math.expm1(hh)
        Bh = hh if variant == "bh1" else phi1
        r = np.array(list(rks) + [1.0])
        R = np.stack([r ** k for k in range(p)])
        b, psi, fact = [], phi1 / hh - 1.0, 1.0
        for k in range(1, p + 1):
            b.append(psi * fact / Bh)
            fact *= k + 1
            psi = psi / hh - 1.0 / fact
        b = np.array(b)
        rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
        rho_p = np.zeros(0) if p == 1 else (np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]))
        return phi1, Bh, rho_p, rho_c

    ms, last = [], None
    for i in range(n):
        tt = torch.tensor(t[i], dtype=F64)
        s = score(x, tt)
        m = _tw(sc, x, s, t[i]) if data else -sc.sigma(t[i]) * s
        if corrector and last is not None:
            xp, p, j = last
            h = lam[j + 1] - lam[j]
            rks = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
            phi1, Bh, _, rc = coef(h, rks, p)
            m0 = ms[-1]
            corr = float(rc[-1]) * (m - m0)
            for k in range(1, p):
                corr = corr + float(rc[k - 1]) * (ms[-1 - k] - m0) / rks[k - 1]
            x = keep(j) * xp - mult(j) * phi1 * m0 - mult(j) * Bh * corr
        ms = (ms + [m])[-order:]
        p = min(order, i + 1)
        if lof:
            p = min(p, n - i)
        h = lam[i + 1] - lam[i]
        if predictor == "dpmpp":
            ss, st, as_ = sc.sigma(t[i + 1]), sc.sigma(t[i]), sc.alpha(t[i + 1])
            phi = math.expm1(-h)
            if p == 1:
                xn = (ss / st) * x - as_ * phi * ms[-1]
            elif p == 2:
                r0 = (lam[i] - lam[i - 1]) / h
                xn = (ss / st) * x - as_ * phi * (ms[-1] + (ms[-1] - ms[-2]) / (2 * r0))
            else:
                r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
                d0, d1 = (ms[-1] - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
                D1 = d0 + r0 / (r0 + r1) * (d0 - d1)
                D2 = (d0 - d1) / (r0 + r1)
                xn = (ss / st) * x - as_ * phi * ms[-1] + as_ * (phi / h + 1) * D1 - as_ * ((phi + h) / h ** 2 - 0.5) * D2
        else:
            rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)]
            phi1, Bh, rp, _ = coef(h, rks, p)
            xn = keep(i) * x - mult(i) * phi1 * m
            for k in range(1, p):
                xn = xn - mult(i) * Bh * float(rp[k - 1]) * (ms[-1 - k] - m) / rks[k - 1]
        last = (x, p, i)
        x = xn
    return x


UNIPC_CASES = [
    (3, "bh1", "unip", True, False, "data"),
    (2, "bh2", "unip", True, False, "noise"),
    (3, "bh2", "unip", True, True, "noise"),
    (3, "bh1", "dpmpp", True, True, "data"),
    (2, "bh1", "dpmpp", True, False, "data"),
    (3, "bh2", "unip", False, True, "data"),
    (1, "bh1", "unip", True, True, "data"),
]


@pytest.mark.parametrize("kind,p", SCHEDS)
@pytest.mark.parametrize("order,variant,predictor,corrector,lof,prediction", UNIPC_CASES)
def test_unipc_replay(kind, p, order, variant, predictor, corrector, lof, prediction):
    """UniPC (Zhao et al. 2023) from the order conditions R rho = b written here; every option
    at a non-default value somewhere (lower_order_final=False, bh1, the dpmpp predictor, the
    noise prediction)."""
    sc = _sched(kind, p)
    score, ts = _score(sc), _grid(sc, n=6)
    want = _unipc_replay(sc, score, _x_T(sc), ts.tolist(), order, variant, predictor, corrector, lof, prediction)
    sol = S.unipc(sc.sde, score, _x_T(sc), ts, order=order, variant=variant, predictor=predictor, corrector=corrector,
                  lower_order_final=lof, prediction=prediction)
    _close(sol.x, want, 1e-8)
    assert sol.extra == {"order": order, "variant": variant, "predictor": predictor, "corrector": corrector,
                         "prediction": prediction}
    assert sol.nfe == len(ts) - 1
    if order == 3:
        _far(sol.x, _unipc_replay(sc, score, _x_T(sc), ts.tolist(), order, variant, predictor, corrector, not lof, prediction))

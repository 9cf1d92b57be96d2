"""Audit-8 value tests: documented defaults, registry facts, the PF-ODE sampler's options,
inpainting replays on VE, and calibration's reported numbers recomputed independently.

Defaults are checked by behaviour (the default call equals the call with the documented value
spelled out, and a different value changes the result), so a default that silently changes or
an option that is accepted and dropped both fail.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import SAMPLERS, Registry, SamplerSpec

F64 = torch.float64


def _sde():
    return sg.VPSDE(beta_min=0.2, beta_max=9.0, T=1.3, eps=4e-3)


def _score(sde):
    def score(x, t):
        t = t.to(F64)
        a2 = torch.exp(2 * sde.log_alpha(t))
        s2 = sde.sigma2(t)
        return -(x - 0.4 * torch.tanh(x) - 0.3 * a2.sqrt()) / (s2 + 0.3 * a2)
    return score


def _x_T(B=4, D=3, seed=3):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _gen(seed=5):
    return torch.Generator().manual_seed(seed)


# (function, documented defaults, an alternative value per option, grid kind, steps)
DEFAULTS = [
    (S.euler_maruyama, {}, {}, "uniform", 6),
    (S.adaptive_sde, {"rtol": 1e-2, "atol": 1e-2, "h_init": 1e-2, "theta": 0.9, "r": 0.9},
     {"rtol": 3e-2, "atol": 3e-2, "h_init": 3e-2, "theta": 0.7, "r": 0.5}, "uniform", 1),
    (S.ode, {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}, {"method": "bosh3", "rtol": 1e-3, "atol": 1e-3}, "uniform", 1),
    (S.heun, {"last_euler": True}, {"last_euler": False}, "edm", 5),
    (S.dpm_solver, {"order": 2}, {"order": 3}, "logsnr", 4),
    (S.dpm_solver_pp_3m, {"order": 3, "lower_order_final": False, "exact_quadratic": False},
     {"order": 2, "lower_order_final": True, "exact_quadratic": True}, "logsnr", 6),
    (S.dpm_solver_pp_2s, {"r": 0.5}, {"r": 0.3}, "logsnr", 4),
    (S.unipc, {"order": 2, "variant": "bh2", "predictor": "unip", "corrector": True, "lower_order_final": True,
               "prediction": "data"},
     {"order": 3, "variant": "bh1", "predictor": "dpmpp", "corrector": False, "lower_order_final": False,
      "prediction": "noise"}, "logsnr", 6),
    (S.deis, {"order": 3, "lower_order_final": False}, {"order": 2, "lower_order_final": True}, "logsnr", 6),
    (S.ipndm, {"order": 4}, {"order": 2}, "edm", 6),
    (S.dpm_solver_adaptive, {"order": 3, "rtol": 0.05, "atol": 0.05, "h_init": None, "theta": 0.8, "max_factor": 2.0,
                             "controller": "i", "final_stretch": 1.0},
     {"order": 2, "rtol": 0.01, "atol": 0.01, "h_init": 0.4, "theta": 0.6, "max_factor": 1.3, "controller": "pi",
      "final_stretch": (1.8, {"rtol": 0.01, "atol": 0.01})}, "logsnr", 1),
    (S.dpm_solver_adaptive_multistep, {"rtol": 0.03, "atol": 0.03, "h_init": None, "theta": 0.8, "max_factor": 2.0,
                                       "final_stretch": 1.5},
     {"rtol": 0.01, "atol": 0.01, "h_init": 0.4, "theta": 0.6, "max_factor": 1.1, "final_stretch": 1.0}, "logsnr", 1),
    (S.dpm_solver_pp_2m_sde, {"eta": 1.0, "solver_type": "midpoint"}, {"eta": 0.5, "solver_type": "heun"}, "logsnr", 5),
    (S.edm_sde, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.0, "last_euler": True},
     {"S_churn": 1.0, "S_tmin": 0.5, "S_tmax": 4.0, "S_noise": 0.8, "last_euler": False}, "edm", 5),
    (S.sa_solver, {"order": 2, "tau": 1.0, "lower_order_final": True}, {"order": 3, "tau": 0.5, "lower_order_final": False},
     "logsnr", 6),
    (S.predictor_corrector, {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "n_corrector_steps": 1},
     {"predictor": "ancestral", "corrector": None, "snr": 0.05, "n_corrector_steps": 2}, "uniform", 5),
    (S.annealed_langevin, {"n_steps_each": 10, "step_lr": 2e-5}, {"n_steps_each": 3, "step_lr": 5e-6}, "uniform", 3),
]

# options whose alternative value does not change the result on this problem, with the reason
_SIG_NONE = {("ode", "rtol"), ("ode", "atol")}  # signature None = "1e-5 unless given" (checked by behaviour)


@pytest.mark.parametrize("fn,doc,alt,grid,n", DEFAULTS, ids=[d[0].__name__ for d in DEFAULTS])
def test_documented_defaults_are_the_signature_defaults_and_every_option_is_used(fn, doc, alt, grid, n):
    """Bug class: a default changed while the docs state the value, or an option accepted and
    dropped. Oracles: the default call equals the explicit documented call (bit for bit); each
    option's alternative value alone changes the result."""
    sde = _sde()
    score = _score(sde)
    ts = timesteps(sde, n, kind=grid)
    params = inspect.signature(fn).parameters
    for k, v in doc.items():
        want = None if (fn.__name__, k) in _SIG_NONE else v
        assert params[k].default == want, (fn.__name__, k)
    base = fn(sde, score, _x_T(), ts, generator=_gen())
    explicit = fn(sde, score, _x_T(), ts, generator=_gen(), **doc)
    torch.testing.assert_close(base.x, explicit.x, rtol=0, atol=0)
    assert base.nfe == explicit.nfe
    for k, v in alt.items():
        ctx = {}
        if isinstance(v, tuple):  # (value, context in which the option matters on this problem)
            v, ctx = v
        if fn is S.unipc and k == "predictor":
            ctx = {"order": 3}  # (UniP-2 with B(h) = e^h - 1 is DPM-Solver++(2M): order 3 tells them apart)
        ref = fn(sde, score, _x_T(), ts, generator=_gen(), **ctx) if ctx else base
        other = fn(sde, score, _x_T(), ts, generator=_gen(), **{**ctx, k: v})
        assert float((other.x - ref.x).abs().max()) > 1e-7 or other.nfe != ref.nfe, (fn.__name__, k)


def test_inpaint_defaults():
    p = inspect.signature(S.inpaint).parameters
    assert p["sampler"].default == "euler_maruyama" and p["snr"].default == 0.16 and p["n_corrector_steps"].default == 1
    p = inspect.signature(S.calibrate_timesteps).parameters
    assert p["max_evals"].default == 400 and p["start"].default == "logsnr"


# (name, stochastic, order, strong_order, nfe_per_step, nfe_extra, grid, adaptive, kwargs): the registry's
# documented facts (module docstrings and summaries)
FACTS = [
    ("euler_maruyama", True, 1, 1, 1, 0, "uniform", False, {}),
    ("reverse_diffusion", True, 1, None, 1, 0, "uniform", False, {}),
    ("ancestral", True, 1, None, 1, 0, "uniform", False, {}),
    ("predictor_corrector", True, 1, None, 2, 0, "uniform", False, {}),
    ("annealed_langevin", True, None, None, 10, 10, "uniform", False, {}),
    ("adaptive_sde", True, 1, None, None, 0, "uniform", True, {}),
    ("ode", False, 5, None, None, 0, "uniform", True, {}),
    ("heun", False, 2, None, 2, -1, "edm", False, {}),
    ("dpm_solver1", False, 1, None, 1, 0, "logsnr", False, {"order": 1}),
    ("dpm_solver2", False, 2, None, 2, 0, "logsnr", False, {"order": 2}),
    ("dpm_solver3", False, 3, None, 3, 0, "logsnr", False, {"order": 3}),
    ("dpm_solver_pp_2m", False, 2, None, 1, 0, "logsnr", False, {}),
    ("dpm_solver_pp_3m", False, 2, None, 1, 0, "logsnr", False, {}),
    ("dpm_solver_pp_3m_exact", False, 3, None, 1, 0, "logsnr", False, {"exact_quadratic": True}),
    ("dpm_solver_pp_2s", False, 2, None, 2, 0, "logsnr", False, {}),
    ("unipc_bh1_1", False, 2, None, 1, 0, "logsnr", False, {"order": 1, "variant": "bh1"}),
    ("unipc_bh1_2", False, 3, None, 1, 0, "logsnr", False, {"order": 2, "variant": "bh1"}),
    ("unipc_bh1_3", False, 3, None, 1, 0, "logsnr", False, {"order": 3, "variant": "bh1"}),
    ("unipc_bh2_1", False, 2, None, 1, 0, "logsnr", False, {"order": 1, "variant": "bh2"}),
    ("unipc_bh2_2", False, 3, None, 1, 0, "logsnr", False, {"order": 2, "variant": "bh2"}),
    ("unipc_bh2_3", False, 3, None, 1, 0, "logsnr", False, {"order": 3, "variant": "bh2"}),
    ("dpm_solver_pp_3m_unic", False, 3, None, 1, 0, "logsnr", False, {"order": 3, "predictor": "dpmpp"}),
    ("deis2", False, 2, None, 1, 0, "logsnr", False, {"order": 2}),
    ("deis3", False, 3, None, 1, 0, "logsnr", False, {"order": 3}),
    ("ipndm", False, 2, None, 1, 0, "edm", False, {"order": 4}),
    ("dpm_solver_adaptive", False, 3, None, None, 0, "logsnr", True, {}),
    ("dpm_solver_adaptive_ms", False, 3, None, None, 0, "logsnr", True, {}),
    ("dpm_solver_pp_2m_sde", True, 1, None, 1, 0, "logsnr", False, {}),
    ("edm_sde", True, 1, None, 2, -1, "edm", False, {}),
    ("sa_solver", True, 1, None, 1, 0, "logsnr", False, {}),
]


def test_registry_holds_exactly_the_documented_facts():
    assert list(SAMPLERS) == [f[0] for f in FACTS]
    for name, stoch, order, strong, per, extra, grid, adaptive, kw in FACTS:
        s = SAMPLERS[name]
        assert (s.name, s.stochastic, s.order, s.strong_order, s.nfe_per_step, s.nfe_extra, s.grid, s.adaptive,
                dict(s.kwargs)) == (name, stoch, order, strong, per, extra, grid, adaptive, kw)
        assert s.denoise is True
    assert [s.name for s in SAMPLERS.select(stochastic=True, adaptive=False)] == [
        f[0] for f in FACTS if f[1] and not f[7]]
    assert [s.name for s in SAMPLERS.select(adaptive=True)] == ["adaptive_sde", "ode", "dpm_solver_adaptive",
                                                               "dpm_solver_adaptive_ms"]
    assert S.get_sampler("deis3") is SAMPLERS["deis3"]
    with pytest.raises(KeyError, match="known: euler_maruyama"):
        SAMPLERS["nope"]


def test_spec_arithmetic_grids_and_call():
    sde = _sde()
    heun = SAMPLERS["heun"]
    assert heun.nfe(4) == 7 and heun.nfe(4, denoise=True) == 8 and heun.steps_for(7) == 4 and heun.steps_for(8) == 4
    al = SAMPLERS["annealed_langevin"]
    assert al.nfe(3) == 40 and al.steps_for(40) == 3 and al.steps_for(49) == 3
    with pytest.raises(ValueError):
        SAMPLERS["ode"].nfe(3)
    with pytest.raises(ValueError):
        SAMPLERS["dpm_solver3"].steps_for(2)
    # the adaptive grid is the two end points; the kind and extra kwargs are handed to timesteps
    torch.testing.assert_close(SAMPLERS["dpm_solver_adaptive"].timesteps(sde, 9), timesteps(sde, 1, kind="logsnr"))
    torch.testing.assert_close(SAMPLERS["heun"].timesteps(sde, 5, rho=3.0), timesteps(sde, 5, kind="edm", rho=3.0))
    assert not torch.equal(SAMPLERS["heun"].timesteps(sde, 5, rho=3.0), SAMPLERS["heun"].timesteps(sde, 5))
    # registered kwargs apply, explicit ones win, method is the registered name
    ts = timesteps(sde, 4, kind="logsnr")
    score = _score(sde)
    a = SAMPLERS["dpm_solver3"](sde, score, _x_T(), ts)
    assert a.method == "dpm_solver3" and a.nfe == 12
    torch.testing.assert_close(a.x, S.dpm_solver(sde, score, _x_T(), ts, order=3).x, rtol=0, atol=0)
    b = SAMPLERS["dpm_solver3"](sde, score, _x_T(), ts, order=1)
    assert b.nfe == 4
    spec = SamplerSpec("nod", S.dpm_solver, stochastic=False, order=1, nfe_per_step=1, denoise=False)
    with pytest.raises(ValueError, match="denoise"):
        spec(sde, score, _x_T(), ts, denoise=True)
    with pytest.raises(ValueError, match="duplicate"):
        Registry([spec, spec])
    reg = Registry([spec])
    assert len(reg) == 1 and list(reg) == ["nod"]


def test_tweedie_denoise_at_a_given_time():
    sde = _sde()
    score = _score(sde)
    x = _x_T()
    t = 0.37
    tt = torch.tensor(t, dtype=F64)
    B = 0.2 * t + 0.5 * 8.8 * t * t
    a, s2 = math.exp(-B / 2), -math.expm1(-B)
    torch.testing.assert_close(S.tweedie_denoise(sde, score, x, t), (x + s2 * score(x, tt)) / a, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the PF-ODE sampler


def test_ode_hands_rtol_atol_and_method_to_torchdiffeq_and_reports_them():
    """Bug class: rtol / atol / method not handed on, reported fields wrong, adaptive methods
    stepping on the interior grid, fixed-step methods ignoring it."""
    sde = _sde()
    score = _score(sde)
    ts2 = timesteps(sde, 1)
    ref = S.ode(sde, score, _x_T(), ts2, rtol=1e-11, atol=1e-11).x
    loose = S.ode(sde, score, _x_T(), ts2, rtol=1e-3, atol=1e-3)
    tight = S.ode(sde, score, _x_T(), ts2, rtol=1e-8, atol=1e-8)
    assert loose.extra == {"rtol": 1e-3, "atol": 1e-3, "solver": "dopri5"} and loose.method == "ode[dopri5]"
    e_loose, e_tight = float((loose.x - ref).abs().max()), float((tight.x - ref).abs().max())
    assert e_tight < 1e-6 < e_loose and tight.nfe > loose.nfe
    # dopri5 uses only the end points
    ts7 = timesteps(sde, 7)
    torch.testing.assert_close(S.ode(sde, score, _x_T(), ts7, rtol=1e-6, atol=1e-6).x,
                               S.ode(sde, score, _x_T(), ts2, rtol=1e-6, atol=1e-6).x, rtol=0, atol=0)
    # rk4 steps on the grid: 4 evaluations per step, and the hand RK4 on the PF-ODE
    sol = S.ode(sde, score, _x_T(), ts7, method="rk4")
    assert sol.nfe == 4 * 7 and sol.method == "ode[rk4]" and sol.n_steps == 7 and sol.extra["solver"] == "rk4"

    def f(t, x):
        tt = torch.tensor(t, dtype=F64)
        beta = 0.2 + t * 8.8
        return -0.5 * beta * x - 0.5 * beta * score(x, tt)

    x = _x_T()
    t = ts7.tolist()
    for i in range(7):  # torchdiffeq's "rk4" is the 3/8 rule
        h = t[i + 1] - t[i]
        k1 = f(t[i], x)
        k2 = f(t[i] + h / 3, x + h * k1 / 3)
        k3 = f(t[i] + 2 * h / 3, x + h * (k2 - k1 / 3))
        k4 = f(t[i + 1], x + h * (k1 - k2 + k3))
        x = x + (k1 + 3 * (k2 + k3) + k4) * h / 8
    torch.testing.assert_close(sol.x, x, rtol=1e-10, atol=1e-10)


def test_ode_callback_sees_the_start_of_each_accepted_step():
    sde = _sde()
    seen = []
    sol = S.ode(sde, _score(sde), _x_T(), timesteps(sde, 1), rtol=1e-4, atol=1e-4,
                callback=lambda d: seen.append((d["i"], float(d["t"]))))
    assert [i for i, _ in seen] == list(range(sol.n_steps))
    assert seen[0][1] == pytest.approx(sde.T) and all(a > b for (_, a), (_, b) in zip(seen, seen[1:]))


# ------------------------------------------------------------------ inpainting on VE


def _ve():
    return sg.VESDE(sigma_min=0.03, sigma_max=6.0, T=1.5, eps=2e-3)


@pytest.mark.parametrize("sampler", ["euler_maruyama", "reverse_diffusion", "ancestral", "ode", "pc"])
@pytest.mark.parametrize("given_x_T", [True, False])
def test_inpaint_replay_on_ve(sampler, given_x_T):
    """Bug class: the replacement noise drawn in the wrong order / at the wrong time, sigma or
    alpha of the wrong grid point, a fixed draw re-drawn (ode), x_T ignored, the mask's
    broadcasting, snr / n_corrector_steps not handed on. Oracle: the replacement algorithm
    written here with the documented draw order."""
    sde = _ve()
    smin, smax, T = 0.03, 6.0, 1.5

    def sig(t):
        return smin * (smax / smin) ** (t / T)

    def score(x, t):
        s = sig(float(t))
        return -(x - 0.3 * torch.sin(x)) / (s * s + 0.5) + 0.02 * torch.roll(x, 1, dims=1)

    B, D = 3, 5
    gx = torch.Generator().manual_seed(1)
    x_known = torch.randn(B, D, generator=gx, dtype=F64)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)  # per-sample shape, 0/1 floats
    m = mask.bool().expand(B, D)
    ts = torch.tensor([T, 1.1, 0.8, 0.4, 0.15, 2e-3], dtype=F64)
    t = ts.tolist()
    g = torch.Generator().manual_seed(6)
    x_T = torch.randn(B, D, generator=gx, dtype=F64) * 6.0 if given_x_T else None
    x = x_T.clone() if given_x_T else smax * torch.randn(B, D, generator=g, dtype=F64)
    zf = torch.randn(B, D, generator=g, dtype=F64) if sampler == "ode" else None
    snr, nc = 0.09, 2

    def rep(x, i):
        z = zf if zf is not None else torch.randn(B, D, generator=g, dtype=F64)
        return torch.where(m, x_known + sig(t[i]) * z, x)

    x = rep(x, 0)
    for i in range(len(t) - 1):
        tt = torch.tensor(t[i], dtype=F64)
        st, ss = sig(t[i]), sig(t[i + 1])
        var = st * st - ss * ss
        if sampler == "pc":
            for _ in range(nc):
                s = score(x, tt)
                z = torch.randn(B, D, generator=g, dtype=F64)
                step = 2 * (snr * float(z.norm(dim=1).mean()) / float(s.norm(dim=1).mean())) ** 2
                x = rep(x + step * s + math.sqrt(2 * step) * z, i)
        s = score(x, tt)
        if sampler == "ode":
            x = (x + st * st * s) - ss * st * s
        elif sampler == "euler_maruyama":
            h = t[i] - t[i + 1]
            g2 = 2 * st * st * math.log(smax / smin) / T
            x = x + g2 * s * h + math.sqrt(g2 * h) * torch.randn(B, D, generator=g, dtype=F64)
        elif sampler in ("reverse_diffusion", "pc"):
            x = x + var * s + math.sqrt(var) * torch.randn(B, D, generator=g, dtype=F64)
        else:
            x0 = x + st * st * s
            x = (ss * ss / (st * st)) * x + (var / (st * st)) * x0 + math.sqrt(var * ss * ss / (st * st)) * torch.randn(
                B, D, generator=g, dtype=F64)
        x = rep(x, i + 1)
    want = torch.where(m, x_known, x)
    sol = S.inpaint(sde, score, x_known, mask, ts, sampler=sampler, generator=torch.Generator().manual_seed(6),
                    x_T=x_T, snr=snr, n_corrector_steps=nc)
    torch.testing.assert_close(sol.x, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(sol.x[m], x_known[m])
    assert sol.extra == {"sampler": sampler}
    per_step = {"pc": 1 + nc}.get(sampler, 1)
    assert sol.nfe == per_step * (len(t) - 1)


# ------------------------------------------------------------------ calibration's reported numbers


def test_calibration_reported_errors_and_costs_are_recomputable():
    """Bug class: a reported error or counter mis-computed (error_calibrated not the error of
    the returned grid, path entries not the error of their path_ts, nfe_total not the sum,
    a passed ``ref`` still solved), ``registry`` / ``start`` / ``x_T_val`` not used."""
    pytest.importorskip("scipy")
    sde = sg.VPSDE(beta_min=0.1, beta_max=15.0, T=1.2, eps=0.02)
    data = sg.analytic.Gaussian(torch.tensor([0.8, -0.4, 1.1], dtype=F64), torch.diag(torch.tensor([0.3, 0.9, 0.5], dtype=F64)))
    score = data.score_fn(sde)
    xc = torch.randn(24, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    xv = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = S.ode(sde, score, xc, timesteps(sde, 1), rtol=1e-10, atol=1e-10).x
    refv = S.ode(sde, score, xv, timesteps(sde, 1), rtol=1e-10, atol=1e-10).x
    alpha_e = math.exp(-0.5 * (0.1 * 0.02 + 0.5 * 14.9 * 0.02 ** 2))

    def err(ts, x, r):
        out = S.dpm_solver_pp_3m(sde, score, x, ts).x
        return float((((out - r) / alpha_e) ** 2).mean(1).sqrt().mean())

    spec = SamplerSpec("my3m", S.dpm_solver_pp_3m, stochastic=False, order=2, nfe_per_step=1, grid="logsnr")
    reg = Registry([spec])
    res = S.calibrate_timesteps(sde, score, "my3m", 5, xc, ref=ref, x_T_val=xv, ref_val=refv, max_evals=25,
                                registry=reg, start=("uniform", "edm"))
    assert res.sampler == "my3m" and res.steps == 5 and res.nfe == 5
    e_u, e_e = err(timesteps(sde, 5, kind="uniform"), xc, ref), err(timesteps(sde, 5, kind="edm"), xc, ref)
    assert res.error_start == pytest.approx(min(e_u, e_e), rel=1e-6)
    assert res.error_calibrated == pytest.approx(err(res.ts, xc, ref), rel=1e-9)
    assert res.error_calibrated_val == pytest.approx(err(res.ts, xv, refv), rel=1e-9)
    for (_k, e_cal, e_val), ts in zip(res.path, res.path_ts):
        assert e_cal == pytest.approx(err(ts, xc, ref), rel=1e-9)
        assert e_val == pytest.approx(err(ts, xv, refv), rel=1e-9)
    assert res.error_calibrated_val == min(p[2] for p in res.path)
    assert any(torch.equal(res.ts, p) for p in res.path_ts)
    assert res.nfe_reference == 0
    assert res.evaluations <= 25 + 2 * len(res.path)  # the cap plus the iterate re-evaluations (cached)
    assert res.nfe_search == 5 * res.evaluations
    assert res.evaluations_val == len(res.path) and res.nfe_validation == 5 * len(res.path)
    assert res.nfe_total == res.nfe_search + res.nfe_validation
    # references solved here are counted
    res2 = S.calibrate_timesteps(sde, score, "my3m", 5, xc, max_evals=3, registry=reg)
    assert res2.nfe_reference == S.ode(sde, score, xc, timesteps(sde, 1), rtol=1e-9, atol=1e-9).nfe
    assert res2.nfe_total == res2.nfe_reference + res2.nfe_search and res2.error_start_val is None
    assert res2.error_start == pytest.approx(err(timesteps(sde, 5, kind="logsnr"), xc,
                                                 S.ode(sde, score, xc, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x), rel=1e-9)


def test_validated_calibration_reports_the_point_it_returns_when_that_is_not_the_last():
    """Bug class: the returned grid / its reported validation error taken from the last Powell
    point instead of the validation-best one. A 2-sample calibration batch overfits, so on this
    seeded problem the validation-best point of the path is an interior one (asserted first)."""
    pytest.importorskip("scipy")
    sde = sg.VPSDE(beta_min=0.1, beta_max=15.0, T=1.2, eps=0.02)
    data = sg.analytic.Gaussian(torch.tensor([0.8, -0.4, 1.1], dtype=F64), torch.diag(torch.tensor([0.3, 0.9, 0.5], dtype=F64)))
    score = data.score_fn(sde)
    reg = Registry([SamplerSpec("my3m", S.dpm_solver_pp_3m, stochastic=False, order=2, nfe_per_step=1, grid="logsnr")])
    xc = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    xv = torch.randn(16, 3, generator=torch.Generator().manual_seed(101), dtype=F64)
    res = S.calibrate_timesteps(sde, score, "my3m", 4, xc, x_T_val=xv, max_evals=150, registry=reg, start=("uniform", "edm"))
    vals = [p[2] for p in res.path]
    i = min(range(len(vals)), key=lambda k: (vals[k], k))
    assert 0 < i < len(vals) - 1 and vals[-1] > vals[i]  # precondition: an interior optimum
    assert res.error_calibrated_val == vals[i] and res.error_calibrated == res.path[i][1]
    assert torch.equal(res.ts, res.path_ts[i])
    refv = S.ode(sde, score, xv, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
    alpha_e = math.exp(-0.5 * (0.1 * 0.02 + 0.5 * 14.9 * 0.02 ** 2))
    out = S.dpm_solver_pp_3m(sde, score, xv, res.ts).x
    assert res.error_calibrated_val == pytest.approx(float((((out - refv) / alpha_e) ** 2).mean(1).sqrt().mean()), rel=1e-9)
    assert res.error_start_val == vals[0] and res.error_calibrated_val < res.error_start_val

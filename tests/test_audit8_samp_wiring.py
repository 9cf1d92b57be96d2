"""Audit-8 wiring tests over every registered sampler (value checks, no statistics).

Each test runs every :data:`~sdesolve_gen.samplers.SAMPLERS` entry on a small float64 problem:
a VP SDE with ``T != 1`` and ``eps != 1e-3``, a nonlinear, time-dependent score that takes a
keyword argument, a batch of 4 samples of odd dimension 3, and a non-uniform grid. The oracles
are counts made by the test itself (score calls, callback calls), the documented registry
arithmetic, and exact equalities between two ways of running the same computation (a keyword
argument passed through ``model_kwargs`` versus bound in a closure; ``denoise=True`` versus a
Tweedie step written here).
"""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.seeds import SeedStreams

F64 = torch.float64
NAMES = list(S.SAMPLERS)
FIXED = [n for n in NAMES if not S.SAMPLERS[n].adaptive]
STOCH = [n for n in NAMES if S.SAMPLERS[n].stochastic]


def _sde():
    return sg.VPSDE(beta_min=0.2, beta_max=9.0, T=1.3, eps=4e-3)


def _raw_score(sde):
    def score(x, t, c=0.0):
        t = t.to(F64)
        a2 = torch.exp(2 * sde.log_alpha(t)).to(x.dtype)
        s2 = sde.sigma2(t).to(x.dtype)
        if t.dim() == 1:
            a2, s2 = a2.reshape(-1, *([1] * (x.dim() - 1))), s2.reshape(-1, *([1] * (x.dim() - 1)))
        return -(x - 0.4 * torch.tanh(x) - c * a2.sqrt()) / (s2 + 0.3 * a2)
    return score


class Counter:
    def __init__(self, fn):
        self.fn, self.calls, self.kwargs = fn, 0, []

    def __call__(self, x, t, **kw):
        self.calls += 1
        self.kwargs.append(dict(kw))
        return self.fn(x, t, **kw)


def _grid(sde, name, n=5):
    spec = S.SAMPLERS[name]
    return spec.timesteps(sde, n)


def _x_T(B=4, D=3, seed=3):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _kw(name):
    # settings small enough to keep every run fast
    if name == "annealed_langevin":
        return {"n_steps_each": 2}
    return {}


def _run(name, score, x_T, ts, seed=7, **kw):
    spec = S.SAMPLERS[name]
    g = torch.Generator().manual_seed(seed)
    return spec(_sde(), score, x_T, ts, generator=g, **{**_kw(name), **kw})


@pytest.mark.parametrize("name", NAMES)
def test_model_kwargs_reach_every_score_evaluation(name):
    """Bug class: ``model_kwargs`` dropped on one evaluation path (an intermediate stage, the
    PF-ODE function, the final denoise). Exact oracle: the same run with the keyword bound in a
    closure; control: the keyword's value changes the result."""
    sde = _sde()
    ts = _grid(sde, name)
    x_T = _x_T()
    raw = _raw_score(sde)
    cnt = Counter(raw)
    a = _run(name, cnt, x_T, ts, model_kwargs={"c": 0.6}, denoise=S.SAMPLERS[name].denoise)
    assert cnt.calls == a.nfe and all(k == {"c": 0.6} for k in cnt.kwargs)
    b = _run(name, lambda x, t: raw(x, t, c=0.6), x_T, ts, denoise=S.SAMPLERS[name].denoise)
    c = _run(name, lambda x, t: raw(x, t, c=0.0), x_T, ts, denoise=S.SAMPLERS[name].denoise)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert float((a.x - c.x).abs().max()) > 1e-3


@pytest.mark.parametrize("name", FIXED)
def test_fixed_step_nfe_is_the_registered_arithmetic_and_the_counted_calls(name):
    """Bug class: a reported NFE that is not the number of score calls, or registry arithmetic
    (``nfe_per_step``, ``nfe_extra``) that disagrees with the sampler."""
    spec = S.SAMPLERS[name]
    sde = _sde()
    for n in (3, 5):
        ts = spec.timesteps(sde, n)
        cnt = Counter(_raw_score(sde))
        sol = spec(sde, cnt, _x_T(), ts, generator=torch.Generator().manual_seed(7))  # registered defaults
        assert sol.nfe == cnt.calls == spec.nfe(n)
        assert sol.n_steps == n
        assert sol.method == name
        assert sol.x.shape == (4, 3) and sol.x.dtype == F64


@pytest.mark.parametrize("name", [n for n in NAMES if S.SAMPLERS[n].denoise])
def test_denoise_is_one_tweedie_step_at_eps_for_every_sampler(name):
    """Bug class: ``denoise`` ignored, applied at the wrong time / with the wrong alpha, sigma,
    or not counted. Oracle: Tweedie's formula written here at ``ts[-1]`` on the plain run."""
    sde = _sde()
    ts = _grid(sde, name)
    raw = _raw_score(sde)
    plain = _run(name, raw, _x_T(), ts)
    den = _run(name, raw, _x_T(), ts, denoise=True)
    te = torch.tensor(float(ts[-1]), dtype=F64)
    a, s2 = math.exp(float(sde.log_alpha(te))), float(sde.sigma2(te))
    want = (plain.x + s2 * raw(plain.x, te)) / a
    torch.testing.assert_close(den.x, want, rtol=1e-12, atol=1e-12)
    assert den.nfe == plain.nfe + 1
    assert float((den.x - plain.x).abs().max()) > 1e-4


@pytest.mark.parametrize("name", FIXED)
def test_callback_reports_every_step_with_its_time_and_state(name):
    """Bug class: callback step index / time off by one, a step not reported, the reported state
    not the one the solve continues from."""
    sde = _sde()
    ts = _grid(sde, name, n=4)
    seen = []
    sol = _run(name, _raw_score(sde), _x_T(), ts, callback=lambda d: seen.append({**d, "x": d["x"].clone()}))
    assert [d["i"] for d in seen] == list(range(len(ts) - 1))
    for d in seen:
        assert float(d["t"]) == float(ts[d["i"] + 1])
        assert d["t"].dtype == F64 and d["t"].dim() == 0
    if name != "annealed_langevin":  # (its last level runs after the last report, documented)
        torch.testing.assert_close(seen[-1]["x"], sol.x, rtol=0, atol=0)


@pytest.mark.parametrize("name", STOCH)
def test_stochastic_samplers_draw_from_the_generator_and_per_sample_streams(name):
    """Bug class: the generator not handed on (global RNG used), or per-sample streams mixed
    across rows. Oracles: same seed -> identical, other seed -> different; with SeedStreams a
    row depends only on its own seed (the batch [s0, s1, s2, s3] vs [s2, s9, s0, s3])."""
    sde = _sde()
    ts = _grid(sde, name, n=4)
    raw = _raw_score(sde)
    x_T = _x_T()
    torch.manual_seed(0)
    a = _run(name, raw, x_T, ts, seed=11)
    torch.manual_seed(1)
    b = _run(name, raw, x_T, ts, seed=11)
    c = _run(name, raw, x_T, ts, seed=12)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert float((a.x - c.x).abs().min()) > 0
    spec = S.SAMPLERS[name]
    if name in ("langevin", "annealed_langevin", "predictor_corrector"):
        return  # the Langevin step size couples rows through batch means (documented)
    if spec.adaptive:
        return  # the step sizes depend on the whole batch (max over samples)
    x1 = x_T
    x2 = x_T[[2, 1, 0, 3]].clone()
    x2[1] = x_T[1]
    s1 = spec(sde, raw, x1, ts, generator=SeedStreams([5, 6, 7, 8]), **_kw(name)).x
    s2 = spec(sde, raw, x2, ts, generator=SeedStreams([7, 99, 5, 8]), **_kw(name)).x
    torch.testing.assert_close(s1[0], s2[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1[2], s2[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1[3], s2[3], rtol=1e-12, atol=1e-12)
    assert float((s1[1] - s2[1]).abs().max()) > 1e-6


@pytest.mark.parametrize("name", [n for n in NAMES if not S.SAMPLERS[n].stochastic])
def test_deterministic_samplers_ignore_the_generator_and_run_in_float32(name):
    """Bug class: a deterministic sampler drawing noise, or a float32 path that silently
    upcasts / loses the dtype. Oracle: float32 run within float32 rounding of the float64 run."""
    sde = _sde()
    ts = _grid(sde, name)
    raw = _raw_score(sde)
    a = _run(name, raw, _x_T(), ts, seed=1)
    b = _run(name, raw, _x_T(), ts, seed=2)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    f = _run(name, raw, _x_T().float(), ts, seed=1)
    assert f.x.dtype == torch.float32
    torch.testing.assert_close(f.x.double(), a.x, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["dpm_solver2", "heun", "unipc_bh2_3", "dpm_solver3", "ode", "deis3", "ipndm"])
def test_differentiable_builds_a_graph_and_default_does_not(name):
    """Bug class: ``differentiable`` not handed on (to the score caller or the PF-ODE function).
    Oracle: with it, d sum(x)/d x_T exists and matches a central finite difference."""
    sde = _sde()
    ts = _grid(sde, name, n=4)
    raw = _raw_score(sde)
    x_T = _x_T(B=1).requires_grad_(True)
    kw = {"rtol": 1e-9, "atol": 1e-9} if name == "ode" else {}
    out = _run(name, raw, x_T, ts, differentiable=True, **kw).x.sum()
    (g,) = torch.autograd.grad(out, x_T)
    e = torch.zeros_like(x_T)
    e[0, 1] = 1e-5
    with torch.no_grad():
        fd = (_run(name, raw, x_T + e, ts, **kw).x.sum() - _run(name, raw, x_T - e, ts, **kw).x.sum()) / 2e-5
    assert abs(float(g[0, 1]) - float(fd)) < 1e-4 * max(1.0, abs(float(fd)))
    assert not _run(name, raw, x_T, ts, **kw).x.requires_grad


@pytest.mark.parametrize("name", FIXED)
def test_check_finite_modes_are_honoured(name):
    """Bug class: ``check_finite`` not handed on ("off" still raising, "end"/"step" silent)."""
    sde = _sde()
    ts = _grid(sde, name, n=4)
    raw = _raw_score(sde)

    def bad(x, t):
        s = raw(x, t)
        return s * float("nan") if float(t.reshape(-1)[0]) < 0.6 * sde.T else s

    for mode in ("end", "step"):
        with pytest.raises(sg.NonFiniteError):
            _run(name, bad, _x_T(), ts, check_finite=mode)
    try:
        off = _run(name, bad, _x_T(), ts, check_finite="off")
    except sg.NonFiniteError:  # pragma: no cover - the bug this guards
        pytest.fail("check_finite='off' raised")
    except (RuntimeError, ValueError):
        pass  # an adaptive controller may give up on NaN errors: not the finiteness check
    else:
        # "off" hands the NaN score through unchecked: the returned samples carry it
        assert bool(torch.isnan(off.x).any()), name


def _tweedie(sde, raw, x, t):
    t = torch.as_tensor(t, dtype=F64)
    a, s2 = math.exp(float(sde.log_alpha(t))), float(sde.sigma2(t))
    return (x + s2 * raw(x, t)) / a


@pytest.mark.parametrize("kw", [{"prediction": "noise", "order": 3}, {"prediction": "noise", "order": 2, "variant": "bh1"}])
def test_unipc_noise_prediction_callback_reports_tweedie_at_the_evaluated_state(kw):
    """Bug class: the noise-prediction form reporting eps (or Tweedie at the wrong sigma) as
    ``denoised``. Oracle: Tweedie at the state the step evaluated (x_T, then each reported x)."""
    sde = _sde()
    raw = _raw_score(sde)
    ts = _grid(sde, "unipc_bh2_3", n=5)
    seen = []
    S.unipc(sde, raw, _x_T(), ts, callback=lambda d: seen.append({**d, "x": d["x"].clone()}), **kw)
    x_prev = _x_T()
    for d in seen:
        i = d["i"]
        torch.testing.assert_close(d["denoised"], _tweedie(sde, raw, x_prev, float(ts[i])), rtol=1e-10, atol=1e-10)
        x_prev = d["x"]


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_callbacks_report_accepted_steps_with_the_time_reached(order):
    """Bug class: adaptive samplers' callback ``i`` / ``t`` / ``denoised`` wrong. Oracles: one
    report per accepted step, strictly decreasing times ending at eps, the extra log-SNR grid's
    times, and (DPM-Solver-12/23) denoised = Tweedie at the state that started the step."""
    sde = _sde()
    raw = _raw_score(sde)
    ts = S.SAMPLERS["dpm_solver_adaptive"].timesteps(sde, 1)
    seen = []
    sol = S.dpm_solver_adaptive(sde, raw, _x_T(), ts, order=order, rtol=0.01, atol=0.01,
                                callback=lambda d: seen.append({**d, "x": d["x"].clone()}))
    assert [d["i"] for d in seen] == list(range(sol.n_steps))
    lam = [float(sde.half_log_snr(torch.as_tensor(d["t"], dtype=F64).cpu())) for d in seen]
    torch.testing.assert_close(torch.tensor(lam, dtype=F64), torch.tensor(sol.extra["lambdas"][1:], dtype=F64),
                               rtol=1e-9, atol=1e-9)
    assert float(seen[-1]["t"]) == float(ts[-1])
    torch.testing.assert_close(seen[-1]["x"], sol.x, rtol=0, atol=0)
    x_prev, t_prev = _x_T(), float(ts[0])
    for d in seen:
        torch.testing.assert_close(d["denoised"], _tweedie(sde, raw, x_prev, t_prev), rtol=1e-9, atol=1e-9)
        x_prev, t_prev = d["x"], float(d["t"])
    seen2 = []
    sol2 = S.adaptive_sde(sde, raw, _x_T(), ts, generator=torch.Generator().manual_seed(0), rtol=0.05, atol=0.05,
                          callback=lambda d: seen2.append((d["i"], float(d["t"]))))
    assert [i for i, _ in seen2] == list(range(sol2.n_steps))
    assert all(a > b for (_, a), (_, b) in zip(seen2, seen2[1:])) and seen2[-1][1] == pytest.approx(float(ts[-1]), abs=1e-12)
    seen3 = []
    sol3 = S.dpm_solver_adaptive_multistep(sde, raw, _x_T(), ts, callback=lambda d: seen3.append(d["i"]))
    assert seen3 == list(range(sol3.n_steps))

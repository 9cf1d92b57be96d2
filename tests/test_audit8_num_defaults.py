"""Audit 8 (numerics): the documented default values of the numerical API, checked by calling
with and without the documented value (the results must be identical) and against the docs' numbers."""

from __future__ import annotations

import inspect

import torch

from sdesolve_gen import likelihood as L
from sdesolve_gen.analytic import Gaussian
from sdesolve_gen.divergence import CHUNK_ELEMENTS
from sdesolve_gen.integrate import DEFAULT_ATOL, DEFAULT_RTOL, resolve_tolerances, sdeint, timesteps
from sdesolve_gen.reverse import ReverseSDE
from sdesolve_gen.rk_batched import solve_per_sample
from sdesolve_gen.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

f64 = torch.float64


def _defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def test_schedule_defaults_as_documented():
    vp = VPSDE()
    assert (vp.beta_min, vp.beta_max, vp.T, vp.eps) == (0.1, 20.0, 1.0, 1e-3)
    t = torch.tensor([0.3, 0.9], dtype=f64)
    assert torch.equal(vp.g2(t), VPSDE(0.1, 20.0, T=1.0, eps=1e-3).g2(t))
    svp = SubVPSDE()
    assert (svp.beta_min, svp.beta_max, svp.T, svp.eps) == (0.1, 20.0, 1.0, 1e-3)
    ve = VESDE()
    assert (ve.sigma_min, ve.sigma_max, ve.T, ve.eps, ve.prior_std) == (0.01, 50.0, 1.0, 1e-5, 50.0)
    assert torch.equal(ve.sigma(t), VESDE(0.01, 50.0, T=1.0).sigma(t))
    cos = CosineVPSDE()
    assert (cos.s, cos.T, cos.eps) == (0.008, 0.9946, 1e-3)
    edm = EDMSDE()
    assert (edm.sigma_min, edm.sigma_max, edm.T, edm.eps) == (0.002, 80.0, 80.0, 0.002)


def test_solver_defaults_as_documented():
    assert DEFAULT_RTOL == DEFAULT_ATOL == 1e-5
    assert resolve_tolerances("dopri5", None, None) == (1e-5, 1e-5)
    assert resolve_tolerances("bosh3", 1e-3, None) == (1e-3, 1e-5)
    assert resolve_tolerances("rk4", None, None) == (None, None)
    assert _defaults(timesteps)["rho"] == 7.0 and _defaults(timesteps)["kind"] == "uniform"
    d = _defaults(solve_per_sample)
    assert (d["safety"], d["ifactor"], d["dfactor"], d["beta"], d["max_steps"]) == (0.9, 10.0, 0.2, (0.7, 0.4), 100_000)
    d = _defaults(sdeint)
    assert d["method"] == "euler" and d["dt"] is None and d["adaptive"] is False and d["save"] == "all"
    # dt=None: one step per interval of ts
    sde = VPSDE()
    g = Gaussian(torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    sol = sdeint(ReverseSDE(sde, g.score_fn(sde)), torch.zeros(1, 2, dtype=f64), torch.tensor([1.0, 0.5, 0.2], dtype=f64), seed=0)
    assert sol.n_steps == 2 and sol.nfe == 2
    assert CHUNK_ELEMENTS == 2**16


def test_likelihood_defaults_as_documented():
    d = _defaults(L.log_likelihood)
    assert (d["method"], d["divergence"], d["n_probes"], d["probe"], d["prior"], d["error_control"], d["n_bins"]) == (
        "dopri8", "auto", 1, "rademacher", "standard", "per_sample", 256)
    assert L.AUTO_EXACT_MAX_DIM == 16
    assert dict(L.SOLVER_TOL_FACTOR) == {"dopri8": 10.0, "dopri5_ps": 0.25, "gbs8_ps": 0.1}
    assert L._DELTA_SCALE == 2.0**-20
    for fn in (L.encode, L.decode):
        assert _defaults(fn)["method"] == "dopri5"
    dd = _defaults(L.dataset_log_likelihood)
    assert (dd["batch_size"], dd["seed"], dd["n_bins"]) == (256, 0, 256)
    # "auto" resolves by dimension: exact at D = 16, Hutchinson at D = 17
    assert L._resolve_divergence("auto", 16) == "exact" and L._resolve_divergence("auto", 17) == "hutchinson"
    # fixed-step default: 100 steps over [eps, T]
    opts = L._solver_options("rk4", None)
    grid = opts["grid_constructor"](None, None, torch.tensor([0.01, 1.0], dtype=f64))
    assert grid.shape == (101,) and torch.allclose(grid[1:] - grid[:-1], torch.full((100,), 0.99 / 100, dtype=f64), rtol=0, atol=1e-15)
    assert float(grid[0]) == 0.01 and float(grid[-1]) == 1.0
    # default tolerances of log_likelihood are the documented 1e-5 (recorded in extra)
    sde = VPSDE()
    g = Gaussian(torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    r = L.log_likelihood(sde, g.score_fn(sde), torch.zeros(1, 2, dtype=f64))
    assert r.extra["rtol"] == 1e-5 and r.extra["atol"] == 1e-5 and r.extra["eps"] == 1e-3 and r.divergence == "exact"
    assert r.extra["method"] == "dopri8"

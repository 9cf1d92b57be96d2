"""Audit value tests for sdesolve_gen.samplers.calibrate on a VP SDE with alpha(eps) far from 1.

The other calibration tests run on VE (alpha = 1), where dividing by alpha_eps, or by the
wrong alpha, is invisible. Here eps = 0.25 on VPSDE (alpha(eps) = exp(-B(0.25)/2) = 0.78, B by
hand), and the start grid, its reported error and the cost counters are checked against
independent recomputations.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import SAMPLERS

F64 = torch.float64


def test_trajectory_rmse_is_the_mean_of_per_sample_rms_in_x_over_alpha_units():
    """Bug class: a global RMS instead of the mean of per-sample RMS, a sum instead of a mean over
    coordinates, alpha not applied or squared. Oracle: the formula written per sample; control:
    the global RMS differs on this batch (errors of very different size per sample)."""
    ref = torch.zeros(3, 2, 2, dtype=F64)
    x = torch.stack([torch.full((2, 2), 0.1, dtype=F64), torch.full((2, 2), 2.0, dtype=F64),
                     torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)])
    alpha = 0.6
    per = [math.sqrt(sum(((float(v) / alpha) ** 2) for v in x[b].flatten()) / 4) for b in range(3)]
    want = sum(per) / 3
    got = S.trajectory_rmse(x, ref, alpha)
    assert got == pytest.approx(want, rel=1e-13)
    glob = float(((x / alpha) ** 2).mean().sqrt())
    assert abs(glob - want) > 0.05 * want


def test_calibration_start_grid_error_and_counters_on_vp_with_alpha_eps_not_one():
    """Bug class: the objective not divided by alpha(eps) (or by alpha(T)), lambda_T / lambda_eps
    swapped or taken from the wrong end, the softmax parameterisation of the start grid not the
    log of its normalised log-SNR increments, end points not pinned, nfe / evaluation counters
    wrong. Oracles: path_ts[0] equals timesteps(sde, n, kind="logsnr") (the uniform log-SNR grid,
    built independently by integrate.timesteps) to 1e-9; error_start equals trajectory_rmse of
    the sampler on that grid with alpha(eps) = exp(-B(eps)/2) computed by hand; each objective
    evaluation costs spec.steps_for(nfe) * (calls per step) NFE as the sampler reports."""
    pytest.importorskip("scipy")
    sde = sg.VPSDE(eps=0.25)
    data = sg.analytic.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    score = data.score_fn(sde)
    x_cal = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = S.ode(sde, score, x_cal, timesteps(sde, 1), rtol=1e-10, atol=1e-10).x
    name, nfe = "deis3", 6
    spec = SAMPLERS[name]
    res = S.calibrate_timesteps(sde, score, name, nfe, x_cal, ref=ref, max_evals=4)
    n = spec.steps_for(nfe)
    start = timesteps(sde, n, kind="logsnr")
    torch.testing.assert_close(res.path_ts[0], start, rtol=0, atol=1e-9)
    assert float(res.ts[0]) == sde.T and float(res.ts[-1]) == sde.eps and res.ts.shape == (n + 1,)
    B_eps = 0.1 * 0.25 + 0.5 * (20.0 - 0.1) * 0.25**2
    alpha_e = math.exp(-0.5 * B_eps)
    assert alpha_e < 0.8
    sol = spec(sde, score, x_cal, res.path_ts[0])
    assert res.error_start == pytest.approx(S.trajectory_rmse(sol.x, ref, alpha_e), rel=1e-9)
    assert res.error_start != pytest.approx(S.trajectory_rmse(sol.x, ref, 1.0), rel=1e-3)
    assert res.nfe_search == res.evaluations * sol.nfe and res.nfe_reference == 0
    assert res.nfe_total == res.nfe_search and res.evaluations >= 1
    assert res.error_calibrated <= res.error_start
    k = [i for i, g in enumerate(res.path_ts) if torch.equal(g, res.ts)]
    assert k and res.error_calibrated == pytest.approx(
        S.trajectory_rmse(spec(sde, score, x_cal, res.ts).x, ref, alpha_e), rel=1e-9)
    # a start grid with unequal log-SNR increments (EDM's) is reproduced exactly too
    edm = S.calibrate_timesteps(sde, score, name, nfe, x_cal[:8], ref=ref[:8], max_evals=1, start="edm")
    torch.testing.assert_close(edm.path_ts[0], timesteps(sde, n, kind="edm"), rtol=0, atol=1e-9)

"""calibrate_timesteps(start=...): the search starts from the best named grid on the calibration set."""

import pytest
import torch
from _sampler_configs import F64, target

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import SAMPLERS


def test_calibration_starts_from_the_best_named_grid():
    pytest.importorskip("scipy")
    sde, data = sg.VESDE(sigma_min=0.01, sigma_max=20.0), target()
    score = data.score_fn(sde)
    x_cal = data.prior(sde).sample(100, generator=torch.Generator().manual_seed(7), dtype=F64)
    ref = S.ode(sde, score, x_cal, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
    spec = SAMPLERS["deis3"]
    errs = {k: S.trajectory_rmse(spec(sde, score, x_cal, timesteps(sde, 6, kind=k)).x, ref, 1.0) for k in ("logsnr", "edm")}
    res = S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref, max_evals=5, start=("logsnr", "edm"))
    assert res.error_start == pytest.approx(min(errs.values()), rel=1e-9)
    assert res.error_calibrated <= res.error_start
    one = S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref, max_evals=5, start="edm")
    assert one.error_start == pytest.approx(errs["edm"], rel=1e-9)
    for bad in ((), (1,)):
        with pytest.raises(ValueError, match="start"):
            S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref, start=bad)


def _paired(e_new, e_old):
    """Mean and standard error of the per-sample improvement ``e_old - e_new`` (``(B,)`` tensors)."""
    d = e_old - e_new
    return float(d.mean()), float(d.std() / d.numel() ** 0.5)


def test_calibrated_third_order_grid_improves_held_out_error():
    """UniPC-3 (bh2)'s calibrated 10-NFE grid, on held-out noise, against its start grid (the better
    of logsnr / edm on the calibration set), 60 objective evaluations on 100 calibration samples.

    Budget: the per-sample improvement ``e_start,b - e_cal,b`` of 300 held-out samples has a
    paired Monte-Carlo standard error SE (the dopri5 1e-7 references' own error,
    <= 1e-5 per sample against a 1e-10 solve, is far below the 10-NFE errors ~1e-2); the check is mean improvement > 5 SE (and > 0.2 x the
    start error, so a real gain, not a tie). Control: the same check rejects a grid with the start's
    end points and jittered log-SNR increments (softmax(u_start + N(0, 0.5^2))).
    """
    pytest.importorskip("scipy")
    name = "unipc_bh2_3"
    sde, data = sg.VESDE(sigma_min=0.01, sigma_max=20.0), target()
    score = data.score_fn(sde)
    x_cal = data.prior(sde).sample(100, generator=torch.Generator().manual_seed(20), dtype=F64)
    x_ho = data.prior(sde).sample(300, generator=torch.Generator().manual_seed(21), dtype=F64)
    spec = SAMPLERS[name]
    n = spec.steps_for(10)
    ref_cal = S.ode(sde, score, x_cal, timesteps(sde, 1), rtol=1e-7, atol=1e-7).x
    res = S.calibrate_timesteps(sde, score, name, 10, x_cal, ref=ref_cal, max_evals=60, start=("logsnr", "edm"))
    ref = S.ode(sde, score, x_ho, timesteps(sde, 1), rtol=1e-7, atol=1e-7).x

    def per_sample(ts):
        return ((spec(sde, score, x_ho, ts).x - ref) ** 2).mean(1).sqrt()

    cal_errs = {k: S.trajectory_rmse(spec(sde, score, x_cal, timesteps(sde, n, kind=k)).x, ref_cal, 1.0)
                for k in ("logsnr", "edm")}
    kind = min(cal_errs, key=cal_errs.__getitem__)
    ts0 = timesteps(sde, n, kind=kind)
    e0 = per_sample(ts0)
    gain, se = _paired(per_sample(res.ts), e0)
    assert gain > 5 * se and gain > 0.2 * float(e0.mean()), (name, kind, float(e0.mean()), gain, se)
    # negative control: jittered increments of the start grid in log-SNR, same end points
    lam0 = sde.half_log_snr(ts0)
    inc = torch.log(lam0[1:] - lam0[:-1]) + 0.5 * torch.randn(n, generator=torch.Generator().manual_seed(22), dtype=F64)
    w = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(torch.softmax(inc, 0), 0)])
    ts_j = sde.t_of_lambda(lam0[0] + (lam0[-1] - lam0[0]) * w)
    ts_j[0], ts_j[-1] = sde.T, sde.eps
    gain_j, se_j = _paired(per_sample(ts_j), e0)
    assert not (gain_j > 5 * se_j and gain_j > 0.2 * float(e0.mean())), (gain_j, se_j)

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


# ------------------------------------------------------------------ held-out validation (early stopping)

_VE = sg.VESDE(sigma_min=0.01, sigma_max=20.0)


def _batch(sde, n, seed):
    return target().prior(sde).sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _per_sample(spec, sde, score, x, ts, ref):
    return ((spec(sde, score, x, ts).x - ref) ** 2).mean(1).sqrt()


def test_validation_set_stops_an_overfitting_search_at_the_start():
    """DPM-Solver++(3M), 12 NFE, VE, on ONE calibration sample: the search fits it (calibration
    error 0.009 -> 0.0004 in 90 evaluations) and loses on held-out noise; with a 50-sample validation set
    the returned grid is never worse than the start on validation (by construction: the start is on
    the path) and here is the start itself, so it does not lose on held-out noise either.

    Budget: on 200 held-out samples (independent of both sets) the per-sample difference
    ``e_cal-only,b - e_start,b`` has a paired Monte-Carlo standard error SE; "worse" means mean
    difference > 3 SE, "not worse" means mean difference <= 3 SE (the dopri5 1e-9 references' own
    error, ~1e-8, is far below the 12-NFE errors ~1e-2). The check that accepts the validated grid
    rejects the calibration-only grid (the negative control)."""
    pytest.importorskip("scipy")
    sde, name, nfe = _VE, "dpm_solver_pp_3m", 12
    score, spec = target().score_fn(sde), SAMPLERS[name]
    x_cal, x_val, x_ho = _batch(sde, 1, 50), _batch(sde, 50, 51), _batch(sde, 200, 52)
    ref_cal, ref_val, ref_ho = (S.ode(sde, score, x, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
                                for x in (x_cal, x_val, x_ho))
    kw = dict(ref=ref_cal, max_evals=90)
    only = S.calibrate_timesteps(sde, score, name, nfe, x_cal, **kw)
    val = S.calibrate_timesteps(sde, score, name, nfe, x_cal, x_T_val=x_val, ref_val=ref_val, **kw)
    assert only.error_calibrated < 0.5 * only.error_start  # the search fits the three samples ...
    assert only.error_start_val is None and only.error_calibrated_val is None
    assert val.error_calibrated_val <= val.error_start_val
    e_start_val = S.trajectory_rmse(spec(sde, score, x_val, timesteps(sde, nfe, kind="logsnr")).x, ref_val, 1.0)
    assert val.error_start_val == pytest.approx(e_start_val, rel=1e-12)
    assert val.error_calibrated_val == pytest.approx(
        S.trajectory_rmse(spec(sde, score, x_val, val.ts).x, ref_val, 1.0), rel=1e-12)
    e0 = _per_sample(spec, sde, score, x_ho, timesteps(sde, nfe, kind="logsnr"), ref_ho)

    def worse(ts):
        d = _per_sample(spec, sde, score, x_ho, ts, ref_ho) - e0
        return float(d.mean()) > 3 * float(d.std() / d.numel() ** 0.5)

    assert worse(only.ts)  # ... and loses on held-out noise
    assert not worse(val.ts)


def test_validated_grid_is_the_path_point_best_on_validation():
    """UniPC-2 (bh2), 6 NFE, VE, one calibration sample, 190 evaluations: three Powell iterations.
    Value check: every recorded validation error equals an independent sampler run on the recorded
    grid, the returned grid is the path's arg-min on validation (here an interior point: neither
    the start nor the last iterate), and the cost fields add up."""
    pytest.importorskip("scipy")
    sde, name, nfe = _VE, "unipc_bh2_2", 6
    score, spec = target().score_fn(sde), SAMPLERS[name]
    x_cal, x_val = _batch(sde, 1, 50), _batch(sde, 100, 51)
    ref_val = S.ode(sde, score, x_val, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
    res = S.calibrate_timesteps(sde, score, name, nfe, x_cal, max_evals=190, x_T_val=x_val, ref_val=ref_val)
    assert len(res.path) == len(res.path_ts) >= 4
    e_val = [S.trajectory_rmse(spec(sde, score, x_val, ts).x, ref_val, 1.0) for ts in res.path_ts]
    for (_, _, recorded), direct in zip(res.path, e_val):
        assert recorded == pytest.approx(direct, rel=1e-12)
    k = min(range(len(e_val)), key=e_val.__getitem__)
    assert 0 < k < len(e_val) - 1 and e_val[k] < 0.95 * e_val[-1]  # the case has an interior minimum
    assert torch.equal(res.ts, res.path_ts[k])
    assert res.error_calibrated_val == pytest.approx(e_val[k], rel=1e-12)
    assert res.error_calibrated == res.path[k][1]
    cal = [c for _, c, _ in res.path]
    assert all(b <= a for a, b in zip(cal, cal[1:]))  # Powell never raises the calibration error
    assert res.evaluations_val == len(res.path) and res.nfe_validation == res.evaluations_val * nfe
    assert res.nfe_reference > 0  # the calibration reference was solved here (ref not given)
    assert res.nfe_total == res.nfe_reference + res.nfe_search + res.nfe_validation


def test_validation_arguments_are_checked():
    sde = _VE
    score = target().score_fn(sde)
    x_cal, x_val = _batch(sde, 4, 50), _batch(sde, 6, 51)
    ref = torch.zeros_like(x_cal)
    cases = [
        (dict(x_T_val=torch.zeros(6, 3, dtype=F64)), "x_T_val has per-sample shape"),
        (dict(x_T_val=x_val.float()), "x_T_val is torch.float32"),
        (dict(x_T_val=x_val, ref_val=torch.zeros(5, 2, dtype=F64)), "ref_val has shape"),
        (dict(x_T_val=x_val, ref_val=torch.zeros(6, 2)), "ref_val is torch.float32"),
        (dict(ref_val=torch.zeros_like(x_val)), "ref_val was given without x_T_val"),
        (dict(x_T_val=torch.zeros(0, 2, dtype=F64)), "x_T_val must hold at least one sample"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref, **kw)
    with pytest.raises(TypeError, match="x_T_val"):
        S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref, x_T_val=x_val.numpy())
    with pytest.raises(ValueError, match="ref has shape"):
        S.calibrate_timesteps(sde, score, "deis3", 6, x_cal, ref=ref[:3])

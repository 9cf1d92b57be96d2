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

"""Value tests for the four bugs that survived planted-bug run 6 (each verified to fail with the
bug applied): the adaptive DPM-Solver++-12 midpoint, ``calibrate_timesteps``' evaluation cap,
``decode``'s ``eps``, and ``load_verified``'s refusal of arbitrary pickles."""

import math

import pytest
import torch
from _sampler_configs import F64, target

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.checkpoints import atomic_save, load_verified
from sdesolve_gen.integrate import timesteps


def test_dpm_solver_adaptive_12_replays_its_accepted_grid_by_hand():
    """Bug class: a wrong coefficient of the order-2 pair's midpoint stage (e.g. ``expm1(-h)``
    for ``expm1(-h/2)``) that the step controller then silently accepts. Oracle: the accepted
    log-SNR grid the solver chose (non-uniform) replayed with the pair written from the module
    docstring: u = (sigma_m/sigma_t) x - alpha_m (e^{-h/2} - 1) m0, x <- (sigma_s/sigma_t) x -
    alpha_s (e^{-h} - 1) x0(u). Agreement 1e-10 relative (float64). Control: the same replay with
    the midpoint at the full step differs by > 1e-4."""
    sde, data = sg.VPSDE(), target()
    score = data.score_fn(sde)
    x_T = data.prior(sde).sample(32, generator=torch.Generator().manual_seed(3), dtype=F64)
    sol = S.dpm_solver_adaptive(sde, score, x_T, timesteps(sde, 1), order=2, rtol=0.01, atol=0.01)
    lams = sol.extra["lambdas"]
    hs = [b - a for a, b in zip(lams, lams[1:])]
    assert len(hs) >= 5 and max(hs) / min(hs) > 1.5

    def coef(lam, end=None):
        t = torch.tensor([sde.eps if end else lam], dtype=F64)
        if not end:
            t = sde.t_of_lambda(t).clamp(sde.eps, sde.T)
        return t, math.exp(float(sde.log_alpha(t))), math.sqrt(float(sde.sigma2(t)))

    def x0(x, t, a, s):
        return (x + s * s * score(x, t.expand(x.shape[0]))) / a

    def replay(mid_fraction):
        tT = torch.tensor([sde.T], dtype=F64)
        a_t, s_t = math.exp(float(sde.log_alpha(tT))), math.sqrt(float(sde.sigma2(tT)))
        x, t = x_T, tT
        for j, h in enumerate(hs):
            m0 = x0(x, t, a_t, s_t)
            tm, am, sm = coef(lams[j] + 0.5 * h)
            u = (sm / s_t) * x - am * math.expm1(-mid_fraction * h) * m0
            t, a_s, s_s = coef(lams[j + 1], end=j == len(hs) - 1)
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * x0(u, tm, am, sm)
            a_t, s_t = a_s, s_s
        return x

    good = replay(0.5)
    assert float((sol.x - good).norm() / good.norm()) < 1e-10
    assert float((replay(1.0) - good).norm() / good.norm()) > 1e-4


def test_calibration_stops_at_its_evaluation_cap():
    """Bug class: ``max_evals`` not passed on to the optimiser (its own default used instead).
    Oracle: the documented contract, at most ``max_evals`` objective evaluations, each one run of
    the sampler (``nfe_search = evaluations * nfe``). Control: a cap of 60 lets the same search
    run longer, so the cap of 12 is what stopped it."""
    sde, data = sg.VESDE(sigma_min=0.01, sigma_max=20.0), target()
    score = data.score_fn(sde)
    x = data.prior(sde).sample(64, generator=torch.Generator().manual_seed(1), dtype=F64)
    small = S.calibrate_timesteps(sde, score, "dpm_solver_pp_2m", 6, x, max_evals=12)
    assert small.evaluations <= 12 and small.nfe_search == small.evaluations * 6
    large = S.calibrate_timesteps(sde, score, "dpm_solver_pp_2m", 6, x, max_evals=60)
    assert large.evaluations > 12


def test_decode_honours_eps_like_encode():
    """Bug class: ``decode``'s ``eps`` not passed on (it always ends at ``sde.eps``). Oracle: the
    flow is invertible, so decode(encode(x, eps=0.3), eps=0.3) returns x (tolerance 1e-5 at
    rtol = atol = 1e-8); the flow to the default eps lands elsewhere (control: differs by > 1e-2)."""
    sde, data = sg.VPSDE(), target()
    score = data.score_fn(sde)
    x = data.marginal(0.3, sde).sample(16, generator=torch.Generator().manual_seed(2), dtype=F64)
    z = sg.encode(sde, score, x, eps=0.3, rtol=1e-8, atol=1e-8)
    back = sg.decode(sde, score, z, eps=0.3, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    default = sg.decode(sde, score, z, rtol=1e-8, atol=1e-8)
    assert float((default - x).abs().max()) > 1e-2


class _NotAllowed:
    """A class ``torch.load(weights_only=True)`` does not allow-list."""

    def __init__(self) -> None:
        self.value = 3


def test_load_verified_refuses_a_pickle_of_an_arbitrary_class(tmp_path):
    """Bug class: the payload unpickled with ``weights_only=False`` (untrusted files can run
    code). Oracle: the documented contract, a ValueError naming the file for a payload that
    ``weights_only=True`` cannot load, although its digest is intact. Control: a plain
    state dict in the same format loads."""
    bad = atomic_save({"x": _NotAllowed()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_verified(bad)
    ok = atomic_save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_verified(ok)["w"], torch.ones(2))

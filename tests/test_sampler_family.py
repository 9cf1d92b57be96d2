"""Every sampler against the analytic mixture: moments, mode occupancy, orders, determinism.

Budgets. Each sampler at its test configuration (``_sampler_configs.CONFIGS``) has a
discretisation bias in the mean, the variance and the mode occupancy. It was measured once with
200k samples by ``tests/_measure_sampler_bias.py`` and is stored in ``BIAS`` as
``|measured| + 2 * (its standard error)``. A test draws N=10000 samples from the EXACT prior and
accepts if ``|error| <= bias + 5 * SE(N)`` for every coordinate and component. The negative
control runs the same sampler with the score of a mixture whose means are shifted by 0.5 and must
fail the same check.
"""

import math

import numpy as np
import pytest
import torch
from _sampler_configs import BIAS, CONFIGS, F64, run, stats, target

import sdesolve_gen as sg
from sdesolve_gen import correctors as C
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps

N = 10000


def passes(name, data_for_score, n=N, seed=0):
    data = target()
    sde = CONFIGS[name][0]
    sol = run(name, data_for_score, n, seed)
    x, info = sol.x, sol
    m, v, o = stats(data, sde, x)
    ref = data.marginal(sde.eps, sde)
    var = torch.diagonal(ref.cov)
    bm, bv, bo = (torch.tensor(b, dtype=F64) for b in BIAS[name])
    ok_m = (m.abs() <= bm + 5 * torch.sqrt(var / n)).all()
    ok_v = (v.abs() <= bv + 5 * var * math.sqrt(2 / n)).all()
    w = data.weights
    ok_o = (o.abs() <= bo + 5 * torch.sqrt(w * (1 - w) / n)).all()
    return bool(ok_m and ok_v and ok_o), info


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampler_matches_data_and_rejects_wrong_score(name):
    ok, info = passes(name, target())
    assert ok, f"{name} failed its moment/occupancy budget"
    assert info.nfe > 0
    wrong = target()
    wrong = sg.analytic.GaussianMixture(wrong.means + 0.5, wrong.covs, wrong.weights)
    bad, _ = passes(name, wrong)
    assert not bad, f"{name}: the wrong score was not rejected"


SEEDED = {
    "euler_maruyama": S.euler_maruyama,
    "reverse_diffusion": S.reverse_diffusion,
    "ancestral": S.ancestral,
    "ode": S.ode,
    "heun": S.heun,
    "dpm_solver": S.dpm_solver,
    "dpm_solver_pp_2m": S.dpm_solver_pp_2m,
    "adaptive_sde": S.adaptive_sde,
    "predictor_corrector": C.predictor_corrector,
    "annealed_langevin": C.annealed_langevin,
}


@pytest.mark.parametrize("name", list(SEEDED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_seed_bit_identical(name, dtype):
    sde, data = sg.VESDE(sigma_max=20.0), target()
    x_T = data.prior(sde).sample(64, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ts = timesteps(sde, 8)
    sol = SEEDED[name](sde, data.score_fn(sde), x_T, ts, generator=torch.Generator().manual_seed(5))
    a = sol.x
    sol = SEEDED[name](sde, data.score_fn(sde), x_T, ts, generator=torch.Generator().manual_seed(5))
    b = sol.x
    assert a.dtype == dtype and a.shape == x_T.shape
    assert torch.equal(a, b)
    if name not in ("ode", "heun", "dpm_solver", "dpm_solver_pp_2m"):  # stochastic samplers
        sol = SEEDED[name](sde, data.score_fn(sde), x_T, ts, generator=torch.Generator().manual_seed(6))
        c = sol.x
        assert not torch.equal(a, c)


# The order test of every registered deterministic fixed-step sampler (driven by the registry,
# declared order vs measured slope) is tests/test_multistep.py::test_registered_deterministic_sampler_has_its_declared_order.


def test_em_weak_order_one_on_a_gaussian_exactly():
    """For a Gaussian target the reverse EM chain is linear, so its law is computable exactly.

    Propagate mean and covariance through x' = x + h (g^2 s - a x) + g sqrt(h) z with the exact
    (affine) score; the error of the final covariance vs the true one at eps falls like h:
    fitted slope in [0.85, 1.15]. No Monte-Carlo error is involved.
    """
    sde = sg.VPSDE()
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    S0 = torch.tensor([[0.4, 0.1], [0.1, 0.3]], dtype=F64)
    lam, U = torch.linalg.eigh(S0)
    errs, hs = [], []
    for n in (50, 100, 200, 400):
        ts = timesteps(sde, n)
        m = float(sde.alpha(sde.T)) * mu
        P = float(sde.alpha(sde.T)) ** 2 * S0 + float(sde.sigma(sde.T)) ** 2 * torch.eye(2, dtype=F64)
        for i in range(n):
            t, h = ts[i], float(ts[i] - ts[i + 1])
            a, s2 = float(sde.alpha(t)), float(sde.sigma(t)) ** 2
            prec = U @ torch.diag(1 / (a * a * lam + s2)) @ U.T  # score = -prec (x - a mu)
            g2, fa = float(sde.g2(t)), float(sde.drift_coef(t))
            A = torch.eye(2, dtype=F64) + h * (-g2 * prec - fa * torch.eye(2, dtype=F64))
            b = h * g2 * prec @ (a * mu)
            m = A @ m + b
            P = A @ P @ A.T + g2 * h * torch.eye(2, dtype=F64)
        truth = float(sde.alpha(ts[-1])) ** 2 * S0 + float(sde.sigma(ts[-1])) ** 2 * torch.eye(2, dtype=F64)
        errs.append(float((P - truth).abs().max()))
        hs.append(1.0 / n)
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert 0.85 <= slope <= 1.15, (slope, errs)


def test_adaptive_sde_tolerance_controls_work():
    sde, data = sg.VPSDE(), target()
    x_T = data.prior(sde).sample(500, generator=torch.Generator().manual_seed(0), dtype=F64)
    nfes = []
    for tol in (1e-1, 3e-2, 1e-2):
        sol = S.adaptive_sde(sde, data.score_fn(sde), x_T, timesteps(sde, 1), rtol=tol, atol=tol,
                                 generator=torch.Generator().manual_seed(1))
        _, info = sol.x, sol
        nfes.append(info.nfe)
        assert info.nfe == 2 * (info.n_steps + info.n_rejected)
    assert nfes[0] < nfes[1] < nfes[2]


def test_denoise_is_one_tweedie_step():
    sde, data = sg.VPSDE(), target()
    x_T = data.prior(sde).sample(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = timesteps(sde, 10, kind="logsnr")
    sol = S.dpm_solver(sde, data.score_fn(sde), x_T, ts, order=2)
    x, info = sol.x, sol
    sol = S.dpm_solver(sde, data.score_fn(sde), x_T, ts, order=2, denoise=True)
    xd, infod = sol.x, sol
    assert infod.nfe == info.nfe + 1
    assert torch.allclose(xd, S.tweedie_denoise(sde, data.score_fn(sde), x, sde.eps))


def test_image_shaped_states():
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(torch.zeros(64), 0.5 * torch.eye(64), event_shape=(1, 8, 8))
    x_T = sde.prior_sample((4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=F64)
    for f in SEEDED.values():
        sol = f(sde, data.score_fn(sde), x_T, timesteps(sde, 4), generator=torch.Generator().manual_seed(0))
        x = sol.x
        assert x.shape == (4, 1, 8, 8)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda s, f, x, ts: S.euler_maruyama(s, f, x, ts.flip(0)), ValueError, "decreasing"),
        (lambda s, f, x, ts: S.euler_maruyama(s, f, x, torch.tensor([2.0, 0.5])), ValueError, r"\(0, T\]"),
        (lambda s, f, x, ts: S.euler_maruyama(s, f, x, torch.tensor([1.0, 0.0])), ValueError, r"\(0, T\]"),
        (lambda s, f, x, ts: S.heun(s, f, x * float("nan"), ts), ValueError, "x_T"),
        (lambda s, f, x, ts: S.heun(s, f, x[0], ts), ValueError, "x_T"),
        (lambda s, f, x, ts: S.ode(s, f, x, ts, method="rk45"), ValueError, "method"),
        (lambda s, f, x, ts: S.dpm_solver(s, f, x, ts, order=4), ValueError, "order"),
        (lambda s, f, x, ts: S.adaptive_sde(s, f, x, ts, rtol=0.0), ValueError, "rtol"),
        (lambda s, f, x, ts: C.predictor_corrector(s, f, x, ts, predictor="heun"), ValueError, "predictor"),
        (lambda s, f, x, ts: C.predictor_corrector(s, f, x, ts, corrector="hmc"), ValueError, "corrector"),
        (lambda s, f, x, ts: C.predictor_corrector(s, f, x, ts, snr=-1.0), ValueError, "snr"),
        (lambda s, f, x, ts: C.annealed_langevin(s, f, x, ts, step_lr=1.0), ValueError, "step_lr"),
        (lambda s, f, x, ts: C.annealed_langevin(s, f, x, ts, n_steps_each=0), ValueError, "n_steps_each"),
        (lambda s, f, x, ts: S.euler_maruyama("vp", f, x, ts), TypeError, "sde"),
        (lambda s, f, x, ts: S.euler_maruyama(s, f, x, ts, generator=0), TypeError, "generator"),
        (lambda s, f, x, ts: S.euler_maruyama(s, lambda x, t: x * float("nan"), x, ts), sg.NonFiniteError, "t=1"),
    ],
)
def test_bad_inputs(call, exc, match):
    sde = sg.VPSDE()
    x = torch.zeros(4, 2)
    with pytest.raises(exc, match=match):
        call(sde, lambda x, t: -x, x, timesteps(sde, 4))

"""sdeint / odeint / timesteps: exactness on the analytic oracles, reproducibility, safety."""

import math

import numpy as np
import pytest
import torch
import torchdiffeq
from _sampler_configs import target

import sdesolve_gen as sg
from sdesolve_gen.integrate import GridBrownian, odeint, sdeint, t_of_lambda, timesteps

F64 = torch.float64


def gmm():
    return target()


# ---------------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("kind", ["uniform", "logsnr", "edm"])
@pytest.mark.parametrize("sde", [sg.VPSDE(), sg.VESDE(), sg.SubVPSDE(), sg.EDMSDE()], ids=repr)
def test_timesteps_monotone_with_exact_endpoints(kind, sde):
    ts = timesteps(sde, 20, kind=kind)
    assert ts.dtype == F64 and ts.shape == (21,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps
    assert bool((ts[1:] < ts[:-1]).all())


def test_logsnr_grid_is_uniform_in_lambda():
    sde = sg.VPSDE()
    ts = timesteps(sde, 10, kind="logsnr")
    lam = 0.5 * sde.log_snr(ts)
    steps = lam[1:] - lam[:-1]
    assert torch.allclose(steps, steps.mean().expand(10), rtol=1e-9)
    # t_of_lambda inverts lambda (closed form check for VP)
    t = t_of_lambda(sde, lam)
    assert torch.allclose(t, ts, atol=1e-12)
    # control: a uniform grid is far from uniform in lambda
    lam_u = 0.5 * sde.log_snr(timesteps(sde, 10))
    du = lam_u[1:] - lam_u[:-1]
    assert float(du.max() / du.min()) > 5


def test_edm_grid_matches_rho_formula_for_edm_sde():
    sde = sg.EDMSDE(sigma_min=0.002, sigma_max=80.0)
    ts = timesteps(sde, 8, kind="edm", rho=7.0)
    i = torch.arange(9, dtype=F64)
    ref = (80 ** (1 / 7) + i / 8 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(ts, ref, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n=0), ValueError, "n must be"),
        (dict(n=5, kind="cosine"), ValueError, "kind"),
        (dict(n=5, eps=2.0), ValueError, "eps"),
        (dict(n=5, eps=-1e-3), ValueError, "eps"),
        (dict(n=2.5), TypeError, "n must be"),  # a float is the wrong type (bools too)
    ],
)
def test_timesteps_bad_args(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        timesteps(sg.VPSDE(), **kwargs)


# ---------------------------------------------------------------------------------- sdeint


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_reverse_sdeint_any_shape(shape):
    sde = sg.VPSDE()
    D = math.prod(shape)
    data = sg.analytic.Gaussian(torch.zeros(D), 0.5 * torch.eye(D), event_shape=shape)
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x_T = sde.prior_sample((6, *shape), generator=torch.Generator().manual_seed(0))
    ts = timesteps(sde, 50)
    info = sdeint(rsde, x_T, ts, seed=0)
    xs = info.ys
    assert xs.shape == (51, 6, *shape) and torch.equal(xs[0], x_T)
    assert info.nfe == 50 and info.n_steps == 50  # exactly one score call per Euler step
    assert rsde.data_shape is None  # the object is left as it was


def test_same_seed_bit_identical_and_different_seeds_differ():
    sde, data = sg.VPSDE(), gmm()
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(50, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = timesteps(sde, 40)
    for method, obj in [("euler", rsde), ("srk", rsde), ("heun", sg.ReverseSDE(sde, data.score_fn(sde), sde_type="stratonovich"))]:
        a = sdeint(obj, x_T, ts, method=method, seed=3).ys
        b = sdeint(obj, x_T, ts, method=method, generator=torch.Generator().manual_seed(3)).ys
        c = sdeint(obj, x_T, ts, method=method, seed=3).ys
        d = sdeint(obj, x_T, ts, method=method, seed=4).ys
        assert torch.equal(a, c), method
        assert not torch.equal(a[-1], d[-1]), method
        assert b.shape == a.shape


def test_milstein_equals_euler_on_additive_noise_and_srk_differs():
    """The reverse SDE's g depends on t only, so Milstein's correction g g' vanishes: on the same
    GridBrownian path it must reproduce Euler-Maruyama bit for bit. Control: srk (a different
    scheme on a BrownianInterval) does not."""
    sde, data = sg.VPSDE(), gmm()
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(30, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = timesteps(sde, 30)
    em = sdeint(rsde, x_T, ts, seed=2).ys
    assert torch.equal(sdeint(rsde, x_T, ts, method="milstein", seed=2).ys, em)
    assert not torch.equal(sdeint(rsde, x_T, ts, method="srk", seed=2).x, em[-1])


def test_grid_brownian_increments_are_standard():
    """Increments: mean 0, variance h (chi-square on N*d draws), uncorrelated across steps.

    Budget: z-tests at 5 sigma on 20000x2 draws per step; the control is a path whose scale is
    off by 3% (variance 1.06 h), which the same variance test rejects.
    """
    grid = torch.tensor([0.0, 0.1, 0.35, 0.4], dtype=F64)
    bm = GridBrownian(grid, (20000, 2), dtype=F64, generator=torch.Generator().manual_seed(0))
    incs = [bm(grid[j], grid[j + 1]) for j in range(3)]
    n = incs[0].numel()
    for h, w in zip((0.1, 0.25, 0.05), incs):
        assert abs(float(w.mean())) < 5 * math.sqrt(h / n)
        assert abs(float(w.var()) / h - 1) < 5 * math.sqrt(2 / n)
        assert abs(float((1.03 * w).var()) / h - 1) > 5 * math.sqrt(2 / n)
    corr = float((incs[0] * incs[1]).mean() / math.sqrt(0.1 * 0.25))
    assert abs(corr) < 5 / math.sqrt(n)
    with pytest.raises(ValueError, match="grid interval"):
        bm(0.05, 0.1)


def test_reverse_euler_recovers_data_moments():
    """Reverse EM from the exact prior, 500 steps, 10000 samples (float64).

    Budget: EM bias of this mixture's moments at 500 steps, measured once with 200k samples
    (tests/_measure_em_bias.py: 20 seeded chunks of 10k through this same call): mean bias (-0.0006 +- 0.0037,
    0.0002 +- 0.0029), variance bias (0.008 +- 0.009, 0.002 +- 0.005). Allowed bias = measured +
    2 SE of that measurement: 0.01 (mean), 0.03 (variance). MC: 5 standard errors at N=10000.
    Control: the score of the data shifted by +0.3 is rejected by the same test.
    """
    sde, data = sg.VPSDE(), gmm()
    g = torch.Generator().manual_seed(0)
    x_T = data.prior(sde).sample(10000, generator=g, dtype=F64)
    ts = timesteps(sde, 500)

    def check(score_fn):
        x = sdeint(sg.ReverseSDE(sde, score_fn), x_T, ts[[0, -1]], dt=float(ts[0] - ts[-1]) / 500, seed=1).x
        var = torch.diagonal(data.cov)
        mean_ok = ((x.mean(0) - data.mean).abs() <= 0.01 + 5 * torch.sqrt(var / x.shape[0])).all()
        var_ok = ((x.var(0) - var).abs() <= 0.03 + 5 * var * math.sqrt(2 / x.shape[0])).all()
        return bool(mean_ok and var_ok)

    assert check(data.score_fn(sde))
    shifted = sg.analytic.GaussianMixture(data.means + 0.3, data.covs, data.weights)
    assert not check(shifted.score_fn(sde))


def test_em_strong_order_on_additive_noise():
    """Strong error of EM vs a fine reference on the same Brownian path; fitted slope ~ 1.

    For additive noise (g depends on t only) EM has strong order 1. The coarse paths are built
    from the fine path's increments (sums), so every solve shares one Brownian path. Band: the
    fitted log-log slope must be in [0.8, 1.25] (diffrax-style order test).
    """
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([[0.4, 0.1], [0.1, 0.3]]))
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(400, generator=torch.Generator().manual_seed(0), dtype=F64)
    n_fine = 2048
    fine = timesteps(sde, n_fine)
    us = rsde.solver_times(fine)
    bm = GridBrownian(us, (400, 2), dtype=F64, generator=torch.Generator().manual_seed(1))
    incs = torch.stack([bm(us[j], us[j + 1]) for j in range(n_fine)])

    def solve(k):
        grid = fine[::k]
        u = rsde.solver_times(grid)
        w = incs.reshape(n_fine // k, k, 400, 2).sum(1)
        lookup = {(float(u[j]), float(u[j + 1])): w[j] for j in range(len(grid) - 1)}

        class PathBM(GridBrownian):
            def __call__(self, ta, tb=None, return_U=False, return_A=False):
                return lookup[(float(ta), float(tb))]

        pb = PathBM(u, (400, 2), dtype=F64)
        return sdeint(rsde, x_T, grid, bm=pb).x

    ref = solve(1)
    ks = [64, 32, 16, 8]
    errs = [float((solve(k) - ref).norm(dim=1).mean()) for k in ks]
    h = [k / n_fine for k in ks]
    slope = np.polyfit(np.log(h), np.log(errs), 1)[0]
    assert 0.8 <= slope <= 1.25, (slope, errs)


def _em_forward_moments(sde, mean0, var0, h, n):
    """Per-dimension mean / variance of the forward EM chain x <- (1 + a_j h) x + sqrt(g2_j h) z.

    The SDE is linear, so the EM law's first two moments follow this deterministic recursion;
    ``|EM moments - exact moments|`` is then the exact discretisation bias of the test below.
    """
    t = torch.arange(n, dtype=F64) * h
    a, g2 = sde.drift_coef(t), sde.diffusion2(t)
    m, v = mean0.clone(), var0.clone()
    out = {}
    for j in range(n):
        m, v = (1 + a[j] * h) * m, (1 + a[j] * h) ** 2 * v + g2[j] * h
        out[round((j + 1) * h, 9)] = (m, v)
    return out


def test_forward_sdeint_marginals_match_exact_p_t():
    """Forward EM (VP, dt=0.01) from exact p_0 samples; moments at t = 0.1, 0.5, 1 vs data.marginal.

    Budget per dimension: computed EM bias (moment recursion of the linear SDE, see
    ``_em_forward_moments``) + 5 Monte-Carlo standard errors at N=20000 (the variance SE uses the
    sample fourth moment, since p_t is a mixture, not a Gaussian). Control: the same samples
    simulated under a wrong schedule (VP with beta_max=10) are rejected by the same check.
    """
    data, N, h = gmm(), 20000, 0.01
    x0 = data.sample(N, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=F64)
    sde = sg.VPSDE()
    em = _em_forward_moments(sde, data.mean.to(F64), torch.diagonal(data.cov).to(F64), h, 100)

    def check(sim_sde):
        xs = sdeint(sim_sde, x0, ts, dt=h, seed=1).ys
        ok = []
        for k, t in enumerate(ts[1:].tolist(), start=1):
            p_t = data.marginal(t, sde)
            mean, var = p_t.mean.to(F64), torch.diagonal(p_t.cov).to(F64)
            m_em, v_em = em[round(t, 9)]
            x = xs[k]
            c = x - x.mean(0)
            se_m = torch.sqrt(x.var(0) / N)
            se_v = torch.sqrt(((c**4).mean(0) - x.var(0) ** 2) / N)
            ok.append(bool(((x.mean(0) - mean).abs() <= (m_em - mean).abs() + 5 * se_m).all()))
            ok.append(bool(((x.var(0) - var).abs() <= (v_em - var).abs() + 5 * se_v).all()))
        return all(ok)

    assert sdeint(sde, x0[:5], ts, dt=h, seed=1).ys.shape == (4, 5, 2)
    assert check(sde)
    assert not check(sg.VPSDE(beta_max=10.0))


def test_grid_brownian_is_additive_like_torchsde_asks():
    """torchsde may query W(t_j, t_k) over several grid steps: it must equal the sum of the steps."""
    grid = torch.tensor([0.0, 0.1, 0.35, 0.4, 1.0], dtype=F64)
    a = GridBrownian(grid, (7, 3), dtype=F64, generator=torch.Generator().manual_seed(5))
    b = GridBrownian(grid, (7, 3), dtype=F64, generator=torch.Generator().manual_seed(5))
    w02 = a(grid[0], grid[2])
    w24 = a(grid[2], grid[4])
    s = [b(grid[j], grid[j + 1]) for j in range(4)]
    assert torch.equal(w02, s[0] + s[1])
    assert torch.equal(w24, s[2] + s[3])
    c = GridBrownian(grid, (7, 3), dtype=F64, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(c(grid[0], grid[1]), s[0])  # control: another seed, another path


def test_adaptive_sdeint_runs():
    sde, data = sg.VPSDE(), gmm()
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(20, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(UserWarning):  # torchsde's own caveat for adaptive Euler
        info = sdeint(rsde, x_T, timesteps(sde, 1), adaptive=True, rtol=1e-2, atol=1e-2, seed=0)
    assert info.ys.shape == (2, 20, 2) and info.nfe > 10


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(ts=torch.tensor([0.5, 1.0], dtype=F64)), ValueError, "decreasing"),
        (dict(ts=torch.tensor([2.0, 0.5], dtype=F64)), ValueError, r"\[0, T\]"),
        (dict(ts=torch.tensor([[1.0, 0.5]], dtype=F64)), ValueError, "1-D"),
        (dict(method="rk45"), ValueError, "method"),
        (dict(method="heun"), ValueError, "Stratonovich"),
        (dict(dt=0.0), ValueError, "dt"),
        (dict(dt=-0.1), ValueError, "dt"),
        (dict(x0=[[0.0, 0.0]]), TypeError, "x0"),
        (dict(x0=torch.zeros(3)), ValueError, "x0"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed=1, generator=torch.Generator()), ValueError, "generator or seed"),
    ],
)
def test_sdeint_bad_args(kwargs, exc, match):
    sde = sg.VPSDE()
    rsde = sg.ReverseSDE(sde, lambda x, t: -x)
    args = dict(x0=torch.zeros(4, 2), ts=timesteps(sde, 4))
    args.update(kwargs)
    x0, ts = args.pop("x0"), args.pop("ts")
    with pytest.raises(exc, match=match):
        sdeint(rsde, x0, ts, **args)


# ---------------------------------------------------------------------------------- odeint


def test_odeint_never_evaluates_outside_the_interval():
    """With eps=1e-5 on VP, raw torchdiffeq dopri5 evaluates at t < eps (the control); ours never."""
    sde, data = sg.VPSDE(), gmm()
    ode = sg.ProbabilityFlowODE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(64, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = torch.tensor([1.0, 1e-5], dtype=F64)
    info = odeint(ode, x_T, ts, rtol=1e-5, atol=1e-5, record_times=True)
    times = info.extra["times"]
    assert min(times) >= 1e-5 and max(times) <= 1.0
    seen = []

    def spy(t, x):
        seen.append(float(t))
        return ode(t, x)

    torchdiffeq.odeint(spy, x_T, ts, method="dopri5", rtol=1e-5, atol=1e-5)
    assert min(seen) < 1e-5  # raw torchdiffeq does step past the end


def test_encode_decode_round_trip():
    """eps -> T -> eps through the PF-ODE returns x; error budget ~ 100 * tolerance."""
    sde, data = sg.SubVPSDE(), gmm()
    ode = sg.ProbabilityFlowODE(sde, data.score_fn(sde))
    x = data.sample(200, generator=torch.Generator().manual_seed(0), dtype=F64)
    up = torch.tensor([1e-3, 1.0], dtype=F64)
    z = odeint(ode, x, up, rtol=1e-7, atol=1e-7).x
    back = odeint(ode, z, up.flip(0), rtol=1e-7, atol=1e-7).x
    assert float((back - x).abs().max()) < 1e-4
    assert float((z - x).abs().max()) > 0.5  # the encoding really moved the points


def test_fixed_step_odeint_counts():
    sde, data = sg.VPSDE(), gmm()
    ode = sg.ProbabilityFlowODE(sde, data.score_fn(sde))
    x_T = data.prior(sde).sample(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = timesteps(sde, 25)
    info = odeint(ode, x_T, ts, method="euler")
    assert info.nfe == 25
    info = odeint(ode, x_T, ts, method="rk4")
    assert info.nfe == 100


def test_fixed_step_rk4_matches_the_exact_flow_map():
    """RK4 with step_size on a Gaussian target: the PF-ODE flow map is linear and known exactly.

    For data N(m, s^2 I) the PF-ODE maps x_T to x_t = alpha_t m + sqrt(alpha_t^2 s^2 + sigma_t^2) *
    (x_T - alpha_T m) / sqrt(alpha_T^2 s^2 + sigma_T^2). Budget: RK4 global error O(h^4) with
    h = 0.01 is far below 1e-6 here; Euler on the same grid (order 1) misses it by > 1e-3 (control).
    """
    sde = sg.VPSDE()
    m, s2 = torch.tensor([0.7, -0.4], dtype=F64), 0.3
    data = sg.analytic.Gaussian(m, s2 * torch.eye(2, dtype=F64))
    ode = sg.ProbabilityFlowODE(sde, data.score_fn(sde))
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = torch.tensor([1.0, 0.5, 0.1], dtype=F64)

    def exact(t):
        a_T, a_t = sde.alpha(1.0), sde.alpha(t)
        z = (x_T - a_T * m) / torch.sqrt(a_T**2 * s2 + sde.sigma(1.0) ** 2)
        return a_t * m + torch.sqrt(a_t**2 * s2 + sde.sigma(t) ** 2) * z

    xs = odeint(ode, x_T, ts, method="rk4", options={"step_size": 0.01}).ys
    err = max(float((xs[k] - exact(float(ts[k]))).abs().max()) for k in (1, 2))
    assert err < 1e-6, err
    xe = odeint(ode, x_T, ts, method="euler", options={"step_size": 0.01}).ys
    assert float((xe[2] - exact(0.1)).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="rk45"), ValueError, "method"),
        (dict(ts=torch.tensor([1.0, 0.5, 0.7], dtype=F64)), ValueError, "monotone"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(options={"stepsize": 0.1}), ValueError, "options"),
        (dict(func=3), TypeError, "func"),
    ],
)
def test_odeint_bad_args(kwargs, exc, match):
    sde = sg.VPSDE()
    args = dict(func=sg.ProbabilityFlowODE(sde, lambda x, t: -x), x0=torch.zeros(3, 2), ts=timesteps(sde, 3))
    args.update(kwargs)
    func, x0, ts = args.pop("func"), args.pop("x0"), args.pop("ts")
    with pytest.raises(exc, match=match):
        odeint(func, x0, ts, **args)


def test_nonfinite_score_raises_with_time_and_leaves_the_sde_unchanged():
    """A score that turns NaN below t=0.5 stops the solve with NonFiniteError naming the time;
    the ReverseSDE's data_shape and step table are restored. Control: a finite score runs."""
    sde = sg.VPSDE()

    def bad(x, t):
        return torch.where(torch.as_tensor(t) < 0.5, torch.full_like(x, float("nan")), -x)

    rsde = sg.ReverseSDE(sde, bad)
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(sg.NonFiniteError, match=r"t=0\.4"):
        sdeint(rsde, x_T, timesteps(sde, 10), seed=0)
    assert rsde.data_shape is None
    ok = sg.ReverseSDE(sde, lambda x, t: -x)
    assert torch.isfinite(sdeint(ok, x_T, timesteps(sde, 10), seed=0).ys).all()


def test_progress_bar_does_not_change_the_result():
    sde = sg.VPSDE()
    rsde = sg.ReverseSDE(sde, lambda x, t: -x)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = timesteps(sde, 20)
    assert torch.equal(sdeint(rsde, x_T, ts, seed=0, progress=True).ys, sdeint(rsde, x_T, ts, seed=0).ys)

"""Value tests for single coefficients and CLI wiring that the rest of the suite did not pin.

Each test compares with a closed form or a hand-written recursion written here (never the code's
own coefficients), and each has a negative control: the same check applied to the plausible wrong
variant (the bug it guards against) fails.
"""

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import cli
from sdesolve_gen import guidance as G
from sdesolve_gen import samplers as S

F64 = torch.float64
BETA_MIN, BETA_MAX = 0.1, 20.0


def vp_alpha_sigma(t: float):
    """VP closed form: log alpha(t) = -t^2 (b1 - b0) / 4 - t b0 / 2, sigma^2 = 1 - alpha^2."""
    log_a = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    a = math.exp(log_a)
    return a, math.sqrt(-math.expm1(2 * log_a))


def vp_beta(t: float) -> float:
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


# ------------------------------------------------------------------------------ reverse drift


def test_reverse_drift_is_f_minus_g2_score_in_closed_form():
    """Data N(0, v I) under VP: s(x, t) = -x / (alpha^2 v + sigma^2), so the reverse drift
    f - g^2 s = -beta x / 2 + beta x / (alpha^2 v + sigma^2) exactly. Control: the
    probability-flow form (g^2 s / 2) misses it by far more than the tolerance."""
    v = 0.3
    sde = sg.VPSDE(beta_min=BETA_MIN, beta_max=BETA_MAX)
    data = sg.analytic.Gaussian(torch.zeros(3, dtype=F64), v * torch.eye(3, dtype=F64))
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (0.05, 0.4, 0.9):
        a, s = vp_alpha_sigma(t)
        beta = vp_beta(t)
        score = -x / (a * a * v + s * s)
        expected = -0.5 * beta * x - beta * score
        got = rsde.reverse_drift(x, torch.tensor(t, dtype=F64))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        pf_form = -0.5 * beta * x - 0.5 * beta * score  # the negative control
        assert float((pf_form - got).abs().max()) > 1e-3


# ------------------------------------------------------------------------------ SA-Solver


def test_sa_solver_order1_tau_half_matches_a_hand_written_recursion_on_a_nonuniform_grid():
    """SA-Solver with order 1 and tau = 0.5 (so tau and tau^2 differ) on a non-uniform grid,
    1-D data N(mu, v) with the exact data prediction x0(x) = mu + alpha v (x - alpha mu) /
    (alpha^2 v + sigma^2). Per step, with h = lambda_{i+1} - lambda_i, lambda = log(alpha/sigma):

        x' = (sigma'/sigma) e^{-tau^2 h} x + alpha' (1 - e^{-(1+tau^2) h}) x0(x)
             + sigma' sqrt(1 - e^{-2 tau^2 h}) z,

    z drawn in order from an identically seeded generator. Control: the noise scale with tau in
    place of tau^2 gives a different trajectory."""
    mu, v, tau = 0.7, 0.2, 0.5
    sde = sg.VPSDE(beta_min=BETA_MIN, beta_max=BETA_MAX)
    data = sg.analytic.Gaussian(torch.tensor([mu], dtype=F64), torch.tensor([[v]], dtype=F64))
    ts = torch.tensor([1.0, 0.83, 0.55, 0.41, 0.2, 0.09, 0.03, 1e-3], dtype=F64)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    got = S.sa_solver(sde, data.score_fn(sde), x_T, ts, order=1, tau=tau,
                      generator=torch.Generator().manual_seed(11)).x

    def recursion(noise_exponent: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(11)
        x = x_T.clone()
        for t0, t1 in zip(ts.tolist()[:-1], ts.tolist()[1:]):
            (a0, s0), (a1, s1) = vp_alpha_sigma(t0), vp_alpha_sigma(t1)
            h = math.log(a1 / s1) - math.log(a0 / s0)
            x0 = mu + a0 * v * (x - a0 * mu) / (a0 * a0 * v + s0 * s0)
            z = torch.randn(x.shape, generator=g, dtype=F64)
            x = ((s1 / s0) * math.exp(-tau * tau * h) * x + a1 * (-math.expm1(-(1 + tau * tau) * h)) * x0
                 + s1 * math.sqrt(-math.expm1(-2 * noise_exponent * h)) * z)
        return x

    torch.testing.assert_close(got, recursion(tau * tau), rtol=1e-10, atol=1e-10)
    assert float((recursion(tau) - got).abs().max()) > 1e-2  # the negative control


# ------------------------------------------------------------------------------ inpainting


def test_inpaint_renoises_known_coordinates_with_sigma():
    """Replacement inpainting sets the known coordinates at t_{i+1} to alpha x_known + sigma z,
    z ~ N(0, 1). Over B = 4000 samples the standardised residual (x_k - alpha x_known) / sigma
    has variance 1; the sample variance's standard deviation is sqrt(2 / B) = 0.022 and the
    budget is 5 of them (0.11). alpha, sigma: the VP closed form. Control: re-noising with
    sigma^2 gives variance sigma^2 (0.25 at the checked step), rejected by the same budget."""
    B = 4000
    sde = sg.VPSDE(beta_min=BETA_MIN, beta_max=BETA_MAX)
    data = sg.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    x_known = torch.full((B, 2), 0.4, dtype=F64)
    mask = torch.tensor([True, False])
    ts = sg.timesteps(sde, 40)
    seen = {}

    def grab(info):
        seen[info["i"]] = info["x"][:, 0].clone()

    G.inpaint(sde, data.score_fn(sde), x_known, mask, ts, sampler="euler_maruyama",
              generator=torch.Generator().manual_seed(4), callback=grab)
    budget = 5 * math.sqrt(2.0 / B)
    checked = 0
    for i, xk in seen.items():
        a, s = vp_alpha_sigma(float(ts[i + 1]))
        if not 0.3 < s < 0.7:
            continue
        r = (xk - a * 0.4) / s
        assert abs(float(r.var()) - 1.0) <= budget, (i, float(r.var()))
        assert abs(s * s - 1.0) > budget  # the negative control: sigma^2 z has variance s^2
        checked += 1
    assert checked >= 2


# ------------------------------------------------------------------------------ CLI wiring


def _run(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    pytest.importorskip("sdesolve_gen.train")
    ck = str(tmp_path_factory.mktemp("ck") / "ck")
    rc = cli.main(["train", "--ckpt", ck, "--batch-size", "32", "--steps", "20", "--every", "10"])
    assert rc == 0
    return ck


def test_cli_train_passes_every_as_the_checkpoint_interval(tmp_path, capsys, monkeypatch):
    """``--every 7`` reaches the Trainer as ``checkpoint_every=7`` (control: a run without
    --every gets another value)."""
    import sdesolve_gen.train as train_mod

    seen = []

    class Recording(train_mod.Trainer):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("checkpoint_every"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_mod, "Trainer", Recording)
    rc, _, err = _run(["train", "--ckpt", str(tmp_path / "a"), "--batch-size", "16", "--steps", "8", "--every", "7"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["train", "--ckpt", str(tmp_path / "b"), "--batch-size", "16", "--steps", "8"], capsys)
    assert rc == 0, err
    assert seen[0] == 7 and seen[1] != 7


def test_cli_likelihood_passes_probes_to_the_estimator(tiny_checkpoint, capsys, monkeypatch):
    """``--divergence hutchinson --probes 3`` reaches ``log_likelihood`` as ``n_probes=3``, and
    the per-probe estimates it returns have 3 columns."""
    import sdesolve_gen.likelihood as lik

    seen = []
    real = lik.log_likelihood

    def recording(*args, **kwargs):
        res = real(*args, **kwargs)
        seen.append((kwargs.get("n_probes"), tuple(res.per_probe.shape)))
        return res

    monkeypatch.setattr(lik, "log_likelihood", recording)
    rc, out, err = _run(["likelihood", tiny_checkpoint, "-n", "2", "--rtol", "1e-2", "--atol", "1e-2",
                         "--divergence", "hutchinson", "--probes", "3"], capsys)
    assert rc == 0, err
    assert seen == [(3, (2, 3))]
    assert "3 probes" in out


def test_cli_sample_seed_selects_the_noise(tiny_checkpoint, tmp_path, capsys):
    """The same --seed gives identical samples, another --seed different ones."""
    outs = []
    for k, seed in enumerate((5, 5, 6)):
        pt = str(tmp_path / f"s{k}.pt")
        rc, _, err = _run(["sample", tiny_checkpoint, "-n", "8", "--steps", "5", "--seed", str(seed), "--out", pt,
                           "--weights", "raw"], capsys)
        assert rc == 0, err
        outs.append(torch.load(pt, weights_only=True)["samples"])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


# ------------------------------------------------------------------------------ training details


def test_cosine_lr_decay_follows_its_closed_form_and_stays_at_zero_after_K():
    """lr_k = lr (1 + cos(pi min(k/K, 1))) / 2: after K steps the rate stays 0 (control: the
    unclamped cosine would rise again to lr (1 + cos(pi 6/4)) / 2 = lr / 2 at k = 6)."""
    sde = sg.VPSDE()
    K, lr = 4, 1e-3
    tr = sg.Trainer(sg.ScoreModel(sg.MLPScoreNet(2, hidden=8, depth=1), sde), sde,
                    torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), batch_size=4, lr=lr,
                    lr_decay_steps=K, log_every=0)
    for k in range(1, 7):
        tr.train(k)
        expected = lr * 0.5 * (1.0 + math.cos(math.pi * min(k / K, 1.0)))
        got = tr.optimizer.param_groups[0]["lr"]
        assert got == pytest.approx(expected, abs=1e-15), k
    assert abs(lr * 0.5 * (1.0 + math.cos(math.pi * 6 / K)) - got) > 1e-4  # the negative control


def test_open_interval_end_points_are_refused():
    """check_range's open ends exclude the end point itself (Trainer(eps=T) must be refused)."""
    from sdesolve_gen._checks import check_range

    assert check_range("x", 1.0, 0.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="x"):
        check_range("x", 1.0, 0.0, 1.0, hi_open=True)
    with pytest.raises(ValueError, match="x"):
        check_range("x", 0.0, 0.0, 1.0, lo_open=True)
    sde = sg.VPSDE()
    with pytest.raises(ValueError, match="eps"):
        sg.Trainer(sg.ScoreModel(sg.MLPScoreNet(2, hidden=8, depth=1), sde), sde, torch.zeros(4, 2), batch_size=2,
                   eps=sde.T)


# ------------------------------------------------------------------------------ adaptive error norm


@pytest.mark.parametrize("name", ["dpm_solver_adaptive", "dpm_solver_adaptive_ms"])
def test_adaptive_error_norm_is_a_per_sample_rms_so_replicated_coordinates_change_nothing(name):
    """The documented per-sample norm is the RMS over a sample's coordinates. Data N(0, v I) has a
    coordinate-wise score, so a 4-D problem whose coordinates all repeat the same 1-D x_T has, at
    every step, the same per-coordinate error as the 1-D problem: an RMS norm gives the same
    accepted grid and the 1-D result in every coordinate (exactly, up to rounding). Control: an
    L2 norm is the RMS norm times sqrt(4) = 2, i.e. the RMS norm at tolerances / 2, and that run
    takes another grid (the check would reject the L2 norm)."""
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(torch.zeros(1, dtype=F64), torch.full((1, 1), 0.3, dtype=F64))
    score1 = data.score_fn(sde)
    score4 = sg.analytic.Gaussian(torch.zeros(4, dtype=F64), 0.3 * torch.eye(4, dtype=F64)).score_fn(sde)
    x1 = torch.randn(8, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = torch.tensor([sde.T, sde.eps], dtype=F64)
    fn = S.get_sampler(name).fn
    tol = dict(rtol=0.01, atol=0.01)
    one = fn(sde, score1, x1, ts, **tol)
    four = fn(sde, score4, x1.repeat(1, 4), ts, **tol)
    assert four.n_steps == one.n_steps and four.n_rejected == one.n_rejected
    assert torch.allclose(four.x, one.x.repeat(1, 4), rtol=0, atol=1e-12)
    l2 = fn(sde, score4, x1.repeat(1, 4), ts, rtol=0.005, atol=0.005)
    assert (l2.n_steps, l2.n_rejected) != (one.n_steps, one.n_rejected)


# ------------------------------------------------------------------------------ importance-sampled g^2 loss


@pytest.mark.parametrize("sde", [sg.VPSDE(T=0.5), sg.VESDE(sigma_max=10.0, T=2.0)], ids=repr)
def test_importance_sampled_g2_loss_is_unbiased_when_T_is_not_one(sde):
    """With t ~ g^2/sigma^2 the per-sample weight is Z/(T - eps), Z the log-SNR range, so that
    the expectation is the uniform-t average (1/(T - eps)) int g^2 (...) dt. On T = 1 the
    1/(T - eps) is ~1 and a missing factor hides; on T = 0.5 and 2 it is a factor ~2 / ~0.5.
    Oracle: the quadrature constant of the exact score (closed form of the Gaussian-data DSM
    optimum). Budget: 5 Monte-Carlo standard errors of the 100k-sample mean (unbiased
    estimator). Control: the same mean without 1/(T - eps) is outside that band."""
    from sdesolve_gen.losses import dsm_loss, dsm_optimum_gaussian

    mu = torch.tensor([0.5, -1.0], dtype=F64)
    cov = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=F64)
    data = sg.analytic.Gaussian(mu, cov)
    const = dsm_optimum_gaussian(sde, cov, weighting="g2")
    n = 100_000
    x0 = data.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    per = dsm_loss(data.score_fn(sde), sde, x0, weighting="g2", importance_sampling=True,
                   generator=torch.Generator().manual_seed(1), reduce=False)
    est, se = float(per.mean()), float(per.std()) / math.sqrt(n)
    assert abs(est - const) <= 5 * se, (est, const, se)
    wrong = est * (sde.T - sde.eps)  # the weight without 1/(T - eps)
    assert abs(wrong - const) > 5 * se * (sde.T - sde.eps)


# ------------------------------------------------------------------------------ dataset probe stderr


def test_dataset_probe_stderr_is_the_spread_of_the_mean_over_probe_seeds():
    """probe_stderr claims to be the standard error of mean_bpd due to the Hutchinson probes.
    Check it against the spread of mean_bpd over R = 40 independent probe seeds on the same data
    (N = 16 points of a 3-D Gaussian, K = 4 Rademacher probes, one batch, solver at 1e-5 so the solver's part
    is negligible). The sample sd over R runs has sd/sigma in the chi interval
    [sqrt(q_0.0005/(R-1)), sqrt(q_0.9995/(R-1))] = [0.57, 1.48] (chi-square 39 dof quantiles 16.9
    and 85.7); the reported value (mean over the runs) must sit in that band. Control: the
    variant divided by sqrt(N) instead of N is sqrt(16) = 4 times larger and outside it."""
    sde = sg.VPSDE()
    D = 3
    cov = torch.diag(torch.tensor([0.2, 0.5, 1.0], dtype=F64))
    cov[0, 1] = cov[1, 0] = 0.15
    data = sg.analytic.Gaussian(torch.zeros(D, dtype=F64), cov)
    x = data.sample(16, generator=torch.Generator().manual_seed(5), dtype=F64)
    R = 40
    means, reported = [], []
    for r in range(R):
        res = sg.dataset_log_likelihood(sde, data.score_fn(sde), x, batch_size=16, seed=100 * r,
                                        divergence="hutchinson", n_probes=4, rtol=1e-5, atol=1e-5)
        means.append(res.mean_bpd)
        reported.append(res.probe_stderr)
    sd = float(torch.tensor(means, dtype=F64).std())
    rep = float(torch.tensor(reported, dtype=F64).mean())
    lo, hi = math.sqrt(16.9 / (R - 1)), math.sqrt(85.7 / (R - 1))
    assert lo <= sd / rep <= hi, (sd, rep)
    assert not lo <= sd / (rep * math.sqrt(16)) <= hi

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

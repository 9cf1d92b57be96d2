"""PF-ODE likelihoods against the analytic oracles (``GaussianMixture.log_prob_t`` with the exact prior).

Error budget of the exact-divergence solve (rtol = atol = TOL in float64): the controller keeps
each step's local error below ``atol + rtol*|y|`` (|y| <= ~5 here, state (x, delta)); the global
error accumulates over the ~15-50 accepted steps. Measured max |error| over 64 samples on the
mixture below was 17-28 x tol for tol in 1e-4..1e-7 (VP/VE/sub-VP) with dopri5 and the
batch-shared control (the loosest setting still reachable), so the budget is
``BUDGET = 100 * TOL`` for every method and control tested here. The negative controls miss by orders of magnitude more than that.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import sdesolve_gen as sg
from sdesolve_gen.analytic import Gaussian, GaussianMixture
from sdesolve_gen.divergence import score_divergence

TOL = 1e-6
BUDGET = 100 * TOL

SDES = {"vp": sg.VPSDE, "ve": sg.VESDE, "subvp": sg.SubVPSDE, "cosine": sg.CosineVPSDE, "edm": sg.EDMSDE}


def _mixture(shift: float = 0.0) -> GaussianMixture:
    """Anisotropic 2-D mixture: correlated, thin and stretched components."""
    means = torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]], dtype=torch.float64) + shift
    covs = torch.tensor(
        [[[1.0, 0.8], [0.8, 1.0]], [[0.3, -0.1], [-0.1, 0.05]], [[0.5, 0.0], [0.0, 2.0]]], dtype=torch.float64
    )
    return GaussianMixture(means, covs, torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))


@pytest.fixture(scope="module")
def data() -> GaussianMixture:
    return _mixture()


def _x(data: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return data.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ exact divergence vs oracle


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_likelihood_matches_oracle(data, name):
    sde = SDES[name]()
    x = _x(data, 32)
    exact = data.log_prob_t(x, sde.eps, sde)
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde))
    err = (res.log_prob - exact).abs()
    assert float(err.max()) <= BUDGET, float(err.max())
    assert torch.equal(res.stderr, torch.zeros_like(res.stderr))
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_prob)
    assert res.z.shape == x.shape and res.nfe > 0
    # negative control: the score of a shifted mixture, same check, same budget
    wrong = _mixture(shift=0.5)
    bad = sg.log_likelihood(sde, wrong.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde))
    assert float((bad.log_prob - exact).abs().mean()) > 100 * BUDGET


def test_standard_prior_bias_is_visible_and_exact_prior_removes_it(data):
    """VE's standard prior N(0, sigma_max^2) vs the exact p_T: a documented prior-mismatch bias."""
    sde = sg.VESDE(sigma_max=5.0)  # small sigma_max: p_T is far from N(0, 25 I)
    x = _x(data, 16)
    exact = data.log_prob_t(x, sde.eps, sde)
    std = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL)
    ex = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde))
    assert float((ex.log_prob - exact).abs().max()) <= BUDGET
    assert float((std.log_prob - exact).abs().mean()) > 100 * BUDGET


def test_float32_follows_input(data):
    """float32 in, float32 out; error budget 1e-3 nats (float32 round-off over ~40 steps, rtol 1e-4)."""
    sde = sg.VPSDE()
    x = _x(data, 8).float()
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=1e-4, atol=1e-4, prior=data.prior(sde))
    assert res.log_prob.dtype == torch.float32 and res.z.dtype == torch.float32
    exact = data.log_prob_t(x.double(), sde.eps, sde)
    assert float((res.log_prob.double() - exact).abs().max()) < 1e-2


# ------------------------------------------------------------------ divergence itself


def _closed_form_div_v(sde, gauss: Gaussian, t: float, D: int) -> float:
    """div of the PF velocity for N(mu, Sigma): D a(t) + g^2/2 tr((alpha^2 Sigma + sigma^2 I)^-1)."""
    tt = torch.tensor(t, dtype=torch.float64)
    a = float(sde.drift_coef(tt))
    g2 = float(sde.diffusion2(tt))
    alpha2 = float(torch.exp(2 * sde.log_alpha(tt)))
    cov_t = alpha2 * gauss.covs[0] + float(sde.sigma2(tt)) * torch.eye(D, dtype=torch.float64)
    return D * a + 0.5 * g2 * float(torch.linalg.inv(cov_t).trace())


def _div_v(sde, score_fn, x, t):
    tt = torch.tensor(t, dtype=torch.float64)
    _, div_s = score_divergence(lambda xf: score_fn(xf, tt), x)
    D = x.shape[1]
    return D * sde.drift_coef(tt) - 0.5 * sde.diffusion2(tt) * div_s[:, 0]


@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_exact_divergence_closed_form_gaussian(t):
    """Budget: float64 round-off, 1e-9 relative."""
    D = 3
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.3, 0.2], [0.1, 0.0, 2.0]], dtype=torch.float64)
    gauss = Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), A @ A.T + 0.05 * torch.eye(3, dtype=torch.float64))
    sde = sg.VPSDE()
    x = gauss.sample(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = _closed_form_div_v(sde, gauss, t, D)
    got = _div_v(sde, gauss.score_fn(sde), x, t)
    torch.testing.assert_close(got, torch.full_like(got, want), rtol=1e-9, atol=1e-9)

    # negative control: a score whose autograd graph is cut. Computed as the gradient of the exact
    # log density WITHOUT create_graph, its Jacobian is invisible: the library refuses it ...
    def cut_score(xx, tt):
        with torch.enable_grad():
            xr = xx if xx.requires_grad else xx.detach().requires_grad_(True)
            lp = gauss.log_prob_t(xr, tt, sde).sum()
            return torch.autograd.grad(lp, xr, create_graph=False)[0]

    with pytest.raises(ValueError, match="graph"):
        _div_v(sde, cut_score, x, t)
    # ... and the divergence such a score implies (Jacobian counted as 0) fails the same check.
    tt = torch.tensor(t, dtype=torch.float64)
    cut_div = D * float(sde.drift_coef(tt))
    assert abs(cut_div - want) > 1e3 * 1e-9 * abs(want)

    # the same score with create_graph=True passes the same check
    def kept_score(xx, tt):
        lp = gauss.log_prob_t(xx, tt, sde).sum()
        return torch.autograd.grad(lp, xx, create_graph=True)[0]

    torch.testing.assert_close(_div_v(sde, kept_score, x, t), got, rtol=1e-9, atol=1e-9)


def test_exact_divergence_finite_differences(data):
    """Mixture score: trace vs central differences, step 1e-5, budget 1e-6 (O(h^2) + round-off)."""
    sde = sg.SubVPSDE()
    score = data.score_fn(sde)
    t = torch.tensor(0.2, dtype=torch.float64)
    x = _x(data, 6)
    _, div = score_divergence(lambda xf: score(xf, t), x)
    h = 1e-5
    fd = torch.zeros(6, dtype=torch.float64)
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd += (score(x + e, t)[:, i] - score(x - e, t)[:, i]) / (2 * h)
    torch.testing.assert_close(div[:, 0], fd, rtol=0, atol=1e-6)
    # chunked basis (one vector per pass) gives the same trace
    _, div1 = score_divergence(lambda xf: score(xf, t), x, chunk=1)
    torch.testing.assert_close(div1, div, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ Hutchinson


def test_hutchinson_unbiased_with_nonzero_variance(data):
    """K=256 probes per sample: the probe mean must sit within 4 standard errors of the exact value
    (z-test, two-sided alpha ~6e-5 per sample; ODE error <= BUDGET is negligible vs stderr)."""
    sde = sg.VPSDE()
    x = _x(data, 6, seed=5)
    exact = data.log_prob_t(x, sde.eps, sde)
    res = sg.log_likelihood(
        sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde),
        divergence="hutchinson", n_probes=256, generator=torch.Generator().manual_seed(7),
    )
    # the target is anisotropic, so single-probe estimates really vary (isotropic => exactly 0)
    per_probe_std = res.per_probe.std(1)
    assert float(per_probe_std.min()) > 0.05
    z = (res.log_prob - exact) / res.stderr
    assert float(z.abs().max()) < 4.0, z
    # exact and Hutchinson agree within the stderr (same 4-sigma rule)
    ex = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde))
    assert float(((res.log_prob - ex.log_prob) / res.stderr).abs().max()) < 4.0
    # negative control: the wrong (shifted) score is rejected by the same z-test
    bad = sg.log_likelihood(
        sde, _mixture(0.5).score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde),
        divergence="hutchinson", n_probes=256, generator=torch.Generator().manual_seed(7),
    )
    assert float(((bad.log_prob - exact) / bad.stderr).abs().max()) > 4.0


def test_hutchinson_isotropic_has_zero_variance():
    """Why the test above uses an anisotropic target: an isotropic Jacobian gives zero variance."""
    sde = sg.VPSDE()
    gauss = Gaussian(torch.zeros(3, dtype=torch.float64), 0.5 * torch.eye(3, dtype=torch.float64))
    x = gauss.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sg.log_likelihood(sde, gauss.score_fn(sde), x, rtol=1e-5, atol=1e-5, divergence="hutchinson",
                            n_probes=8, generator=torch.Generator().manual_seed(1))
    assert float(res.per_probe.std(1).max()) < 1e-9


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_stderr_coverage(data, probe):
    """Coverage of the reported stderr over n=400 samples, K=32 probes each.

    The studentised error is ~t_31; P(|t_31| <= 2.040) = 0.95. Binomial bound: the count of covered
    samples must lie within 4 sd of 0.95 n (sd = sqrt(n 0.95 0.05) = 4.36), i.e. >= 363. Per-probe
    estimates are quadratic forms in the probes (skewed, not normal), so t-intervals under-cover at
    small K: measured on 2000 samples of this mixture (VP, rtol 1e-5): Rademacher 87.9% / 92.4% /
    94.5% and Gaussian 88.4% / 89.0% / 92.7% at K = 4 / 8 / 32 (see docs/likelihood.rst); hence
    K=32 here. Negative control: halving the stderr (over-confident bars) fails the same bound.
    """
    sde = sg.VPSDE()
    n, K = 400, 32
    x = _x(data, n, seed=11)
    exact = data.log_prob_t(x, sde.eps, sde)
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=1e-5, atol=1e-5, prior=data.prior(sde),
                            divergence="hutchinson", n_probes=K, probe=probe,
                            generator=torch.Generator().manual_seed(12))
    q = 2.040  # scipy.stats.t.ppf(0.975, 31)
    lo = 0.95 * n - 4 * math.sqrt(n * 0.95 * 0.05)
    covered = int(((res.log_prob - exact).abs() <= q * res.stderr).sum())
    assert covered >= lo, covered
    covered_half = int(((res.log_prob - exact).abs() <= q * 0.5 * res.stderr).sum())
    assert covered_half < lo, covered_half


def test_single_probe_stderr_is_nan(data):
    sde = sg.VPSDE()
    res = sg.log_likelihood(sde, data.score_fn(sde), _x(data, 3), divergence="hutchinson", n_probes=1,
                            generator=torch.Generator().manual_seed(0))
    assert bool(torch.isnan(res.stderr).all())
    assert res.per_probe.shape == (3, 1)


# ------------------------------------------------------------------ batch effects, safety


def test_batch_dependence_and_per_sample(data):
    """Shared adaptive steps: sample 0 alone vs in a batch of 64 differ by < BUDGET (both are within
    BUDGET of the oracle); per_sample=True reproduces the solo solve to float round-off."""
    sde = sg.VPSDE()
    x = _x(data, 64, seed=2)
    kw = dict(rtol=TOL, atol=TOL, prior=data.prior(sde))
    alone = sg.log_likelihood(sde, data.score_fn(sde), x[:1], **kw).log_prob
    batch = sg.log_likelihood(sde, data.score_fn(sde), x, **kw).log_prob
    assert float((alone[0] - batch[0]).abs()) <= BUDGET
    per = sg.log_likelihood(sde, data.score_fn(sde), x[:4], per_sample=True, **kw).log_prob
    torch.testing.assert_close(per[0], alone[0], rtol=0, atol=1e-12)
    chunked = sg.log_likelihood(sde, data.score_fn(sde), x, chunk_size=16, **kw).log_prob
    assert float((chunked - batch).abs().max()) <= BUDGET


def test_score_never_evaluated_outside_eps_T(data):
    sde = sg.VPSDE()
    times = []
    base = data.score_fn(sde)

    def spy(x, t):
        times.append(float(t))
        return base(x, t)

    x = _x(data, 8)
    sg.log_likelihood(sde, spy, x, rtol=1e-4, atol=1e-4)
    z = sg.encode(sde, spy, x, rtol=1e-4, atol=1e-4)
    sg.decode(sde, spy, z, rtol=1e-4, atol=1e-4)
    assert min(times) >= sde.eps and max(times) <= sde.T
    # negative control: plain torchdiffeq without step_t does step past the end time
    raw = []
    ode = sg.ProbabilityFlowODE(sde, base)
    torchdiffeq.odeint(lambda t, y: (raw.append(float(t)), ode(t, y))[1], z,
                       torch.tensor([sde.T, sde.eps], dtype=torch.float64), rtol=1e-4, atol=1e-4)
    assert min(raw) < sde.eps


def test_encode_decode_roundtrip_and_interpolate(data):
    """Round trip at tol 1e-8: budget 1e-5 (two solves, ~100 x tol each)."""
    sde = sg.VPSDE()
    x = _x(data, 8)
    z = sg.encode(sde, data.score_fn(sde), x, rtol=1e-8, atol=1e-8)
    back = sg.decode(sde, data.score_fn(sde), z, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.z, z, rtol=0, atol=1e-5)
    path = sg.interpolate(sde, data.score_fn(sde), x[:1], x[1:2], 5, rtol=1e-8, atol=1e-8)
    assert path.shape == (5, 2)
    torch.testing.assert_close(path[0], x[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(path[-1], x[1], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ t = eps bound


def test_eps_bound_gaussian():
    """Gaussian data N(mu, s0^2 I): p_eps(x_eps) p(x0|x_eps) = p0(x0) q(x_eps|x0) exactly, so with the
    exact posterior variance c = (1/s0^2 + alpha^2/sigma^2)^-1 as decoder variance the bound equals
    log p0(x0) for every draw (budget: the ODE's BUDGET). With the default tau^2 = sigma^2/alpha^2 the
    per-draw gap is the closed form sum_i [-(x0-m)^2 (1/tau^2 - 1/c)/2 - log(tau^2/c)/2], m the exact
    posterior mean computed from Gaussian conditioning (independent of Tweedie/score)."""
    sde = sg.VPSDE()
    eps = 0.05
    s0 = 0.3
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    gauss = Gaussian(mu, s0**2 * torch.eye(2, dtype=torch.float64))
    x0 = gauss.sample(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact0 = gauss.log_prob(x0)
    t = torch.tensor(eps, dtype=torch.float64)
    alpha, sigma2 = float(torch.exp(sde.log_alpha(t))), float(sde.sigma2(t))
    c = 1.0 / (1.0 / s0**2 + alpha**2 / sigma2)
    kw = dict(rtol=TOL, atol=TOL, prior=gauss.prior(sde), eps=eps)

    tight = sg.log_likelihood_bound(sde, gauss.score_fn(sde), x0, generator=torch.Generator().manual_seed(9),
                                    decoder_var=c, **kw).bound
    assert float((tight - exact0).abs().max()) <= BUDGET

    bound = sg.log_likelihood_bound(sde, gauss.score_fn(sde), x0, generator=torch.Generator().manual_seed(9), **kw).bound
    zdraw = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_eps = alpha * x0 + math.sqrt(sigma2) * zdraw
    m = c * (mu / s0**2 + alpha * x_eps / sigma2)
    tau2 = sigma2 / alpha**2
    gap = (-0.5 * (x0 - m) ** 2 * (1 / tau2 - 1 / c) - 0.5 * math.log(tau2 / c)).sum(1)
    assert float((bound - exact0 - gap).abs().max()) <= BUDGET
    # the uncorrected ODE value log p_eps(x_eps) is not log p0(x0): the gap being closed is real
    res = sg.log_likelihood_bound(sde, gauss.score_fn(sde), x0, generator=torch.Generator().manual_seed(9), **kw).result
    assert float((res.log_prob - exact0).abs().mean()) > 100 * BUDGET
    # negative control: a wrong score breaks the tight identity under the same budget
    wrong = Gaussian(mu + 0.3, s0**2 * torch.eye(2, dtype=torch.float64))
    bad = sg.log_likelihood_bound(sde, wrong.score_fn(sde), x0, generator=torch.Generator().manual_seed(9),
                                  decoder_var=c, **kw).bound
    assert float((bad - exact0).abs().max()) > 100 * BUDGET


# ------------------------------------------------------------------ bits/dim and dequantisation


def test_bits_per_dim_by_hand():
    """Histogram density: P(k) spread uniformly over bin k of width Delta = (hi-lo)/n, i.e.
    p_x = P(k)/Delta^D; the bpd of that density must be the discrete code length -log2 P(k) / D."""
    P = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0), (2.0, 5.0)]:
        delta = (hi - lo) / 4
        got = sg.bits_per_dim(torch.log(P / delta), 1, data_range=(lo, hi), n_bins=4)
        torch.testing.assert_close(got, -torch.log2(P))
    # D = 3 product of histograms; uniform density on [0,1]^D costs exactly log2(256) = 8 bits
    logp = torch.log(P[[0, 1, 3]] / 0.25).sum().reshape(1)
    torch.testing.assert_close(sg.bits_per_dim(logp, (3,), data_range=(0, 1), n_bins=4),
                               -torch.log2(P[[0, 1, 3]]).sum().reshape(1) / 3)
    torch.testing.assert_close(sg.bits_per_dim(torch.zeros(2, dtype=torch.float64), (2, 5), data_range=(0, 1)),
                               torch.full((2,), 8.0, dtype=torch.float64))
    # continuous code length without a data range
    torch.testing.assert_close(sg.bits_per_dim(torch.tensor([-2.0 * math.log(2.0)]), 2), torch.tensor([1.0]))
    # negative control: forgetting the Jacobian term (magic-free) changes the answer by log2(1/Delta)
    assert float((sg.bits_per_dim(torch.log(P / 0.25), 1) + torch.log2(P)).abs().min()) > 1.0
    with pytest.raises(ValueError, match="data_range"):
        sg.bits_per_dim(P, 1, data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="n_bins"):
        sg.bits_per_dim(P, 1, n_bins=1)
    with pytest.raises(ValueError, match="data_shape"):
        sg.bits_per_dim(P, (0,))


def test_likelihood_result_bits_per_dim(data):
    sde = sg.VPSDE()
    x = _x(data, 4).clamp(-1, 1)  # inside the declared data_range (data outside it is refused)
    res = sg.log_likelihood(sde, data.score_fn(sde), x, data_range=(-1, 1))
    torch.testing.assert_close(res.bits_per_dim, -(res.log_prob + 2 * math.log(2 / 256)) / (2 * math.log(2)))
    assert sg.log_likelihood(sde, data.score_fn(sde), x).bits_per_dim is None


def test_dequantize():
    """Each value lands in its own bin; the within-bin offset is U[0,1) (KS p >= 1e-5);
    negative control: the same KS test rejects the squared offsets."""
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (4000,), generator=g)
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0)]:
        x = sg.dequantize(k, generator=g, data_range=(lo, hi), dtype=torch.float64)
        y = (x - lo) / (hi - lo) * 256
        assert torch.equal(torch.floor(y).long(), k)
        u = (y - k).numpy()
        assert stats.kstest(u, "uniform").pvalue >= 1e-5
        assert stats.kstest(u**2, "uniform").pvalue < 1e-5
    assert sg.dequantize(k.double(), generator=g).dtype == torch.float64
    with pytest.raises(ValueError, match="x_int"):
        sg.dequantize(torch.tensor([256]))
    with pytest.raises(ValueError, match="x_int"):
        sg.dequantize(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="x_int"):
        sg.dequantize([1, 2])


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n_probes=0, divergence="hutchinson"), ValueError, "n_probes"),
        (dict(method="rk45"), ValueError, "method"),
        (dict(divergence="trace"), ValueError, "divergence"),
        (dict(divergence="hutchinson", probe="uniform"), ValueError, "probe"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=1.0), ValueError, "eps"),
        (dict(eps=-1e-3), ValueError, "eps"),
        (dict(prior="exact"), ValueError, "prior"),
        (dict(prior=3), TypeError, "prior"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(atol=-1.0), ValueError, "atol"),
    ],
)
def test_bad_arguments(data, kwargs, exc, match):
    sde = sg.VPSDE()
    with pytest.raises(exc, match=match):
        sg.log_likelihood(sde, data.score_fn(sde), _x(data, 2), **kwargs)


def test_bad_x_and_score(data):
    sde = sg.VPSDE()
    score = data.score_fn(sde)
    with pytest.raises(ValueError, match="x"):
        sg.log_likelihood(sde, score, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        sg.log_likelihood(sde, score, torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(TypeError, match="x"):
        sg.log_likelihood(sde, score, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="sde"):
        sg.log_likelihood("vp", score, _x(data, 2))
    with pytest.raises(ValueError, match="score_fn returned"):
        sg.log_likelihood(sde, lambda x, t: x[:, :1] * 1.0, _x(data, 2).requires_grad_(False))
    with pytest.raises(sg.NonFiniteError, match="t="):
        sg.log_likelihood(sde, lambda x, t: x * float("nan"), _x(data, 2))


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_fixed_step_rk4_converges_at_order_4(data, name):
    """Fixed-step rk4 on n = 50, 100, 200 steps: the fitted slope of log(max error) against
    log(step) must lie in [3.5, 4.5] (measured 4.03 / 4.05 for VP, 3.92 / 3.96 for VE per
    halving; errors 2.2e-4 .. 3.6e-7, far above round-off). Negative control: a wrong (shifted) score gives an error floor, slope ~0, which
    the same band rejects. Also checks divergence_chunk=1 and an x that requires grad."""
    sde = SDES[name]()
    x = _x(data, 16)
    exact = data.log_prob_t(x, sde.eps, sde)

    def slope(score_fn):
        ns = [50, 100, 200]
        errs = []
        for n in ns:
            r = sg.log_likelihood(sde, score_fn, x, method="rk4", step_size=(sde.T - sde.eps) / n,
                                  prior=data.prior(sde))
            errs.append(float((r.log_prob - exact).abs().max()))
        h = torch.log(torch.tensor([1.0 / n for n in ns], dtype=torch.float64))
        e = torch.log(torch.tensor(errs, dtype=torch.float64))
        return float(((h - h.mean()) * (e - e.mean())).sum() / ((h - h.mean()) ** 2).sum())

    assert 3.5 <= slope(data.score_fn(sde)) <= 4.5
    assert not 3.5 <= slope(_mixture(0.5).score_fn(sde)) <= 4.5
    res = sg.log_likelihood(sde, data.score_fn(sde), x.clone().requires_grad_(True), rtol=TOL, atol=TOL,
                            prior=data.prior(sde), divergence_chunk=1)
    assert float((res.log_prob - exact).abs().max()) <= BUDGET
    assert not res.log_prob.requires_grad


def test_image_shaped_data():
    """x of shape (B, 1, 2, 2): the same budget against the oracle, z keeps the shape, Hutchinson too."""
    g = torch.Generator().manual_seed(6)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    data = Gaussian(torch.randn(4, generator=g, dtype=torch.float64), A @ A.T / 4 + 0.1 * torch.eye(4, dtype=torch.float64),
                    event_shape=(1, 2, 2))
    sde = sg.SubVPSDE()
    x = data.sample(8, generator=g, dtype=torch.float64)
    exact = data.log_prob_t(x, sde.eps, sde)
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde))
    assert res.z.shape == x.shape
    assert float((res.log_prob - exact).abs().max()) <= BUDGET
    hut = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=TOL, atol=TOL, prior=data.prior(sde),
                            divergence="hutchinson", n_probes=64, generator=g)
    assert float(((hut.log_prob - exact) / hut.stderr).abs().max()) < 4.0

"""Analytic oracles: scores, densities, sampling, and argument checks."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import sdesolve_gen as sg
from sdesolve_gen.analytic import Gaussian, GaussianMixture

F64 = torch.float64


def random_gmm(seed: int, K: int, D: int, spread: float = 2.0) -> GaussianMixture:
    """A random anisotropic mixture (covariances A A^T + 0.05 I, weights bounded away from 0)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(K, D, generator=g, dtype=F64)
    A = 0.6 * torch.randn(K, D, D, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(D, dtype=F64)
    w = torch.rand(K, generator=g, dtype=F64) + 0.2
    return GaussianMixture(means, covs, w / w.sum())


SDES = [sg.VPSDE(), sg.VESDE(sigma_max=10.0), sg.SubVPSDE(), sg.CosineVPSDE(), sg.EDMSDE(sigma_max=10.0)]


@given(
    seed=st.integers(0, 10_000),
    K=st.integers(1, 3),
    D=st.integers(1, 4),
    sde_i=st.integers(0, len(SDES) - 1),
    u=st.floats(0.0, 1.0),
)
def test_score_equals_autograd_of_log_density(seed, K, D, sde_i, u):
    """The closed-form score equals the autograd gradient of the closed-form log p_t (float64)."""
    data = random_gmm(seed, K, D)
    sde = SDES[sde_i]
    t = u * sde.T
    x = data.marginal(t, sde).sample(6, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(data.log_prob_t(x, t, sde).sum(), x)
    assert torch.allclose(data.score(x, t, sde), grad, rtol=1e-8, atol=1e-10)


def test_per_sample_times_match_scalar_times():
    data = random_gmm(1, 3, 2)
    sde = sg.VPSDE()
    x = data.sample(5, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = torch.tensor([0.0, 0.1, 0.4, 0.7, 1.0], dtype=F64)
    s_batch = data.score(x, ts, sde)
    lp_batch = data.log_prob_t(x, ts, sde)
    for i in range(5):
        assert torch.allclose(s_batch[i], data.score(x[i : i + 1], float(ts[i]), sde)[0], rtol=1e-12)
        assert torch.allclose(lp_batch[i], data.log_prob_t(x[i : i + 1], float(ts[i]), sde)[0], rtol=1e-12)


def test_log_density_matches_scipy_and_marginal_object():
    data = random_gmm(2, 3, 3)
    sde = sg.SubVPSDE()
    t = 0.3
    x = data.sample(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    a, s2 = float(sde.alpha(t)), float(sde.sigma(t)) ** 2
    ref = np.log(
        sum(
            float(w) * stats.multivariate_normal(a * m.numpy(), a * a * c.numpy() + s2 * np.eye(3)).pdf(x.numpy())
            for w, m, c in zip(data.weights, data.means, data.covs)
        )
    )
    assert np.allclose(data.log_prob_t(x, t, sde).numpy(), ref, rtol=1e-10)
    assert torch.allclose(data.marginal(t, sde).log_prob(x), data.log_prob_t(x, t, sde), rtol=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.2])
def test_density_normalises_2d(t):
    """Trapezoid integral of p_t over a wide 2-D grid is 1 (grid error < 1e-6 at this spacing)."""
    data = GaussianMixture(
        torch.tensor([[-1.5, 0.0], [1.0, 1.0]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]]),
        torch.tensor([0.4, 0.6]),
    )
    sde = sg.VPSDE()
    g = torch.linspace(-6, 6, 601, dtype=F64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    p = torch.exp(data.log_prob_t(pts, t, sde)).reshape(601, 601).numpy()
    total = np.trapezoid(np.trapezoid(p, g.numpy(), axis=1), g.numpy())
    assert total == pytest.approx(1.0, abs=1e-6)
    # negative control: a density missing its normaliser (log w dropped) does not integrate to 1
    wrong = np.exp(data.log_prob_t(pts, t, sde).numpy() - math.log(0.6)).reshape(601, 601)
    assert abs(np.trapezoid(np.trapezoid(wrong, g.numpy(), axis=1), g.numpy()) - 1.0) > 0.1


def test_sample_moments():
    """Sample mean and covariance vs the analytic ones.

    Budget: the mean estimate has covariance Sigma/N; a 5-sigma z-test per coordinate. The control
    is the same test against a mean shifted by 0.1 (~10 standard errors at N=40000).
    """
    data = random_gmm(4, 3, 2)
    x, labels = data.sample_with_labels(40000, generator=torch.Generator().manual_seed(0), dtype=F64)
    se = torch.sqrt(torch.diagonal(data.cov) / x.shape[0])
    z = (x.mean(0) - data.mean) / se
    assert float(z.abs().max()) < 5
    z_wrong = (x.mean(0) - (data.mean + 0.1)) / se
    assert float(z_wrong.abs().max()) > 5
    counts = torch.bincount(labels, minlength=3).numpy()
    chi2 = stats.chisquare(counts, 40000 * data.weights.numpy())
    assert chi2.pvalue > 1e-5


def test_event_shape_and_float32():
    data = Gaussian(torch.zeros(4), torch.eye(4) * 0.5, event_shape=(1, 2, 2))
    sde = sg.VPSDE()
    x = data.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert x.shape == (3, 1, 2, 2) and x.dtype == torch.float32
    s32 = data.score(x, 0.5, sde)
    s64 = data.score(x.double(), 0.5, sde)
    assert s32.dtype == torch.float32 and s32.shape == x.shape
    assert torch.allclose(s32.double(), s64, rtol=1e-5, atol=1e-6)
    # for a Gaussian the score is linear: -(x - alpha mu)/(alpha^2 0.5 + sigma^2)
    a, s2 = sde.alpha(0.5), sde.sigma(0.5) ** 2
    assert torch.allclose(s64, -x.double() / (a * a * 0.5 + s2), rtol=1e-10)


def test_exact_prior_is_the_marginal_at_T():
    data = random_gmm(5, 2, 2)
    sde = sg.VESDE(sigma_max=5.0)
    prior = data.prior(sde)
    assert torch.allclose(prior.means, data.means)
    assert torch.allclose(prior.covs, data.covs + 25.0 * torch.eye(2, dtype=F64))


def test_responsibilities_normalise():
    data = random_gmm(6, 3, 2)
    x = data.sample(20, generator=torch.Generator().manual_seed(1), dtype=F64)
    lr = data.log_responsibilities(x, 0.1, sg.VPSDE())
    assert torch.allclose(torch.logsumexp(lr, 1), torch.zeros(20, dtype=F64), atol=1e-12)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, -1.0]]]), ValueError, "positive definite"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), ValueError, "symmetric"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]], covs=[[[1.0, 0.0], [0.0, 1.0]]] * 2, weights=[0.5, 0.6]), ValueError, "sum to 1"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]], covs=[[[1.0, 0.0], [0.0, 1.0]]] * 2, weights=[1.5, -0.5]), ValueError, "non-negative"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.0, 0.0]] * 3]), ValueError, "covs"),
        (dict(means=[0.0, 0.0], covs=[[[1.0]]]), ValueError, "means"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, 1.0]]], weights=[0.5, 0.5]), ValueError, "weights"),
        (dict(means=[[0.0, float("nan")]], covs=[[[1.0, 0.0], [0.0, 1.0]]]), ValueError, "means"),
        (dict(means="abc", covs=[[[1.0]]]), TypeError, "means"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, 1.0]]], event_shape=(3,)), ValueError, "event_shape"),
    ],
)
def test_bad_mixture_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GaussianMixture(**kwargs)


def test_bad_gaussian_and_inputs():
    with pytest.raises(ValueError, match="cov"):
        Gaussian(torch.zeros(2), torch.eye(3))
    data = Gaussian(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="x must have shape"):
        data.log_prob(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="x"):
        data.log_prob(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        data.score(torch.zeros(4, 2), 2.0, sg.VPSDE())
    with pytest.raises(ValueError, match="n must be"):
        data.sample(0)
    with pytest.raises(ValueError, match="shape"):
        data.score_fn(sg.VPSDE())(torch.zeros(4, 2), torch.zeros(3))

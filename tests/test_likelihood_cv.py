"""Hutchinson with a Gaussian control variate (:class:`sdesolve_gen.divergence.GaussianControlVariate`):
exact for Gaussian data, honest per-sample stderr on non-Gaussian data at several K and D, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from benchmarks.problems import ill_conditioned
from sdesolve_gen.analytic import Gaussian
from sdesolve_gen.divergence import GaussianControlVariate


@pytest.mark.parametrize("method", ["dopri5", "dopri5_ps"])
def test_control_variate_is_exact_for_gaussian_data(device, method):
    """(With shared steps, and with independent steps per sample, where each sample's C_t is taken
    at its own time.) For Gaussian data N(m, S) the VP marginal's score Jacobian is -(a^2 S + s^2 I)^-1 = C_t,
    so every probe's estimate eps^T (J - C_t) eps + tr C_t equals the exact trace: all K
    per-probe log-likelihoods agree with the exact-divergence solve to solver round-off (here
    <= 1e-6 nats at tol 1e-7), while plain Hutchinson with the same probes (negative control)
    spreads by > 0.1 nats."""
    d = 5
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.05 * torch.eye(d, dtype=torch.float64)
    data = Gaussian(torch.randn(d, generator=g, dtype=torch.float64), cov)
    sde = sg.VPSDE()
    x = data.sample(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    kw = dict(rtol=1e-7, atol=1e-7, prior=data.prior(sde), method=method)
    score = data.score_fn(sde)
    exact = sg.log_likelihood(sde, score, x, divergence="exact", **kw).log_prob
    probes = sg.divergence.draw_probes("rademacher", 4, torch.Size((6, d)), generator=torch.Generator().manual_seed(2),
                                       dtype=torch.float64, device=x.device)
    cv = sg.log_likelihood(sde, score, x, divergence=GaussianControlVariate(cov.to(device)), probes=probes, **kw)
    assert float((cv.per_probe - exact[:, None]).abs().max()) <= 1e-6
    plain = sg.log_likelihood(sde, score, x, divergence="hutchinson", probes=probes, **kw)
    assert float((plain.per_probe - exact[:, None]).abs().max()) > 0.1


@pytest.mark.parametrize("D,K", [(4, 8), (12, 4), (12, 32), (32, 8)])
def test_control_variate_stderr_covers_per_sample(D, K):
    """Per sample i, |mean_k l_ik - l_i(exact)| <= t_{K-1,0.975} * stderr_i holds with probability
    ~0.95 when the estimator is unbiased and its stderr honest (per-probe estimates are i.i.d.
    given the trajectory). N = 150: binomial sd = sqrt(.95 * .05 / 150) = 0.018, asserted coverage
    >= 0.95 - 3 sd = 0.897 (solver error at tol 1e-5 is < 1e-3 of the probe spread here).
    Negative control: the same check with stderr / 2 must fall below 0.897. The control
    variate is the mixture's own covariance (law of total covariance), not exact for a mixture."""
    from scipy.stats import t as student_t

    data = ill_conditioned(D, seed=D)
    cov = data.cov  # law of total covariance (GaussianMixture.cov)
    sde = sg.VPSDE()
    n = 150
    x = data.sample(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(rtol=1e-5, atol=1e-5, prior=data.prior(sde))
    exact = sg.log_likelihood(sde, data.score_fn(sde), x, divergence="exact", **kw).log_prob
    h = sg.log_likelihood(sde, data.score_fn(sde), x, divergence=GaussianControlVariate(cov), n_probes=K,
                          generator=torch.Generator().manual_seed(3), **kw)
    assert bool((h.stderr > 0).all())
    q = float(student_t.ppf(0.975, K - 1))
    dev = (h.log_prob - exact).abs()
    lo = 0.95 - 3 * math.sqrt(0.95 * 0.05 / n)
    assert float((dev <= q * h.stderr).double().mean()) >= lo
    assert float((dev <= q * h.stderr / 2).double().mean()) < lo


def test_control_variate_from_data_is_the_sample_covariance():
    x = torch.randn(50, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cv = GaussianControlVariate.from_data(x)
    xf = x.reshape(50, 6)
    c = (xf - xf.mean(0)).T @ (xf - xf.mean(0)) / 49
    assert cv.dim == 6
    torch.testing.assert_close(cv.U @ torch.diag(cv.lam) @ cv.U.T, c, rtol=0, atol=1e-12)


def test_control_variate_bad_input():
    with pytest.raises(ValueError, match="cov must be a square"):
        GaussianControlVariate(torch.ones(2, 3))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianControlVariate(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianControlVariate(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="finite"):
        GaussianControlVariate(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianControlVariate.from_data(torch.ones(1, 3))
    data = ill_conditioned(3)
    sde = sg.VPSDE()
    x = data.sample(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="D=4, but x has D=3"):
        sg.log_likelihood(sde, data.score_fn(sde), x, divergence=GaussianControlVariate(torch.eye(4)))
    with pytest.raises(ValueError, match="divergence must be one of"):
        sg.log_likelihood(sde, data.score_fn(sde), x, divergence=torch.eye(3))

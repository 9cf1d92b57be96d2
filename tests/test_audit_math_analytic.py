"""Audit tests for ``analytic.py`` at non-default values: unequal weights, K = 2, D = 3,
anisotropic covariances, a VP SDE with T = 1.6, per-sample times and per-sample labels.

Oracles, written here: torch.distributions.MultivariateNormal per component combined by
logsumexp (densities, posteriors), autograd of that hand-built density (scores), the
precision-matrix form of the Gaussian conditional (mean mu_u - P_uu^{-1} P_uk (x_k - mu_k),
covariance P_uu^{-1}, a different formula than the Schur-complement one under test), and the
moment formulas of a mixture. Deterministic float64 comparisons; tolerances 1e-10.
"""

from __future__ import annotations

import torch

from sdesolve_gen import VPSDE
from sdesolve_gen.analytic import GaussianMixture, analytic_classifier, analytic_conditional_score, gaussian_conditional

F64 = torch.float64
SDE = VPSDE(0.3, 5.0, T=1.6)
MEANS = torch.tensor([[1.0, -2.0, 0.5], [-1.5, 0.5, 2.0]], dtype=F64)
COVS = torch.stack([torch.tensor([[1.0, 0.4, 0.0], [0.4, 0.6, -0.2], [0.0, -0.2, 0.3]], dtype=F64),
                    torch.tensor([[0.5, -0.1, 0.2], [-0.1, 1.2, 0.0], [0.2, 0.0, 0.8]], dtype=F64)])
W = torch.tensor([0.3, 0.7], dtype=F64)


def _coeffs(t):
    B = 0.3 * t + 0.5 * 4.7 * t**2
    return torch.exp(-B / 2), -torch.expm1(-B)


def _log_components(x, t):
    """(B, K): log w_k + log N(x_b; a_b mu_k, a_b^2 S_k + s2_b I) for per-sample t (B,)."""
    a, s2 = _coeffs(t)
    out = []
    for k in range(2):
        cov = a[:, None, None] ** 2 * COVS[k] + s2[:, None, None] * torch.eye(3, dtype=F64)
        out.append(torch.log(W[k]) + torch.distributions.MultivariateNormal(a[:, None] * MEANS[k], cov).log_prob(x))
    return torch.stack(out, 1)


def _data():
    x = torch.tensor([[0.3, -1.0, 1.2], [2.0, 0.1, -0.4], [-1.0, 1.5, 0.7], [0.0, 0.0, 0.0]], dtype=F64)
    t = torch.tensor([0.05, 0.4, 0.9, 1.55], dtype=F64)
    return x, t


def test_mixture_log_density_posterior_and_score_per_sample_times():
    """Guards log_prob_t, log_responsibilities and score of a weighted mixture with per-sample t
    (a dropped weight, alpha vs alpha^2 on Sigma, a wrong softmax dim or a wrong sign).

    Oracle: hand-built per-component MultivariateNormal log densities + logsumexp, and the
    autograd gradient of that density; tolerance 1e-10.
    """
    gm = GaussianMixture(MEANS, COVS, W)
    x, t = _data()
    lc = _log_components(x, t)
    torch.testing.assert_close(gm.log_prob_t(x, t, SDE), torch.logsumexp(lc, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.log_responsibilities(x, t, SDE), lc - torch.logsumexp(lc, 1, keepdim=True),
                               rtol=1e-10, atol=1e-10)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.logsumexp(_log_components(xg, t), 1).sum(), xg)
    torch.testing.assert_close(gm.score(x, t, SDE), grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.score_fn(SDE)(x, t), grad, rtol=1e-10, atol=1e-10)
    # t = 0: the data density itself
    torch.testing.assert_close(gm.log_prob(x), torch.logsumexp(_log_components(x, torch.zeros(4, dtype=F64)), 1),
                               rtol=1e-10, atol=1e-10)


def test_mixture_moments_and_marginal_object():
    """Guards mean = sum w_k mu_k, cov = sum w_k (S_k + mu_k mu_k^T) - mean mean^T, and
    marginal(t) = mixture of N(a mu_k, a^2 S_k + s2 I) with the same weights (T = 1.6 prior).
    Oracle: the formulas by hand; tolerance 1e-12."""
    gm = GaussianMixture(MEANS, COVS, W)
    m = W[0] * MEANS[0] + W[1] * MEANS[1]
    second = sum(W[k] * (COVS[k] + torch.outer(MEANS[k], MEANS[k])) for k in range(2))
    torch.testing.assert_close(gm.mean, m, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.cov, second - torch.outer(m, m), rtol=1e-12, atol=1e-12)
    pT = gm.prior(SDE)
    a, s2 = _coeffs(torch.tensor(1.6, dtype=F64))
    torch.testing.assert_close(pT.means, a * MEANS, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pT.covs, a**2 * COVS + s2 * torch.eye(3, dtype=F64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pT.weights, W, rtol=1e-12, atol=0)


def test_classifier_and_conditional_score_with_per_sample_labels_and_times():
    """Guards analytic_classifier (label gathered per sample) and analytic_conditional_score
    (each sample scored by its own component at its own time).

    Oracle: the posterior column of the sample's label from the hand-built components; the
    conditional score -(a^2 S_y + s2 I)^{-1}(x - a mu_y) by a dense solve; tolerance 1e-10.
    """
    gm = GaussianMixture(MEANS, COVS, W)
    x, t = _data()
    y = torch.tensor([1, 0, 0, 1])
    lc = _log_components(x, t)
    post = lc - torch.logsumexp(lc, 1, keepdim=True)
    torch.testing.assert_close(analytic_classifier(gm, SDE)(x, t, y), post[torch.arange(4), y], rtol=1e-10, atol=1e-10)
    a, s2 = _coeffs(t)
    ref = torch.stack([-torch.linalg.solve(a[b] ** 2 * COVS[y[b]] + s2[b] * torch.eye(3, dtype=F64), x[b] - a[b] * MEANS[y[b]])
                       for b in range(4)])
    torch.testing.assert_close(analytic_conditional_score(gm, SDE)(x, t, y), ref, rtol=1e-10, atol=1e-10)


def test_gaussian_conditional_matches_precision_form():
    """Guards gaussian_conditional (gain transposed, blocks swapped, sign of the update).

    Oracle: with P = Sigma^{-1}, x_u | x_k ~ N(mu_u - P_uu^{-1} P_uk (x_k - mu_k), P_uu^{-1});
    known coordinates {0, 2} of D = 4; tolerance 1e-10.
    """
    M = torch.tensor([[1.0, 0.2, 0.0, 0.3], [0.5, 1.0, 0.1, 0.0], [0.0, -0.4, 1.0, 0.2], [0.1, 0.0, 0.6, 1.0]], dtype=F64)
    cov = M @ M.T + 0.2 * torch.eye(4, dtype=F64)
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    mask = torch.tensor([True, False, True, False])
    xk = torch.tensor([[1.0, 99.0, -1.0, 99.0], [0.0, -5.0, 3.0, 7.0]], dtype=F64)
    cm, cc = gaussian_conditional(mean, cov, mask, xk)
    P = torch.linalg.inv(cov)
    u, k = ~mask, mask
    Puu_inv = torch.linalg.inv(P[u][:, u])
    ref_m = mean[u] - (xk[:, k] - mean[k]) @ (Puu_inv @ P[u][:, k]).T
    torch.testing.assert_close(cm, ref_m, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cc, Puu_inv, rtol=1e-10, atol=1e-10)

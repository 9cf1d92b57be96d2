"""Analytic targets shared by the benchmarks (exact scores, exact samples, exact densities)."""

from __future__ import annotations

import math

import torch

from sdesolve_gen.analytic import Gaussian, GaussianMixture


def gmm(dim: int, k: int = 5, seed: int = 0) -> GaussianMixture:
    r"""A ``k``-component Gaussian mixture in ``dim`` dimensions (float64, seeded).

    Means :math:`\mu_k \sim \mathcal N(0, 1.5^2 I)`, covariances :math:`C_k = A_k A_k^\top + 0.05 I`
    with :math:`A_k` entries :math:`\mathcal N(0, 0.09/D)`, weights :math:`\propto U(0.5, 1.5)`.
    """
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) * (0.3 / math.sqrt(dim))
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, covs, w / w.sum())


def ill_conditioned(d: int, k: int = 4, seed: int = 0) -> GaussianMixture:
    """k Gaussians in d dims, each with eigenvalues log-spaced in [0.01, 1] (condition number 100)
    along its own random rotation: non-isotropic score Jacobians everywhere (the likelihood trust
    tests' and coverage benchmarks' target)."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(torch.logspace(-2, 0, d, dtype=torch.float64)) @ q.T)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, torch.stack(covs), w / w.sum())


def diag_gaussian(dim: int, seed: int = 0) -> Gaussian:
    """A Gaussian with mean ~ N(0, 1) and diagonal covariance in [0.1, 1] (float64, seeded)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    var = 0.1 + 0.9 * torch.rand(dim, generator=g, dtype=torch.float64)
    return Gaussian(mean, torch.diag(var))


def isotropic_score(mean: torch.Tensor, var: float, sde):
    r"""Closed-form score of :math:`p_t = \mathcal N(\alpha_t m, (\alpha_t^2 v + \sigma_t^2) I)`:
    :math:`s(x, t) = -(x - \alpha_t m)/(\alpha_t^2 v + \sigma_t^2)`. Cost O(B D) per call, so the
    scaling benchmarks measure solver overhead rather than a D x D solve."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha = sde.alpha(t).to(x.dtype)
        var_t = alpha**2 * var + sde.sigma(t).to(x.dtype) ** 2
        if alpha.dim() == 1:
            alpha, var_t = alpha[:, None], var_t[:, None]
        return -(x - alpha * mean.to(x.dtype)) / var_t

    return score

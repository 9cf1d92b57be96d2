r"""Audit tests for ``likelihood.log_likelihood`` at non-default settings, against closed forms.

Data: a class-conditional Gaussian in D = 3, :math:`x_0 \mid y \sim \mathcal N(\mu_y, \Sigma)`,
on a VP SDE with T = 1.6 and eps = 0.05. Its marginal at time t is
:math:`\mathcal N(\alpha_t\mu_y, \alpha_t^2\Sigma + \sigma_t^2 I)`, written here by hand (torch
linear algebra, not the library's ``analytic`` module), as is the exact score. Along the exact
probability-flow map :math:`x \mapsto z` the log-density change is
:math:`\delta = \log p_\varepsilon(x) - \log p_T(z)`, so the PF-ODE's ``delta_log_prob`` must equal
that closed form (evaluated at the returned ``z``) up to the ODE solver's error. Every wiring bug
(eps not passed on, T taken as 1, the drift's divergence D a(t) dropped or scaled, g^2 halved
twice, labels not sliced with their chunk, the fixed-step default step, the per-probe mean)
moves the result by far more than the budget.

Budgets (deterministic, no Monte Carlo): adaptive solvers at tol 1e-8 must reach < 1e-6 nats
(measured max 3.0e-8 for dopri5, 9.8e-10 for dopri5_ps); rk4 with the default 100 steps over
[0.05, 1.6] has a global error O(h^4), h = 0.0155 (measured 5.2e-8 nats): budget 1e-5. A
Rademacher Hutchinson estimate is exact when the score Jacobian is diagonal (diagonal Sigma), so
probes add no noise there (measured stderr 0, error 8.9e-9).
"""

from __future__ import annotations

import math

import pytest
import torch

from sdesolve_gen import VPSDE, log_likelihood

F64 = torch.float64
SDE = VPSDE(0.3, 5.0, T=1.6)
EPS = 0.05
MU = torch.tensor([[1.0, -2.0, 0.5], [-1.5, 0.5, 2.0]], dtype=F64)  # per class


def _coeffs(t):
    t = torch.as_tensor(t, dtype=F64)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    return torch.exp(-B / 2), -torch.expm1(-B)


def _cov_t(cov, t):
    a, s2 = _coeffs(t)
    return a**2 * cov + s2 * torch.eye(3, dtype=F64)


def _score(cov):
    def score(x, t, y):
        a, s2 = _coeffs(t)
        a, s2 = a.reshape(-1, 1, 1), s2.reshape(-1, 1, 1)  # 0-d or per-sample times
        C = a**2 * cov.to(x) + s2 * torch.eye(3, dtype=x.dtype, device=x.device)
        m = a[..., 0] * MU.to(x)[y]
        return -torch.linalg.solve(C, (x - m).unsqueeze(-1)).squeeze(-1)
    return score


def _log_density(x, y, cov, t):
    a, _ = _coeffs(t)
    return torch.distributions.MultivariateNormal(a * MU[y], _cov_t(cov, t)).log_prob(x)


def _data(cov, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1, 1, 0, 1])[:n]
    x = _coeffs(EPS)[0] * MU[y] + torch.randn(n, 3, generator=g, dtype=F64) @ torch.linalg.cholesky(_cov_t(cov, EPS)).T
    return x, y


COV_FULL = torch.tensor([[1.0, 0.4, 0.0], [0.4, 0.6, -0.2], [0.0, -0.2, 0.3]], dtype=F64)
COV_DIAG = torch.diag(torch.tensor([1.5, 0.2, 0.6], dtype=F64))


@pytest.mark.parametrize("method,budget", [("dopri5", 1e-6), ("dopri5_ps", 1e-6), ("rk4", 1e-5)])
def test_log_likelihood_exact_at_non_unit_T_with_labels_and_chunks(method, budget):
    """Guards eps/T wiring, the augmented divergence D a(t) - g^2/2 div s, the prior term, the
    fixed-step default step (T - eps)/100, per-chunk slicing of model_kwargs (chunk_size = 2 over
    B = 5: a partial chunk) and the per-sample step control.

    Oracle: log N(x; alpha_eps mu_y, alpha_eps^2 Sigma + sigma_eps^2 I) by hand (see module doc);
    budget per sample as stated there. Negative control: the same check with labels swapped
    (wrong conditioning) misses by > 0.1 nats.
    """
    x, y = _data(COV_FULL)
    tols = {} if method == "rk4" else {"rtol": 1e-8, "atol": 1e-8}  # a fixed-step method refuses tolerances
    res = log_likelihood(SDE, _score(COV_FULL), x, method=method, eps=EPS,
                         chunk_size=2, divergence="exact", model_kwargs={"y": y}, **tols)
    if method == "rk4":  # the default fixed step (T - eps)/100: 100 steps in each of the 3 chunks
        assert res.n_steps == 3 * 100
    # exact flow: log p_eps(x) = log p_T(z) + delta, so delta = log p_eps(x) - log p_T(z | y)
    ref = _log_density(x, y, COV_FULL, EPS) - _log_density(res.z, y, COV_FULL, SDE.T)
    assert float((res.delta_log_prob - ref).abs().max()) < budget
    wrong = _log_density(x, 1 - y, COV_FULL, EPS) - _log_density(res.z, 1 - y, COV_FULL, SDE.T)
    assert float((wrong - ref).abs().min()) > 0.1
    # the result is the density at eps, not at the SDE's default eps
    off = _log_density(x, y, COV_FULL, SDE.eps) - _log_density(res.z, y, COV_FULL, SDE.T)
    assert float((off - ref).abs().min()) > 10 * budget
    z = res.z
    torch.testing.assert_close(res.prior_log_prob, -1.5 * math.log(2 * math.pi) - 0.5 * (z * z).sum(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.prior_log_prob + res.delta_log_prob, res.log_prob, rtol=0, atol=1e-12)


def test_log_likelihood_standard_prior_term_and_bits_per_dim():
    """Guards the standard prior log N(z; 0, I) on z_T, and the bpd conversion through
    data_range/n_bins (not the defaults).

    Oracle: the standard prior by hand -3/2 log 2 pi - |z|^2/2, and bpd =
    -(log p + 3 log(4/16)) / (3 log 2) for data_range (-1, 3), n_bins 16; tolerance 1e-12.
    """
    x, y = _data(COV_FULL)
    res = log_likelihood(SDE, _score(COV_FULL), x, method="dopri5", rtol=1e-8, atol=1e-8, eps=EPS,
                         divergence="exact", model_kwargs={"y": y})
    z = res.z
    torch.testing.assert_close(res.prior_log_prob, -1.5 * math.log(2 * math.pi) - 0.5 * (z * z).sum(1), rtol=0, atol=1e-12)
    xs = x.clamp(-0.99, 2.99)
    res2 = log_likelihood(SDE, _score(COV_FULL), xs, method="dopri5", rtol=1e-8, atol=1e-8, eps=EPS,
                          divergence="exact", model_kwargs={"y": y}, data_range=(-1.0, 3.0), n_bins=16)
    ref_bpd = -(res2.log_prob + 3 * math.log(4 / 16)) / (3 * math.log(2))
    torch.testing.assert_close(res2.bits_per_dim, ref_bpd, rtol=1e-12, atol=1e-12)


def test_hutchinson_probes_exact_for_diagonal_jacobian_and_stderr_zero():
    """Guards the Hutchinson path: probes (K = 3, drawn from the generator) carried with their
    samples through chunks, per-probe results averaged (not summed), stderr = std/sqrt(K).

    Oracle: with diagonal Sigma the score Jacobian is diagonal, so every Rademacher probe gives
    the exact trace: per-probe values equal each other (stderr < 1e-9) and the exact density
    (budget 1e-6 as above).
    """
    x, y = _data(COV_DIAG)
    res = log_likelihood(SDE, _score(COV_DIAG), x, method="dopri5", rtol=1e-8, atol=1e-8, eps=EPS,
                         divergence="hutchinson", n_probes=3,
                         generator=torch.Generator().manual_seed(1), chunk_size=3, model_kwargs={"y": y})
    ref = _log_density(x, y, COV_DIAG, EPS) - _log_density(res.z, y, COV_DIAG, SDE.T)
    assert res.per_probe.shape == (5, 3)
    assert float((res.delta_log_prob - ref).abs().max()) < 1e-6
    assert float(res.stderr.max()) < 1e-9
    torch.testing.assert_close(res.log_prob, res.per_probe.mean(1), rtol=0, atol=1e-12)

"""Forward marginal consistency: simulate the forward SDE with *raw* ``torchsde.sdeint`` and compare
the samples with the analytic marginal ``p_t``.

Budget. Euler-Maruyama applied to a linear SDE maps a Gaussian mixture to a Gaussian mixture
*exactly*: with ``x_{j+1} = (1 + a_j h) x_j + g_j sqrt(h) z`` the component means scale by
``m = prod(1 + a_j h)`` and the variances follow ``v_{j+1} = (1 + a_j h)^2 v_j + g_j^2 h``. So the
law of the simulated samples is known in closed form, and its distance to the true marginal is
the discretisation bias ``D_bias`` (computed, not guessed). The Kolmogorov-Smirnov statistic of
``N`` samples against the true CDF then satisfies ``D_N <= D_bias + D_crit`` where ``D_crit`` is
the KS quantile at level 1e-5 (the Monte-Carlo part). The negative control simulates a wrong
schedule and must exceed the same bound.
"""

import math

import numpy as np
import pytest
import torch
import torchsde
from scipy import stats

import sdesolve_gen as sg
from sdesolve_gen.analytic import GaussianMixture

F64 = torch.float64
N = 20000
H = 2e-3  # Euler step
OUT_TIMES = [0.0, 0.1, 0.3, 0.6, 1.0]
ALPHA = 1e-5


def make_data() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]),
        torch.tensor(
            [
                [[0.30, 0.10], [0.10, 0.20]],
                [[0.60, -0.25], [-0.25, 0.40]],
                [[0.10, 0.00], [0.00, 0.50]],
            ]
        ),
        torch.tensor([0.3, 0.5, 0.2]),
    )


def em_law(data: GaussianMixture, sde: sg.LinearSDE, t_end: float) -> GaussianMixture:
    """Exact law of Euler-Maruyama samples at ``t_end`` started from p_0 (closed-form recursion)."""
    n = round(t_end / H)
    m, v = 1.0, 0.0
    for j in range(n):
        tj = torch.tensor(j * H, dtype=F64)
        c = 1.0 + float(sde.drift_coef(tj)) * H
        m, v = m * c, c * c * v + float(sde.diffusion2(tj)) * H
    p0 = data.marginal(0.0, sde)
    eye = torch.eye(data.dim, dtype=F64)
    return GaussianMixture(m * p0.means, m * m * p0.covs + v * eye, p0.weights)


def projected_cdf(mix: GaussianMixture, u: torch.Tensor):
    mu = (mix.means @ u).numpy()
    sd = torch.sqrt(torch.einsum("i,kij,j->k", u, mix.covs, u)).numpy()
    w = mix.weights.numpy()
    return lambda y: (w[None, :] * stats.norm.cdf((np.asarray(y)[:, None] - mu) / sd)).sum(1)


def ks_distance(cdf_a, cdf_b, lo: float, hi: float) -> float:
    y = np.linspace(lo, hi, 20001)
    return float(np.abs(cdf_a(y) - cdf_b(y)).max())


def simulate(sde: sg.LinearSDE, data: GaussianMixture, seed: int, times=OUT_TIMES) -> torch.Tensor:
    """Raw torchsde Euler from exact p_0 samples; output times are multiples of the step H."""
    g = torch.Generator().manual_seed(seed)
    x0 = data.marginal(0.0, sde).sample(N, generator=g, dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=times[-1], size=x0.shape, dtype=F64, entropy=seed, dt=H)
    return torchsde.sdeint(sde, x0, torch.tensor(times, dtype=F64), method="euler", dt=H, bm=bm)


def ks_check(xs: torch.Tensor, sde: sg.LinearSDE, data: GaussianMixture, seed: int, times=OUT_TIMES):
    """(t, KS statistic, bound, bias) for two random projections at every output time > 0."""
    g = torch.Generator().manual_seed(seed + 1)
    d_crit = stats.kstwo.ppf(1 - ALPHA, N)
    out = []
    for i, t in enumerate(times[1:], start=1):
        truth, law = data.marginal(t, sde), em_law(data, sde, t)
        for _ in range(2):
            u = torch.randn(2, generator=g, dtype=F64)
            u = u / u.norm()
            y = (xs[i] @ u).numpy()
            cdf_true = projected_cdf(truth, u)
            d_bias = ks_distance(projected_cdf(law, u), cdf_true, y.min() - 1, y.max() + 1)
            d_n = stats.kstest(y, cdf_true).statistic
            out.append((t, d_n, d_bias + d_crit, d_bias))
    return out


SDES = {
    "vp": sg.VPSDE(),
    "subvp": sg.SubVPSDE(),
    "ve": sg.VESDE(sigma_min=0.01, sigma_max=10.0),
    "cosine": sg.CosineVPSDE(T=0.99),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SDES))
def test_forward_sde_matches_analytic_marginal(name):
    sde = SDES[name]
    data = make_data()
    times = [t for t in OUT_TIMES if t <= sde.T]  # cosine's T < 1 stops at 0.6
    xs = simulate(sde, data, seed=11, times=times)
    for t, d_n, bound, d_bias in ks_check(xs, sde, data, seed=11, times=times):
        assert d_n <= bound, f"t={t}: KS {d_n:.4f} > bias {d_bias:.4f} + MC -> marginal mismatch"


@pytest.mark.slow
def test_wrong_schedule_is_rejected():
    """Negative control: simulate sub-VP (VP's drift, a smaller diffusion: a plausible bug) and
    test the samples against the VP marginal with the same bound."""
    data = make_data()
    truth_sde, wrong_sde = sg.VPSDE(), sg.SubVPSDE()
    xs = simulate(wrong_sde, data, seed=11)
    results = ks_check(xs, truth_sde, data, seed=11)
    assert any(d_n > bound for _, d_n, bound, _ in results)
    # and at intermediate times every projection rejects
    assert all(d_n > bound for t, d_n, bound, _ in results if t in (0.1, 0.3))


def test_gaussian_moments_through_torchsde():
    """Gaussian data, VP: per-coordinate mean and variance at t=0.5 from torchsde Euler.

    Budget: bias = |EM-law moment - true moment| (closed form above), MC: mean SE = sqrt(var/N),
    variance SE = var*sqrt(2/(N-1)); 5-sigma band. Control: the variance of a wrong schedule
    (sub-VP: same drift, smaller diffusion) is rejected by the same band.
    """
    data = sg.analytic.Gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]]))
    sde = sg.VPSDE()
    g = torch.Generator().manual_seed(3)
    n = 20000
    x0 = data.sample(n, generator=g, dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=0.5, size=x0.shape, dtype=F64, entropy=3, dt=H)
    xt = torchsde.sdeint(sde, x0, torch.tensor([0.0, 0.5], dtype=F64), method="euler", dt=H, bm=bm)[-1]
    truth, law = data.marginal(0.5, sde), em_law(data, sde, 0.5)
    var_true = torch.diagonal(truth.cov)
    mean_bias = (law.mean - truth.mean).abs()
    var_bias = (torch.diagonal(law.cov) - var_true).abs()
    mean_se = torch.sqrt(var_true / n)
    var_se = var_true * math.sqrt(2 / (n - 1))
    assert bool(((xt.mean(0) - truth.mean).abs() <= mean_bias + 5 * mean_se).all())
    assert bool(((xt.var(0) - var_true).abs() <= var_bias + 5 * var_se).all())
    wrong_var = torch.diagonal(data.marginal(0.5, sg.SubVPSDE()).cov)
    assert bool(((xt.var(0) - wrong_var).abs() > var_bias + 5 * var_se).any())

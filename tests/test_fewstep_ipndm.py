"""iPNDM: a hand-written recursion on a non-uniform grid (every Adams-Bashforth weight and the
warm-up exercised), the exact-mixture law with a wrong-score control, and option checks. Its
order (declared 2, see the docstring) is measured by the registry test in test_multistep.py."""

import math

import pytest
import torch
from _sampler_configs import F64, target

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import SAMPLERS


def test_ipndm_values_on_a_nonuniform_grid():
    """y = x/alpha, rho = sigma/alpha, e_i = -sigma_i s(x_i, t_i); y' = y + (rho' - rho) * AB_p(e),
    AB weights (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24 written here, warm-up p = i + 1.
    Tolerance 1e-12 relative (float64 round-off). Control: AB3 weights in place of AB4 differ."""
    sde, data = sg.VPSDE(), target()
    score = data.score_fn(sde)
    x_T = data.prior(sde).sample(50, generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = torch.tensor([1.0, 0.83, 0.7, 0.52, 0.41, 0.33, 0.2, 0.11, 0.05, 0.02, 1e-3], dtype=F64)
    ab = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}

    def replay(top):
        x, es = x_T, []
        for i in range(len(ts) - 1):
            t, t1 = ts[i], ts[i + 1]
            a, s = math.exp(float(sde.log_alpha(t))), math.sqrt(float(sde.sigma2(t)))
            a1, s1 = math.exp(float(sde.log_alpha(t1))), math.sqrt(float(sde.sigma2(t1)))
            es.append(-s * score(x, t.expand(x.shape[0])))
            w = ab[min(top, i + 1)]
            d = sum(wj * es[-1 - j] for j, wj in enumerate(w))
            x = a1 * (x / a + (s1 / a1 - s / a) * d)
        return x

    sol = S.ipndm(sde, score, x_T, ts)
    want = replay(4)
    assert sol.nfe == len(ts) - 1
    assert float((sol.x - want).norm() / want.norm()) < 1e-12
    wrong = replay(3)
    assert float((sol.x - wrong).norm() / want.norm()) > 1e-5
    assert torch.allclose(S.ipndm(sde, score, x_T, ts, order=2).x, replay(2), rtol=1e-12, atol=1e-12)


def test_ipndm_law_matches_the_mixture_and_rejects_a_wrong_score():
    """Budget: e_j = (mean_b (x_bj - ref_bj)^2)^{1/2} against the dopri5 (1e-9) flow of the same
    exact-prior x_T, asserted <= 0.01, bounds |mean(x_j) - mean(ref_j)| (Cauchy-Schwarz); ref's mean
    is within 5 SE = 5 (var_j / N)^{1/2} of the closed-form mean (exact-law sample). Check:
    |mean(x_j) - m_j| <= 0.01 + 5 SE. Control: the score of the mixture with means + 0.5 fails it."""
    sde, data = sg.VPSDE(), target()
    n = 1000
    x_T = data.prior(sde).sample(n, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = S.ode(sde, data.score_fn(sde), x_T, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
    exact = data.marginal(sde.eps, sde)
    se = torch.sqrt(torch.diagonal(exact.cov) / n)
    spec = SAMPLERS["ipndm"]
    ts = spec.timesteps(sde, 40)

    def check(d):
        x = spec(sde, d.score_fn(sde), x_T, ts).x
        return bool(((x.mean(0) - exact.mean).abs() <= 0.01 + 5 * se).all()), x

    ok, x = check(data)
    assert bool(((x - ref).pow(2).mean(0).sqrt() <= 0.01).all())
    assert ok
    bad, _ = check(sg.analytic.GaussianMixture(data.means + 0.5, data.covs, data.weights))
    assert not bad


def test_ipndm_bad_order():
    sde = sg.VPSDE()
    for order in (0, 5, 2.0):
        with pytest.raises(ValueError, match="order"):
            S.ipndm(sde, lambda x, t: -x, torch.zeros(4, 2), timesteps(sde, 4), order=order)

"""Value tests for bug classes that survived the suite once (each asserts a number, not a property).

Each test computes the expected value from independent math (closed forms written here, or
score_sde's published definition) and would fail on the planted bug named in its docstring.
"""

from __future__ import annotations

import math

import torch

import sdesolve_gen as sg
from sdesolve_gen.samplers import Run, corrector_alpha

F64 = torch.float64


def test_pc_corrector_alpha_is_score_sde_one_minus_beta_on_vp():
    """score_sde: alpha_i = 1 - beta_i with beta_i = (beta_min + t_i (beta_max - beta_min)) / N on VP,
    and 1 on VE. Our grid form (alpha(t_i)/alpha(t_{i+1}))^2 = exp(-int beta) must be close to that
    (within the O(beta_i^2) difference of exp(-b) and 1 - b) and below 1; the inverted ratio
    (planted bug: 1.49 at the first step) is above 1."""
    vp = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    N = 50
    ts = sg.timesteps(vp, N)
    run = Run("t", vp, lambda x, t: -x, torch.zeros(2, 2, dtype=F64), ts, None)
    dt = float(ts[0] - ts[1])
    for i in (0, 10, 25, 49):
        beta_i = 0.1 + float(ts[i]) * 19.9
        b = beta_i / N  # score_sde's discrete beta at t_i (N steps over [0, 1])
        a = corrector_alpha(run, i)
        assert a < 1.0
        # |exp(-I) - (1 - b)| <= I^2/2 + |I - b|, I = int_{t_{i+1}}^{t_i} beta = beta_i dt - 19.9 dt^2 / 2 exactly
        integral = beta_i * dt - 19.9 * dt * dt / 2
        budget = integral**2 / 2 + 19.9 * dt * dt / 2 + beta_i * abs(dt - 1.0 / N) + 1e-12
        assert abs(a - (1.0 - b)) <= budget, (i, a, 1 - b, budget)
    assert abs(corrector_alpha(run, 0) - math.exp(-(vp.int_beta(ts[0]) - vp.int_beta(ts[1])).item())) < 1e-12
    ve = sg.VESDE()
    run_ve = Run("t", ve, lambda x, t: -x, torch.zeros(2, 2, dtype=F64), sg.timesteps(ve, N), None)
    assert corrector_alpha(run_ve, 0) == 1.0


def test_pc_passes_corrector_alpha_to_the_langevin_step(monkeypatch):
    """The predictor-corrector hands the corrector alpha_i < 1 on VP (the inverted value 1/(1-beta) > 1)."""
    import sdesolve_gen.samplers.langevin as L

    seen = []
    real = L.langevin_step
    monkeypatch.setattr(L, "langevin_step", lambda run, x, i, snr, alpha_i: seen.append(alpha_i) or real(run, x, i, snr, alpha_i))
    sde = sg.VPSDE()
    sg.predictor_corrector(sde, lambda x, t: -x, torch.zeros(4, 2, dtype=F64), sg.timesteps(sde, 50), snr=0.01,
                           generator=torch.Generator().manual_seed(0))
    assert len(seen) == 50 and all(0.0 < a < 1.0 for a in seen)
    assert abs(seen[0] - 0.67) < 0.01  # exp(-(int beta over the first 1/50)) = exp(-0.398)


def test_inpaint_ode_moves_an_independent_block_exactly_like_ddim():
    """Independent blocks (diagonal covariance, separable score): the unknown coordinate of
    inpaint(sampler="ode") must follow unconditional DDIM (DPM-Solver-1) from the same x_T exactly
    (float64 rounding), and the known one must equal x_known. A flipped eps term (planted bug)
    breaks the match (its unknown-coordinate variance collapses towards 0)."""
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(torch.tensor([1.0, -1.0], dtype=F64), torch.diag(torch.tensor([0.3, 0.5], dtype=F64)))
    n = 500
    x_known = data.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    mask = torch.tensor([True, False])
    ts = sg.timesteps(sde, 30, kind="logsnr")
    x = sg.inpaint(sde, data.score_fn(sde), x_known, mask, ts, sampler="ode", x_T=x_T,
                   generator=torch.Generator().manual_seed(1)).x
    ddim = sg.dpm_solver(sde, data.score_fn(sde), x_T, ts, order=1).x
    assert torch.allclose(x[:, 1], ddim[:, 1], rtol=1e-10, atol=1e-10)
    assert torch.equal(x[:, 0], x_known[:, 0])
    assert float(x[:, 1].var()) > 0.3  # (the data variance is 0.5; a collapse would be near 0)


def test_interpolate_is_spherical_in_latent_space(monkeypatch):
    """The midpoint of interpolate() is slerp(z_a, z_b, 1/2) = (z_a + z_b) / (2 cos(theta/2)), not the
    linear midpoint (planted bug), checked with encode/decode replaced by the identity."""
    import sdesolve_gen.likelihood as lik

    monkeypatch.setattr(lik, "encode", lambda sde, score_fn, x, **kw: x)
    monkeypatch.setattr(lik, "decode", lambda sde, score_fn, z, **kw: z)
    za = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    zb = torch.tensor([[0.0, 2.0, 0.0]], dtype=F64)
    out = lik.interpolate(sg.VPSDE(), lambda x, t: -x, za, zb, 3)
    theta = math.pi / 2
    expected = (za + zb)[0] * math.sin(theta / 2) / math.sin(theta)
    assert torch.allclose(out[1], expected, atol=1e-12)
    assert not torch.allclose(out[1], 0.5 * (za + zb)[0], atol=1e-3)  # control: the linear midpoint differs
    assert torch.allclose(out[0], za[0]) and torch.allclose(out[2], zb[0])

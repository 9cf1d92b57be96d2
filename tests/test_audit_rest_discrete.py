"""Audit value tests for sdesolve_gen.discrete (DDPM schedules as a linear SDE).

Peers: diffusers 0.42's DDPMScheduler builds the betas of the three named schedules (float32),
and scipy's PchipInterpolator is the monotone cubic the module docstring says it implements
(Fritsch-Carlson slopes, three-point end condition). Values are non-default: N = 50 (so 1/N and
N t - 1 are visible), non-default beta_start / beta_end, off-knot times in the first and last
segments (the end slopes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdesolve_gen.discrete import DiscreteVPSDE, betas_for_schedule

F64 = torch.float64
N = 50


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers_ddpm_scheduler(schedule):
    """Bug class: a schedule formula wrong (sqrt not squared, the cosine offset or cap wrong, the
    linspace end points swapped, num_train_timesteps not used). Peer: diffusers' DDPMScheduler with
    the same arguments; it works in float32, so the tolerance is 2e-6 relative (float32 rounding
    of values <= 1, a few ulps), atol 1e-9."""
    from diffusers import DDPMScheduler

    kw = dict(num_train_timesteps=N, beta_start=0.0003, beta_end=0.05)
    ref = DDPMScheduler(beta_schedule=schedule, **kw).betas.to(F64)
    got = betas_for_schedule(schedule, **kw)
    assert got.dtype == F64 and got.shape == (N,)
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=1e-9)


def _pchip_sde():
    betas = betas_for_schedule("scaled_linear", N, 0.0005, 0.04)
    acp = torch.cumprod(1 - betas, 0)
    return DiscreteVPSDE(acp), acp


def test_schedule_is_scipy_pchip_through_the_knots_with_its_derivative():
    """Bug class: a Hermite basis coefficient wrong, slopes not divided by N (or m[j] / m[j + 1]
    swapped), the end conditions wrong, beta not times N, the segment index off by one, the knot
    B(0) = 0 missing. Peer: scipy's PchipInterpolator on (j/N, -log acp_{j-1}) with B(0) = 0, and
    its derivative; tolerance 1e-10 (float64 rounding of cubic evaluations of values <= 10)."""
    from scipy.interpolate import PchipInterpolator

    sde, acp = _pchip_sde()
    knots = np.arange(N + 1) / N
    Bk = np.concatenate([[0.0], -np.log(acp.numpy())])
    p = PchipInterpolator(knots, Bk)
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(0, 1, 40), [0.3 / N, 0.7 / N, 1 - 0.4 / N, 1 - 0.05 / N, 1.0]])
    tt = torch.tensor(t, dtype=F64)
    torch.testing.assert_close(sde.int_beta(tt), torch.tensor(p(t)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.beta(tt), torch.tensor(p(t, 1)), rtol=1e-10, atol=1e-10)
    # everything derived from B: alpha, sigma^2, their derivatives, g^2 (closed forms)
    Bt, dB = torch.tensor(p(t)), torch.tensor(p(t, 1))
    torch.testing.assert_close(sde.log_alpha(tt), -0.5 * Bt, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.sigma2(tt), 1 - torch.exp(-Bt), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.dlog_alpha_dt(tt), -0.5 * dB, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sde.dsigma2_dt(tt), dB * torch.exp(-Bt), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sde.diffusion2(tt), dB, rtol=1e-10, atol=1e-10)
    # at the knots alpha^2 is exactly the table
    tk = sde.time_of_timestep(torch.arange(N, dtype=F64))
    torch.testing.assert_close(torch.exp(2 * sde.log_alpha(tk)), acp, rtol=1e-12, atol=0)


def test_time_map_eps_default_and_trained_betas_at_N_50():
    """Bug class: tau = N t - 1 with the -1 or the N dropped, eps default not 1/N, trained_betas
    ignored (or not cumprod'ed). Oracle: t_k = (k + 1)/N by hand, eps = 1/50 = 0.02."""
    sde, acp = _pchip_sde()
    k = torch.tensor([0.0, 12.5, 49.0], dtype=F64)
    torch.testing.assert_close(sde.time_of_timestep(k), (k + 1) / N, rtol=0, atol=1e-15)
    torch.testing.assert_close(sde.timestep_of((k + 1) / N), k, rtol=0, atol=1e-12)
    assert sde.eps == pytest.approx(1.0 / N, abs=1e-15) and sde.T == 1.0 and sde.num_train_timesteps == N
    assert DiscreteVPSDE(acp, eps=0.05).eps == 0.05
    betas = torch.linspace(0.001, 0.08, 20, dtype=F64) ** 1.5
    tb = DiscreteVPSDE.from_betas(trained_betas=betas.numpy())
    torch.testing.assert_close(tb.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-14, atol=0)
    assert tb.num_train_timesteps == 20 and tb.eps == pytest.approx(1 / 20)
    assert DiscreteVPSDE.from_betas("linear", 30, 0.001, 0.03, eps=0.07).eps == 0.07
    lin = DiscreteVPSDE.from_betas("linear", 30, 0.001, 0.03)
    torch.testing.assert_close(lin.alphas_cumprod, torch.cumprod(1 - torch.linspace(0.001, 0.03, 30, dtype=F64), 0),
                               rtol=1e-14, atol=0)


def test_t_of_lambda_inverts_the_half_log_snr_including_the_end_segments():
    """Bug class: softplus(-2 lam) with a wrong factor, the searchsorted interval off by one, the
    bisection keeping the wrong half, the clamp to [0, T] missing. Oracle: lam(t) = log alpha -
    log sigma = -B/2 - log(1 - e^-B)/2 from the (peer-checked) B, then t back to 1e-9."""
    sde, _ = _pchip_sde()
    t = torch.tensor([0.2 / N, 1.0 / N, 0.37, 0.81, 1 - 0.3 / N, 1.0], dtype=F64)
    Bt = sde.int_beta(t)
    lam = -0.5 * Bt - 0.5 * torch.log(-torch.expm1(-Bt))
    torch.testing.assert_close(sde.t_of_lambda(lam), t, rtol=0, atol=1e-9)
    # beyond the schedule: clamped to T (lambda below lambda(T)) and towards 0 (very large lambda)
    far = sde.t_of_lambda(torch.tensor([float(lam[-1]) - 3.0, 30.0], dtype=F64))
    assert float(far[0]) == pytest.approx(1.0, abs=1e-12) and 0.0 <= float(far[1]) < 1e-6
    assert math.isfinite(float(far[1]))

"""Audit value tests for sdesolve_gen.pretrained (scheduler configs, EDM preconditioning at a
non-default sigma_data, model dtype) and sdesolve_gen.data (toy targets, level maps).

Oracles: diffusers 0.42's DDPMScheduler for the alphas_cumprod of a config; EDM's
preconditioning (Karras et al. 2022, Table 1) written here for a denoiser that is exact for
N(0, v I) data, D = v/(v + s^2) x; closed forms for the toy mixtures' means.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import data as sd
from sdesolve_gen.pretrained import DenoiserScore, TimestepModelScore, sde_from_scheduler_config

F64 = torch.float64


def test_sde_from_scheduler_config_reads_every_field():
    """Bug class: a config field ignored (num_train_timesteps, beta_schedule, beta_start,
    beta_end, trained_betas) or prediction_type not returned. Peer: diffusers' DDPMScheduler
    built from the same config; float32 there, so rtol 2e-6."""
    from diffusers import DDPMScheduler

    cfg = {"num_train_timesteps": 40, "beta_schedule": "scaled_linear", "beta_start": 0.0004, "beta_end": 0.03,
           "prediction_type": "v_prediction"}
    sde, pred = sde_from_scheduler_config(cfg)
    assert pred == "v_prediction" and sde.num_train_timesteps == 40
    ref = DDPMScheduler(**cfg).alphas_cumprod.to(F64)
    torch.testing.assert_close(sde.alphas_cumprod, ref, rtol=2e-6, atol=0)
    tb = [0.01, 0.02, 0.05, 0.1]
    sde2, pred2 = sde_from_scheduler_config({"trained_betas": tb})
    torch.testing.assert_close(sde2.alphas_cumprod, torch.cumprod(1 - torch.tensor(tb, dtype=F64), 0), rtol=1e-14, atol=0)
    assert pred2 == "epsilon"


def test_edm_preconditioning_uses_the_given_sigma_data_and_model_dtype():
    """Bug class: sigma_data not stored/used (invisible at the default 0.5), c_in / c_skip / c_out
    / c_noise = log(sigma)/4 with a factor wrong, the model not run in its dtype. Oracle: EDM's
    Table 1 with sigma_d = 0.3 inverted by hand for the exact denoiser of N(0, v I), v = 0.7, on a
    VP SDE with T = 1.4; the exact score is -x/(alpha^2 v + sigma^2). A float32 model (its
    parameter sets the dtype) must receive float32 inputs."""
    sdata, v = 0.3, 0.7
    vp = sg.VPSDE(T=1.4)
    seen = {}

    class RawF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float32), requires_grad=False)

        def forward(self, xin, c_noise):
            seen["dtype"] = (xin.dtype, c_noise.dtype)
            sig = torch.exp(4 * c_noise.double()).reshape(-1, 1)
            x = xin.double() * torch.sqrt(sig**2 + sdata**2)
            D = v / (v + sig**2) * x
            c_skip, c_out = sdata**2 / (sig**2 + sdata**2), sig * sdata / torch.sqrt(sig**2 + sdata**2)
            return ((D - c_skip * x) / c_out).to(torch.float32) * self.w

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    score = DenoiserScore(RawF(), vp, preconditioning="edm", sigma_data=sdata)
    for t in (0.1, 0.7, 1.3):
        Bt = 0.1 * t + 0.5 * 19.9 * t * t
        a2, s2 = math.exp(-Bt), 1 - math.exp(-Bt)
        got = score(x, t)
        assert got.dtype == F64 and seen["dtype"] == (torch.float32, torch.float32)
        torch.testing.assert_close(got, -x / (a2 * v + s2), rtol=2e-5, atol=1e-6)
    # negative control: the default sigma_data = 0.5 is rejected by the same tolerance
    wrong = DenoiserScore(RawF(), vp, preconditioning="edm")(x, 0.1).detach()
    Bt = 0.1 * 0.1 + 0.5 * 19.9 * 0.01
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, -x / (math.exp(-Bt) * v + 1 - math.exp(-Bt)), rtol=2e-5, atol=1e-6)


def test_timestep_model_score_discrete_timestep_at_N_not_1000():
    """Bug class: tau = N t - 1 using 1000 instead of the schedule's N, per-sample times not passed.
    Oracle: the model sees 40 t - 1 for each sample."""
    sde = sg.DiscreteVPSDE.from_betas("linear", 40, 0.001, 0.05)
    seen = {}

    def net(x, ts):
        seen["ts"] = ts
        return torch.zeros_like(x)

    x = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.025, 0.5, 1.0], dtype=F64)
    TimestepModelScore(net, sde, "epsilon")(x, t)
    torch.testing.assert_close(seen["ts"], 40 * t - 1, rtol=0, atol=1e-12)
    TimestepModelScore(net, sg.VPSDE(), "epsilon", timestep=250.0)(x, t)  # continuous: c t
    torch.testing.assert_close(seen["ts"], 250.0 * t, rtol=0, atol=1e-12)


def test_toy_targets_closed_form_means_and_covs():
    """Bug class: a toy constructor's angle step, radius, centring, scale or std^2 wrong.
    Oracles: eight means r (cos k pi/4, sin k pi/4); two_moons centred at 0 (mean of its means);
    checkerboard 32 centres, each in a unit square with i + j even; covariances std^2 I."""
    g8 = sd.eight_gaussians(radius=3.0, std=0.25)
    k = torch.arange(8, dtype=F64)
    torch.testing.assert_close(g8.means, 3.0 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1),
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(g8.covs, 0.0625 * torch.eye(2, dtype=F64).expand(8, 2, 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(g8.weights, torch.full((8,), 0.125, dtype=F64), rtol=0, atol=1e-15)
    tm = sd.two_moons(n_per_moon=7, std=0.1)
    assert tm.means.shape == (14, 2)
    torch.testing.assert_close(tm.means.mean(0), torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
    a = torch.linspace(0, math.pi, 7, dtype=F64)
    torch.testing.assert_close(tm.means[:7], 1.5 * (torch.stack([torch.cos(a), torch.sin(a)], 1) - torch.tensor([0.5, 0.25], dtype=F64)),
                               rtol=0, atol=1e-14)
    cb = sd.checkerboard(std=0.05)
    assert cb.means.shape == (32, 2)
    cell = torch.floor(cb.means + 2).long()
    assert bool(((cell.sum(1) % 2) == 0).all()) and bool(((cell >= 0) & (cell <= 3)).all())
    assert len({tuple(r) for r in cb.means.tolist()}) == 32
    sr = sd.swiss_roll(n=5)
    th = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 5, dtype=F64)
    torch.testing.assert_close(sr.means.norm(dim=1), th / 7.0, rtol=1e-13, atol=0)


def test_level_maps_on_a_non_default_range_round_trip():
    """Bug class: to_range step (hi - lo)/(n - 1) with n instead of n - 1, lo not added, from_range
    not the inverse or not clipped. Oracle: level k -> lo + k (hi - lo)/(n - 1) by hand."""
    k = torch.arange(17, dtype=torch.float32)
    x = sd.to_range(k, (-1.0, 3.0), n_levels=17)
    torch.testing.assert_close(x, -1.0 + k * 0.25, rtol=0, atol=1e-6)
    torch.testing.assert_close(sd.from_range(x + 0.1, (-1.0, 3.0), n_levels=17), k, rtol=0, atol=0)
    assert float(sd.from_range(torch.tensor([5.0, -4.0]), (-1.0, 3.0), n_levels=17).max()) == 16.0
    pytest.importorskip("sklearn")
    lv = sd.load_digits(as_levels=True)
    img = sd.load_digits(data_range=(0.0, 2.0))
    assert lv.shape == (1797, 1, 8, 8) and float(lv.max()) == 16.0 and float(lv.min()) == 0.0
    torch.testing.assert_close(img, lv / 8.0, rtol=0, atol=1e-6)

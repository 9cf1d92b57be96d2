"""Audit 8 (flow): pretrained-model wrappers, gather, torchsde contract helpers, package exports."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import _torchsde_contract as tc
from sdesolve_gen import pretrained as pt
from sdesolve_gen._gather import gather_in_order


class Rec(torch.nn.Module):
    """Records its inputs; returns a fixed function of them (2C channels when asked)."""

    def __init__(self, dtype=torch.float32, double_channels=False, wrap=None):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1, dtype=dtype))
        self.double_channels, self.wrap = double_channels, wrap
        self.calls = []

    def forward(self, x, ts, **kw):
        self.calls.append((x.clone(), ts.clone(), kw))
        out = 0.3 * x + ts.reshape(-1, *([1] * (x.dim() - 1))) * 1e-3 + kw.get("shift", 0.0) + self.p
        if self.double_channels:
            out = torch.cat([out, 100 + out], 1)
        if self.wrap == "sample":
            return SimpleNamespace(sample=out)
        if self.wrap == "tuple":
            return (out,)
        return out


def _ab(sde, t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(sde.log_alpha(t)), torch.sqrt(sde.sigma2(t))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_timestep_model_score_scale_kind_dtype_kwargs(kind):
    sde = sg.VPSDE(beta_min=0.2, beta_max=12.0)
    m = Rec(dtype=torch.float32, double_channels=True, wrap="sample")
    sc = pt.TimestepModelScore(m, sde, kind, timestep=250.0, learned_variance=True)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    s = sc(x, t, shift=0.25)
    xin, tin, kw = m.calls[-1]
    assert xin.dtype == torch.float32 and tin.dtype == torch.float32 and kw == {"shift": 0.25}
    torch.testing.assert_close(tin, (250.0 * t).float())
    pred = (0.3 * x.float() + tin.view(-1, 1, 1, 1) * 1e-3 + 0.25).double()
    a, sig = _ab(sde, t)
    a, sig = a.view(-1, 1, 1, 1), sig.view(-1, 1, 1, 1)
    if kind == "epsilon":
        ref = -pred / sig
    elif kind == "v_prediction":  # v = a eps - sig x0, x = a x0 + sig eps, a^2 + sig^2 = 1
        eps = sig * x + a * pred
        ref = -eps / sig
    else:
        ref = (a * pred - x) / sig**2
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-5)
    # a scalar time is expanded
    s0 = sc(x, 0.5, shift=0.25)
    torch.testing.assert_close(m.calls[-1][1], torch.full((3,), 125.0))
    assert s0.shape == x.shape


def test_timestep_model_score_discrete_timesteps_and_config():
    cfg = {"num_train_timesteps": 200, "beta_schedule": "scaled_linear", "beta_start": 0.001, "beta_end": 0.03,
           "prediction_type": "v_prediction"}
    sde, pred = pt.sde_from_scheduler_config(cfg)
    assert pred == "v_prediction" and sde.num_train_timesteps == 200
    betas = torch.linspace(0.001**0.5, 0.03**0.5, 200, dtype=torch.float64) ** 2
    torch.testing.assert_close(torch.as_tensor(sde.alphas_cumprod, dtype=torch.float64),
                               torch.cumprod(1 - betas, 0), rtol=1e-6, atol=1e-9)
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(**cfg).alphas_cumprod.double()
    torch.testing.assert_close(torch.as_tensor(sde.alphas_cumprod, dtype=torch.float64), ref, rtol=1e-5, atol=1e-7)
    sde2, pred2 = pt.sde_from_scheduler_config({})
    assert pred2 == "epsilon" and sde2.num_train_timesteps == 1000
    m = Rec(dtype=torch.float64, wrap="tuple")
    sc = pt.TimestepModelScore(m, sde, "eps", num_train_timesteps=200)
    t = torch.tensor([0.05, 0.5, 1.0], dtype=torch.float64)
    sc(torch.zeros(3, 2, dtype=torch.float64), t)
    torch.testing.assert_close(m.calls[-1][1], 200 * t - 1)
    with pytest.raises(ValueError):
        pt.TimestepModelScore(m, sde, "eps", num_train_timesteps=100)
    with pytest.raises(ValueError):
        pt.sde_from_scheduler_config({"rescale_betas_zero_snr": True})


@pytest.mark.parametrize("precond", [None, "edm"])
def test_denoiser_score_by_hand(precond):
    sde = sg.VPSDE()
    m = Rec(dtype=torch.float64)
    sc = pt.DenoiserScore(m, sde, preconditioning=precond, sigma_data=0.8)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.6, 0.95], dtype=torch.float64)
    s = sc(x, t, shift=0.1)
    a, sig = _ab(sde, t)
    sbar = (sig / a)
    xin, sin, kw = m.calls[-1]
    xv = x / a[:, None]
    if precond is None:
        torch.testing.assert_close(xin, xv)
        torch.testing.assert_close(sin, sbar)
        d = 0.3 * xv + sbar[:, None] * 1e-3 + 0.1
    else:
        sd2 = 0.64
        c_in = 1 / torch.sqrt(sbar**2 + sd2)
        c_skip = sd2 / (sbar**2 + sd2)
        c_out = sbar * 0.8 / torch.sqrt(sbar**2 + sd2)
        c_noise = 0.25 * torch.log(sbar)
        torch.testing.assert_close(xin, c_in[:, None] * xv)
        torch.testing.assert_close(sin, c_noise)
        F = 0.3 * c_in[:, None] * xv + c_noise[:, None] * 1e-3 + 0.1
        d = c_skip[:, None] * xv + c_out[:, None] * F
    assert kw == {"shift": 0.1}
    ref = (a[:, None] * d - x) / sig[:, None] ** 2
    torch.testing.assert_close(s, ref, rtol=1e-10, atol=1e-10)


def test_model_output_variants():
    x = torch.zeros(2, 4, 3)
    y = torch.ones(2, 8, 3)
    assert pt.model_output(SimpleNamespace(sample=y), torch.zeros(2, 8, 3)) is y
    assert torch.equal(pt.model_output((y,), x, channels=4), y[:, :4])
    with pytest.raises(ValueError):
        pt.model_output(y, x)
    with pytest.raises(TypeError):
        pt.model_output("nope", x)
    assert pt.PREDICTION_TYPES["sample"] == "x0" and pt.PREDICTION_TYPES["v_prediction"] == "v"


def test_gather_in_order_single_and_gloo(tmp_path):
    mine = [(2, "c"), (0, "a")]
    assert gather_in_order(mine, 1, False) is mine
    script = textwrap.dedent(f"""
        import torch.distributed as dist
        from sdesolve_gen._gather import gather_in_order
        dist.init_process_group("gloo", init_method="file://{tmp_path}/pg", rank=0, world_size=1)
        print(gather_in_order([(3, "d"), (0, "a"), (1, "b")], 1, True))
        dist.destroy_process_group()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(0, 'a'), (1, 'b'), (3, 'd')]"


def test_torchsde_contract_helpers(monkeypatch):
    q = [(0.0, 0.5), (0.0, 0.25), (0.25, 0.5),  # attempt from 0 (rejected)
         (0.0, 0.2), (0.0, 0.1), (0.1, 0.2),  # attempt from 0 (accepted)
         (0.2, 0.6), (0.2, 0.4), (0.4, 0.6)]  # attempt from 0.2 (accepted)
    assert tc.adaptive_step_counts(q) == (2, 1)
    with pytest.raises(RuntimeError):
        tc.adaptive_step_counts(q[:4])
    tc.check_version()
    monkeypatch.setattr(tc.torchsde, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="9.9.9"):
        tc.check_version()


def test_package_exports():
    for name in sg.__all__:
        assert hasattr(sg, name), name
    assert sg.Trainer is sg.train.Trainer and sg.EMA is sg.train.EMA and sg.load_checkpoint is sg.train.load_checkpoint
    assert sg.dsm_loss is sg.losses.dsm_loss and sg.MLPScoreNet is sg.nets.MLPScoreNet
    assert sg.TimestepModelScore is pt.TimestepModelScore and sg.DenoiserScore is pt.DenoiserScore
    assert sg.train.CHECKPOINT_NAME == "checkpoint.pt"
    assert math.isfinite(float(sg.VPSDE().T))

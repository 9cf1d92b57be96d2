"""Labels reach a conditional network through every sampler; classifier-free guidance of one net.

Oracle: a Gaussian mixture's exact conditional score ``s(x, t | y)`` (component y) and its
unconditional score; a "network" that maps the null label to the unconditional score is, by
construction, what label-dropout training targets. Guidance of that network must equal
:func:`classifier_free_guidance` of the two exact scores to float64 rounding.
"""

from __future__ import annotations

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.samplers import SAMPLERS

F64 = torch.float64
K, NULL = 3, 3


def _mixture():
    return sg.analytic.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64),
                                       torch.stack([0.2 * torch.eye(2, dtype=F64)] * 3),
                                       torch.tensor([0.3, 0.3, 0.4], dtype=F64))


class _OracleNet:
    """``net(x, t, y=labels)``: exact component score for y < K, the mixture's score for the null label."""

    def __init__(self, data, sde):
        self.cond = sg.analytic_conditional_score(data, sde)
        self.uncond = data.score_fn(sde)
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(y.clone())
        out = torch.empty_like(x)
        null = y == NULL
        if bool(null.any()):
            tt = t if t.dim() == 0 else t[null]
            out[null] = self.uncond(x[null], tt)
        if bool((~null).any()):
            tt = t if t.dim() == 0 else t[~null]
            out[~null] = self.cond(x[~null], tt, y[~null])
        return out


@pytest.mark.parametrize("w", [0.0, 1.5])
def test_label_guidance_equals_cfg_of_the_exact_scores(w):
    sde, data = sg.VPSDE(), _mixture()
    net = _OracleNet(data, sde)
    guided = sg.label_guidance(net, 1, w, null_label=NULL, num_classes=K)
    ref = sg.classifier_free_guidance(sg.analytic_conditional_score(data, sde), data.score_fn(sde), 1, w)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    assert torch.allclose(guided(x, t), ref(x, t), rtol=1e-12, atol=1e-12)
    # one forward pass per call, on the doubled batch when w != 0
    assert len(net.calls) == 1 and net.calls[0].shape == ((32,) if w else (16,))
    # control: a different class gives a different field
    other = sg.label_guidance(net, 2, w, null_label=NULL, num_classes=K)
    assert not torch.allclose(other(x, t), ref(x, t), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "adaptive_sde"])
def test_model_kwargs_reach_the_network_in_every_sampler(name):
    """Per-sample labels in model_kwargs reach every call; the result equals the same sampler on the
    label-bound score (so nothing else changed), and differs for other labels."""
    spec = SAMPLERS[name]
    sde, data = sg.VPSDE(), _mixture()
    net = _OracleNet(data, sde)
    x_T = sde.prior_sample((12, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.tensor([0, 1, 2] * 4)
    ts = spec.timesteps(sde, 5)
    kw = {"rtol": 1e-4, "atol": 1e-4} if spec.adaptive else {}
    a = spec(sde, net, x_T, ts, generator=torch.Generator().manual_seed(2), model_kwargs={"y": y}, **kw)
    assert net.calls and all(torch.equal(c, y) for c in net.calls)
    bound = spec(sde, lambda x, t: net(x, t, y=y), x_T, ts, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.x, bound.x)
    c = spec(sde, net, x_T, ts, generator=torch.Generator().manual_seed(2), model_kwargs={"y": (y + 1) % K}, **kw)
    assert not torch.allclose(a.x, c.x)


def test_model_kwargs_reach_reverse_sde_and_pf_ode():
    sde, data = sg.VPSDE(), _mixture()
    net = _OracleNet(data, sde)
    y = torch.tensor([2] * 6)
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = sg.timesteps(sde, 4)
    sg.sdeint(sg.ReverseSDE(sde, net, model_kwargs={"y": y}), x_T, ts, seed=0)
    sg.odeint(sg.ProbabilityFlowODE(sde, net, model_kwargs={"y": y}), x_T, ts[[0, -1]], rtol=1e-4, atol=1e-4)
    assert net.calls and all(torch.equal(c, y) for c in net.calls)


def test_conditional_unet_samples_depend_on_the_label():
    """The shipped U-Net, class-conditional (random weights): labels reach it through ScoreModel."""
    sde = sg.VPSDE()
    torch.manual_seed(0)
    net = sg.UNet(in_channels=1, base=8, num_classes=K)
    with torch.no_grad():  # the output layer starts at zero (a trained net's is not): give it weights
        for p in net.out.parameters():
            p.normal_(0.0, 0.1)
    model = sg.ScoreModel(net, sde)
    x_T = sde.prior_sample((4, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    ts = sg.timesteps(sde, 3, kind="logsnr")
    a = sg.dpm_solver_pp_2m(sde, model, x_T, ts, model_kwargs={"y": torch.tensor([0, 0, 1, 1])}).x
    b = sg.dpm_solver_pp_2m(sde, model, x_T, ts, model_kwargs={"y": torch.tensor([0, 0, 1, 1])}).x
    c = sg.dpm_solver_pp_2m(sde, model, x_T, ts, model_kwargs={"y": torch.tensor([2, 2, 2, 2])}).x
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not a.requires_grad  # inference by default: no graph through the network


@pytest.mark.parametrize("y, match", [(torch.tensor([0.5]), "y"), (torch.tensor([[1]]), "y"), (3, "y"), (-1, "y"), (True, "y")])
def test_bad_labels_are_named(y, match):
    sde, data = sg.VPSDE(), _mixture()
    with pytest.raises((TypeError, ValueError), match=match):
        sg.label_guidance(_OracleNet(data, sde), y, 1.0, null_label=NULL, num_classes=K)


def test_bad_label_guidance_arguments_are_named():
    sde, data = sg.VPSDE(), _mixture()
    net = _OracleNet(data, sde)
    with pytest.raises(ValueError, match="null_label"):
        sg.label_guidance(net, 0, 1.0, null_label=1, num_classes=K)
    with pytest.raises(ValueError, match="scale"):
        sg.label_guidance(net, 0, float("nan"), null_label=NULL, num_classes=K)
    with pytest.raises(TypeError, match="model"):
        sg.label_guidance(None, 0, 1.0, null_label=NULL, num_classes=K)


def test_kwargs_the_network_does_not_take_are_named():
    sde = sg.VPSDE()
    model = sg.ScoreModel(sg.MLPScoreNet(2), sde)
    x_T = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="model_kwargs"):
        sg.euler_maruyama(sde, model, x_T, sg.timesteps(sde, 2), model_kwargs={"y": torch.tensor([0, 1, 2])})
    with pytest.raises(TypeError, match="model_kwargs"):
        sg.euler_maruyama(sde, model, x_T, sg.timesteps(sde, 2), model_kwargs=[("y", 1)])


def test_unet_refuses_labels_of_the_wrong_shape_or_dtype():
    net = sg.UNet(in_channels=1, base=8, num_classes=K)
    x, t = torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5)
    for y in (torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError, match="y must be an integer tensor"):
            net(x, t, y=y)


def test_callback_that_raises_is_reported_with_the_step():
    sde, data = sg.VPSDE(), _mixture()

    def bad(info):
        if info["i"] == 2:
            raise KeyError("boom")

    with pytest.raises(ValueError, match="callback raised KeyError at step 2"):
        sg.euler_maruyama(sde, data.score_fn(sde), torch.zeros(3, 2, dtype=F64), sg.timesteps(sde, 5), callback=bad)
    with pytest.raises(TypeError, match="callback"):
        sg.euler_maruyama(sde, data.score_fn(sde), torch.zeros(3, 2, dtype=F64), sg.timesteps(sde, 5), callback=3)


def test_callback_sees_every_step_with_the_denoised_estimate():
    sde, data = sg.VPSDE(), _mixture()
    seen = []
    ts = sg.timesteps(sde, 6, kind="logsnr")
    sol = sg.dpm_solver_pp_2m(sde, data.score_fn(sde), sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(0), dtype=F64),
                              ts, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(6))
    assert torch.equal(seen[-1]["x"], sol.x)
    assert all(float(d["t"]) == float(ts[d["i"] + 1]) for d in seen)
    assert all(d["denoised"] is not None and d["denoised"].shape == (5, 2) for d in seen)

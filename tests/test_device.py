"""The device rule: random draws and time tensors follow ``x``'s device; no host sync in step loops.

Two kinds of test:

* **Placement on CPU** (no GPU needed): during a solve the *default* device is switched to
  ``meta``, so any tensor the library creates without naming a device lands on ``meta`` instead of
  ``x``'s device; a ``TorchDispatchMode`` records every op whose output is on ``meta``. A correct
  solve records nothing (every tensor it makes is placed on ``x``'s device, or explicitly on the
  host for schedule arithmetic). Control: a score that creates an undeviced tensor is caught.
* **On the device under test** (``pytest --device cuda``; CPU by default): every registered
  sampler, ``sdeint`` and ``odeint`` run with ``x`` and the generator on that device and return
  there; a generator on another device is refused with a ``ValueError`` naming ``generator``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import sdesolve_gen as sg
from sdesolve_gen.samplers import SAMPLERS

F64 = torch.float64


class _MetaRecorder(TorchDispatchMode):
    """Record the ops whose outputs land on the ``meta`` device."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tree_flatten(out)[0]):
            self.bad.append(str(func))
        return out


def _undeviced_ops(fn):
    """Run ``fn`` with default device meta; return the ops that produced meta tensors (and any error)."""
    rec = _MetaRecorder()
    err = None
    torch.set_default_device("meta")
    try:
        with rec:
            fn()
    except Exception as e:  # a meta tensor mixed with x's device fails loudly: also a violation
        err = f"{type(e).__name__}: {e}"
    finally:
        torch.set_default_device(None)
    return rec.bad, err


def _problem():
    sde = sg.VPSDE()
    data = sg.analytic.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
                                       torch.stack([0.3 * torch.eye(2, dtype=F64)] * 2), torch.tensor([0.5, 0.5], dtype=F64))
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    return sde, data.score_fn(sde), x_T


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_create_no_tensor_off_x_device(name):
    spec = SAMPLERS[name]
    sde, score, x_T = _problem()
    ts = spec.timesteps(sde, 4)
    g = torch.Generator().manual_seed(1)
    kw = {"rtol": 1e-3, "atol": 1e-3} if spec.adaptive else {}
    bad, err = _undeviced_ops(lambda: spec(sde, score, x_T, ts, generator=g, **kw))
    assert err is None and not bad, f"{name}: tensors created off x's device: {bad[:5]} {err}"


def test_sdeint_and_odeint_create_no_tensor_off_x_device():
    sde, score, x_T = _problem()
    ts = sg.timesteps(sde, 6)
    for fn in (lambda: sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, generator=torch.Generator().manual_seed(2)),
               lambda: sg.odeint(sg.ProbabilityFlowODE(sde, score), x_T, ts[[0, -1]], rtol=1e-4, atol=1e-4),
               lambda: sg.odeint(sg.ProbabilityFlowODE(sde, score), x_T, ts, method="rk4")):
        bad, err = _undeviced_ops(fn)
        assert err is None and not bad, f"tensors created off x's device: {bad[:5]} {err}"


def test_the_placement_check_catches_an_undeviced_tensor():
    """Control: a score that adds ``torch.zeros(2)`` (no device) is caught by the same check."""
    sde, score, x_T = _problem()

    def sloppy(x, t):
        return score(x, t) + torch.zeros(x.shape[-1], dtype=x.dtype)

    bad, err = _undeviced_ops(lambda: sg.euler_maruyama(sde, sloppy, x_T, sg.timesteps(sde, 3),
                                                        generator=torch.Generator().manual_seed(0)))
    assert bad or err


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_run_on_the_device_under_test(name, device):
    spec = SAMPLERS[name]
    sde, score, x_T = _problem()
    x_T = x_T.to(device=device, dtype=torch.float32)
    g = torch.Generator(device=device).manual_seed(3)
    kw = {"rtol": 1e-3, "atol": 1e-3} if spec.adaptive else {}
    seen = []
    sol = spec(sde, score, x_T, spec.timesteps(sde, 4), generator=g,
               callback=lambda d: seen.append((d["t"].device, d["x"].device)), **kw)
    assert sol.x.device == x_T.device and sol.x.dtype == torch.float32
    assert bool(torch.isfinite(sol.x).all())
    assert seen and all(a.type == device.type and b.type == device.type for a, b in seen)


def test_sdeint_odeint_run_on_the_device_under_test(device):
    sde, score, x_T = _problem()
    x_T = x_T.to(device)
    ts = sg.timesteps(sde, 5)
    a = sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, generator=torch.Generator(device=device).manual_seed(4))
    b = sg.odeint(sg.ProbabilityFlowODE(sde, score), x_T, ts[[0, -1]], rtol=1e-4, atol=1e-4)
    assert a.x.device == x_T.device and b.x.device == x_T.device


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_generator_on_another_device_is_refused(name):
    """A CPU generator with x on another device (meta here; cuda with --device cuda) is refused, naming it."""
    spec = SAMPLERS[name]
    sde, score, x_T = _problem()
    other = torch.device("meta") if torch.device(x_T.device).type == "cpu" else torch.device("cpu")
    with pytest.raises(ValueError, match="generator"):
        spec(sde, score, x_T.to(other), spec.timesteps(sde, 3), generator=torch.Generator().manual_seed(0))

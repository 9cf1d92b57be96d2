"""encode / decode with independent steps per sample (``method="dopri5_ps"`` / ``"gbs8_ps"``).

Oracle: for isotropic Gaussian data N(mu, c I) the probability-flow ODE keeps the standardised
coordinate, so the exact flow from time s to time t is

    x_t = a_t mu + sqrt(v_t / v_s) (x_s - a_s mu),   v_t = a_t^2 c + sigma_t^2,

with VP's marginals written out here (beta(t) = beta_min + t (beta_max - beta_min)):
log a_t = -beta_min t / 2 - (beta_max - beta_min) t^2 / 4 and sigma_t^2 = 1 - a_t^2.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.analytic import Gaussian

F64 = torch.float64
BMIN, BMAX, C, EPS = 0.1, 20.0, 0.16, 1e-3
MU = torch.tensor([0.7, -0.3, 0.2], dtype=F64)


def _a(t: float) -> float:
    return math.exp(-BMIN * t / 2 - (BMAX - BMIN) * t * t / 4)


def _v(t: float, c: float = C) -> float:
    return _a(t) ** 2 * c + 1.0 - _a(t) ** 2


def _flow_exact(x: torch.Tensor, s: float, t: float, mu: torch.Tensor = MU, c: float = C) -> torch.Tensor:
    return _a(t) * mu + math.sqrt(_v(t, c) / _v(s, c)) * (x - _a(s) * mu)


def _points(B: int = 6) -> torch.Tensor:
    x = Gaussian(MU, C * torch.eye(3, dtype=F64)).sample(B, generator=torch.Generator().manual_seed(0), dtype=F64)
    x[0] = MU + 2.5  # one point far in the tail: its trajectory sets a shared controller's steps
    return x


@pytest.mark.parametrize("method", ["dopri5_ps", "gbs8_ps"])
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_per_sample_encode_decode_follow_the_exact_flow(method, tol):
    """Budget: every sample within 10 x tol of the exact flow (the per-sample meaning of the
    tolerance the likelihood docs state). Negative control: Euler with 20 steps misses it."""
    sde = sg.VPSDE(beta_min=BMIN, beta_max=BMAX)
    score = Gaussian(MU, C * torch.eye(3, dtype=F64)).score_fn(sde)
    x = _points()
    z = sg.encode(sde, score, x, method=method, rtol=tol, atol=tol, eps=EPS)
    assert z.shape == x.shape and z.dtype == F64
    assert float((z - _flow_exact(x, EPS, 1.0)).abs().max()) <= 10 * tol
    zT = _flow_exact(x, EPS, 1.0)
    xd = sg.decode(sde, score, zT, method=method, rtol=tol, atol=tol, eps=EPS)
    assert float((xd - x).abs().max()) <= 10 * tol
    ze = sg.encode(sde, score, x, method="euler", step_size=(1.0 - EPS) / 20, eps=EPS)
    assert float((ze - zT).abs().max()) > 10 * tol


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_per_sample_result_does_not_depend_on_the_batch(direction):
    """Each sample alone gives bit for bit what it gives inside the batch; control: the shared-step
    dopri5 solve of the same batch differs from the lone solve (the tail point sets its steps)."""
    sde = sg.VPSDE(beta_min=BMIN, beta_max=BMAX)
    score = Gaussian(MU, C * torch.eye(3, dtype=F64)).score_fn(sde)
    fn = sg.encode if direction == "encode" else sg.decode
    x = _points() if direction == "encode" else _flow_exact(_points(), EPS, 1.0)
    full = fn(sde, score, x, method="dopri5_ps", rtol=1e-5, atol=1e-5, eps=EPS)
    for i in range(x.shape[0]):
        assert torch.equal(fn(sde, score, x[i:i + 1], method="dopri5_ps", rtol=1e-5, atol=1e-5, eps=EPS), full[i:i + 1])
    shared = fn(sde, score, x, method="dopri5", rtol=1e-5, atol=1e-5, eps=EPS)
    alone = fn(sde, score, x[3:4], method="dopri5", rtol=1e-5, atol=1e-5, eps=EPS)
    assert not torch.equal(shared[3:4], alone)


def test_per_sample_model_kwargs_follow_their_samples():
    """A label shifts the data mean, mu_y = mu + y * delta; per-sample labels (B,) must reach each
    sample's score calls as the batch shrinks. Oracle: the exact flow of each sample's own
    Gaussian (10 x tol); control: the same points with the labels reversed miss it."""
    sde = sg.VPSDE(beta_min=BMIN, beta_max=BMAX)
    delta = torch.tensor([1.0, 0.5, -1.5], dtype=F64)

    def score(x, t, y):
        a = sde.alpha(t).to(x).reshape(-1, 1)
        s2 = sde.sigma(t).to(x).reshape(-1, 1) ** 2
        m = MU + y.to(x)[:, None] * delta
        return -(x - a * m) / (a * a * C + s2)

    x = _points()
    y = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0], dtype=F64)
    tol = 1e-6
    z = sg.encode(sde, score, x, method="dopri5_ps", rtol=tol, atol=tol, eps=EPS, model_kwargs={"y": y})
    mus = MU + y[:, None] * delta
    exact = torch.stack([_flow_exact(x[i], EPS, 1.0, mus[i]) for i in range(6)])
    assert float((z - exact).abs().max()) <= 10 * tol
    zr = sg.encode(sde, score, x, method="dopri5_ps", rtol=tol, atol=tol, eps=EPS, model_kwargs={"y": y.flip(0)})
    assert float((zr - exact).abs().max()) > 10 * tol


def test_per_sample_encode_refuses_step_size():
    sde = sg.VPSDE()
    score = Gaussian(MU, C * torch.eye(3, dtype=F64)).score_fn(sde)
    with pytest.raises(ValueError, match="step_size"):
        sg.encode(sde, score, _points(), method="dopri5_ps", step_size=0.1)

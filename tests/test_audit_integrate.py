"""Value tests for the integrate wrappers at non-default settings (step grids with ``dt``, ``save``
indices, callbacks in physical time, Brownian sums over several steps, grids with ``eps`` and
``rho`` given, odeint ``save`` and ``record_times``).

Oracles are written here: exact products of Euler factors for a linear SDE with zero noise,
hand-made step grids, sums of same-seeded normal draws, and the rho / log-SNR formulas. Every test
also shows that the plausible wrong variant differs.
"""

from __future__ import annotations

import math
from typing import List

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.integrate import GridBrownian, odeint, sdeint, timesteps

F64 = torch.float64


class _LinearNoNoise(torch.nn.Module):
    """dy = a y dt + 0 dW (torchsde Ito, diagonal): Euler's step is exactly y <- (1 + a h) y."""

    sde_type, noise_type = "ito", "diagonal"

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return torch.zeros_like(y)


def _euler_products(y0: torch.Tensor, a: float, times: List[float], dt: float) -> List[torch.Tensor]:
    """y at each output time: every interval split into ceil(len/dt) equal steps, (1 + a h)^k each."""
    out, y = [y0], y0
    for lo, hi in zip(times[:-1], times[1:]):
        k = math.ceil((hi - lo) / dt - 1e-9)
        y = y * (1 + a * (hi - lo) / k) ** k
        out.append(y)
    return out


def test_sdeint_dt_splits_each_interval_into_ceil_equal_steps_and_saves_by_index():
    """Guards the step grid (ceil, equal steps, an interval that is an exact multiple of dt: 0.5 /
    0.1 = 5 steps, not 6), the output index map and negative ``save`` indices. Oracle: the product
    of Euler factors. Control: 6 steps in the last interval differs by more than 1e-4."""
    a, dt, times = -0.7, 0.1, [0.0, 0.37, 0.8, 1.3]
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)
    want = _euler_products(y0, a, times, dt)
    sol = sdeint(_LinearNoNoise(a), y0, torch.tensor(times, dtype=F64), dt=dt, seed=0)
    assert sol.n_steps == 4 + 5 + 5
    assert sol.ys.shape == (4, 2, 2)
    for k in range(4):
        torch.testing.assert_close(sol.ys[k], want[k], rtol=1e-12, atol=1e-14)
    part = sdeint(_LinearNoNoise(a), y0, torch.tensor(times, dtype=F64), dt=dt, seed=0, save=[1, -1])
    torch.testing.assert_close(part.ys, torch.stack([want[1], want[3]]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(part.ts, torch.tensor([0.37, 1.3], dtype=F64))
    wrong = want[2] * (1 + a * 0.5 / 6) ** 6
    assert float((wrong - want[3]).abs().max()) > 1e-4


def test_sdeint_callback_reports_every_step_end_in_physical_time_for_a_reverse_sde():
    """ReverseSDE on VP(T=1.7): with ts = [1.7, 0.9, 0.01] and dt = 0.3 the callback sees steps
    i = 0..5 ending at 1.7 - k 0.8/3 (k = 1..3), then 0.9 - k 0.89/3, physical (decreasing) times.
    Control: solver-time (increasing) values would not match."""
    sde = sg.VPSDE(T=1.7, eps=0.01)
    score = sg.analytic.Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)).score_fn(sde)
    seen: List[tuple] = []
    sol = sdeint(sg.ReverseSDE(sde, score), torch.randn(3, 2, dtype=F64), torch.tensor([1.7, 0.9, 0.01], dtype=F64),
                 dt=0.3, seed=1, callback=lambda d: seen.append((d["i"], float(d["t"]), tuple(d["x"].shape))))
    want = [1.7 - k * 0.8 / 3 for k in (1, 2, 3)] + [0.9 - k * 0.89 / 3 for k in (1, 2, 3)]
    assert [s[0] for s in seen] == list(range(6)) and sol.n_steps == 6
    assert all(s[2] == (3, 2) for s in seen)
    assert max(abs(s[1] - w) for s, w in zip(seen, want)) < 1e-12
    assert max(abs(s[1] - (1.7 - w)) for s, w in zip(seen, want)) > 0.1


def test_grid_brownian_interval_query_is_the_sum_of_its_step_increments():
    """W(0.1) -> W(0.6) over grid steps [0.1, 0.3] and [0.3, 0.6] is sqrt(0.2) z_1 + sqrt(0.3) z_2
    with z_0, z_1, z_2 the first three same-seeded draws (z_0 belongs to [0, 0.1]). Control: the
    sum with sqrt(0.1) for z_1 (the first step's size) differs."""
    grid = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=F64)
    bm = GridBrownian(grid, (3, 2), dtype=F64, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    z = [torch.randn(3, 2, generator=g, dtype=F64) for _ in range(3)]
    got = bm(torch.tensor(0.1, dtype=F64), torch.tensor(0.6, dtype=F64))
    torch.testing.assert_close(got, math.sqrt(0.2) * z[1] + math.sqrt(0.3) * z[2], rtol=1e-12, atol=1e-14)
    assert float((got - (math.sqrt(0.1) * z[1] + math.sqrt(0.3) * z[2])).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["logsnr", "edm", "uniform"])
def test_timesteps_with_eps_and_rho_given_follow_their_formulas(kind):
    """VP(T=1.7) with eps = 0.05 (not sde.eps) and rho = 3: uniform in t; uniform in the half-log-SNR
    lambda; or sigma~ = sigma/alpha on the rho = 3 ramp between its end values. The end points are
    T and the given eps exactly. Control: the same check with sde.eps / rho = 7 fails."""
    sde = sg.VPSDE(T=1.7, eps=1e-3)
    n, eps, rho = 7, 0.05, 3.0
    ts = timesteps(sde, n, kind=kind, eps=eps, rho=rho)
    assert ts.shape == (n + 1,) and float(ts[0]) == 1.7 and float(ts[-1]) == eps
    i = torch.arange(n + 1, dtype=F64) / n
    lam = sde.half_log_snr(ts)
    lam_T, lam_e = sde.half_log_snr(torch.tensor(1.7, dtype=F64)), sde.half_log_snr(torch.tensor(eps, dtype=F64))
    if kind == "uniform":
        want, got = 1.7 + i * (eps - 1.7), ts
    elif kind == "logsnr":
        want, got = lam_T + i * (lam_e - lam_T), lam
    else:
        smax, smin = torch.exp(-lam_T), torch.exp(-lam_e)
        want, got = (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho, torch.exp(-lam)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    other = timesteps(sde, n, kind=kind, rho=7.0) if kind == "edm" else timesteps(sde, n, kind=kind)
    assert float((other - ts).abs().max()) > 1e-3


def test_odeint_save_indices_and_record_times_on_a_linear_flow():
    """dx/dt = -2 x from 0 to 1 with outputs at 0, 0.25, 0.5, 1 and save = [0, 2, 3]: ys are
    x0 e^{-2 t} at 0, 0.5, 1 (dopri5 at 1e-10); ``record_times`` lists the evaluation times, all in
    [0, 1], as many as ``nfe``. Control: the value at the unsaved 0.25 differs from the saved 0.5."""
    x0 = torch.tensor([[1.0], [-3.0]], dtype=F64)
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    sol = odeint(lambda t, x: -2.0 * x, x0, ts, rtol=1e-10, atol=1e-12, save=[0, 2, 3], record_times=True)
    want = torch.stack([x0 * math.exp(-2.0 * t) for t in (0.0, 0.5, 1.0)])
    torch.testing.assert_close(sol.ys, want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(sol.ts, ts[[0, 2, 3]])
    times = sol.extra["times"]
    assert len(times) == sol.nfe and min(times) >= 0.0 and max(times) <= 1.0
    assert float((x0 * math.exp(-0.5) - want[1]).abs().max()) > 0.1

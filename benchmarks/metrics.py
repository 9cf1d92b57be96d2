"""Shared metrics: sliced Wasserstein-2, mean exact log-density, median wall time, log-log slope."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, List, Sequence, Tuple

import torch
from torch import Tensor


def sliced_w2(x: Tensor, y: Tensor, *, n_proj: int = 512, seed: int = 0) -> float:
    r"""Sliced Wasserstein-2 distance between two equal-size samples.

    .. math:: \mathrm{SW}_2(x, y) = \Big(\frac1P\sum_{p=1}^P W_2^2(\theta_p^\top x, \theta_p^\top y)\Big)^{1/2},

    with :math:`\theta_p` uniform on the unit sphere (seeded) and the 1-D :math:`W_2` computed
    exactly by sorting.

    Args:
        x, y: samples of shape ``(N, *shape)`` (flattened to ``(N, D)``), same ``N``.
        n_proj: number of random projections ``P``.
        seed: seed of the projection directions (same seed, same directions).

    Returns:
        the distance as a float.
    """
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape after flattening, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mean_log_density(data: Any, x: Tensor) -> float:
    r"""Mean exact data log-density of samples, :math:`\frac1N\sum_n \log p_{data}(x_n)` (nats).

    Compared with the exact :math:`\mathbb E_{p_{data}}\log p_{data}` (the same statistic on exact
    samples), the gap measures how well a sampler concentrates on the data's mass.
    """
    return float(data.log_prob(x.to(torch.float64)).mean())


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Tuple[float, Any]:
    """Run ``fn`` ``warmup`` times untimed (first-call costs: allocator, vmap tracing), then
    ``repeats`` times timed; return ``(median seconds, last result)``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times: List[float] = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x` (a fitted power-law exponent).

    Args:
        xs, ys: positive values of equal length.

    Returns:
        The slope, or NaN when the ``xs`` have no spread.
    """
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den > 0 else float("nan")

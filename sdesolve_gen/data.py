r"""Data: toy 2-D targets as exact Gaussian mixtures, and scikit-learn's bundled digits.

Every toy data set is an :class:`~sdesolve_gen.analytic.GaussianMixture`, so a model trained on
it can be compared with the *exact* log density. ``eight_gaussians`` is the classic target
exactly; ``two_moons``, ``swiss_roll`` and ``checkerboard`` are mixtures of many small isotropic
Gaussians laid along the classic shapes: close look-alikes, not the original samplers.

``load_digits`` returns the 1797 8x8 images shipped inside scikit-learn (no download), as
``(N, 1, 8, 8)`` integer levels 0..16 or scaled to a declared range.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from ._checks import check_int, check_positive
from .analytic import GaussianMixture

Tensor = torch.Tensor

__all__ = ["eight_gaussians", "two_moons", "swiss_roll", "checkerboard", "TOY_DATASETS", "load_digits", "to_range", "from_range"]


def _isotropic(means: Tensor, std: float) -> GaussianMixture:
    std = check_positive("std", std)
    K, D = means.shape
    covs = (std**2) * torch.eye(D, dtype=torch.float64).expand(K, D, D).clone()
    return GaussianMixture(means, covs)


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equal Gaussians on a circle of ``radius`` (the classic target, exactly)."""
    radius = check_positive("radius", radius)
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return _isotropic(radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1), std)


def two_moons(n_per_moon: int = 12, std: float = 0.12) -> GaussianMixture:
    """Two interleaved half circles, each a chain of ``n_per_moon`` small Gaussians (centred)."""
    check_int("n_per_moon", n_per_moon, 1)
    a = torch.linspace(0, math.pi, n_per_moon, dtype=torch.float64)
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], 1)
    m = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return _isotropic(1.5 * m, std)


def swiss_roll(n: int = 24, std: float = 0.15) -> GaussianMixture:
    """A 2-D spiral r = theta (theta in [1.5 pi, 4.5 pi]) of ``n`` small Gaussians, scaled to ~[-2, 2]."""
    check_int("n", n, 1)
    th = torch.linspace(1.5 * math.pi, 4.5 * math.pi, n, dtype=torch.float64)
    m = torch.stack([th * torch.cos(th), th * torch.sin(th)], 1) / 7.0
    return _isotropic(m, std)


def checkerboard(std: float = 0.12) -> GaussianMixture:
    """The 4x4 checkerboard on [-2, 2]^2: 8 dark unit squares, each a 2x2 grid of small Gaussians."""
    centres = []
    for i in range(4):
        for j in range(4):
            if (i + j) % 2 == 0:
                for di in (0.25, 0.75):
                    for dj in (0.25, 0.75):
                        centres.append([-2 + i + di, -2 + j + dj])
    return _isotropic(torch.tensor(centres, dtype=torch.float64), std)


TOY_DATASETS = {
    "eight_gaussians": eight_gaussians,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
}
"""Name -> constructor of the toy targets (used by the CLI)."""


def to_range(x: Tensor, data_range: Sequence[float], *, n_levels: int) -> Tensor:
    r"""Map integer levels ``0..n_levels-1`` linearly onto ``[lo, hi]`` (level k -> lo + k (hi-lo)/(n_levels-1))."""
    lo, hi = _range(data_range)
    check_int("n_levels", n_levels, 2)
    return lo + x.to(torch.get_default_dtype() if not x.is_floating_point() else x.dtype) * ((hi - lo) / (n_levels - 1))


def from_range(x: Tensor, data_range: Sequence[float], *, n_levels: int) -> Tensor:
    """Inverse of :func:`to_range`, rounded and clipped to integer levels."""
    lo, hi = _range(data_range)
    check_int("n_levels", n_levels, 2)
    return torch.round((x - lo) * ((n_levels - 1) / (hi - lo))).clamp(0, n_levels - 1)


def _range(data_range: Sequence[float]) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite with hi > lo, got {data_range!r}")
    return lo, hi


def load_digits(*, data_range: Sequence[float] = (-1.0, 1.0), as_levels: bool = False, return_labels: bool = False):
    """scikit-learn's bundled 8x8 digits (1797 images, 17 grey levels 0..16), no download.

    Args:
        data_range: range the levels 0..16 are mapped onto (ignored with ``as_levels``).
        as_levels: return the integer levels (float tensor of whole numbers) instead.
        return_labels: also return the digit labels ``(N,)``.

    Returns:
        images ``(N, 1, 8, 8)`` (and labels).

    Raises:
        ImportError: if scikit-learn is missing (``pip install "sdesolve_gen[data]"``).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - exercised only without sklearn
        raise ImportError('load_digits needs scikit-learn: pip install "sdesolve_gen[data]"') from exc
    bunch = _load()
    levels = torch.tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8)
    x = levels if as_levels else to_range(levels, data_range, n_levels=17)
    if return_labels:
        return x, torch.tensor(bunch.target, dtype=torch.long)
    return x

"""Small argument checks shared by the public API.

Every check raises ``ValueError`` or ``TypeError`` naming the offending argument, never ``assert``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

TimeLike = Union[float, int, torch.Tensor]


def as_time64(t: TimeLike) -> torch.Tensor:
    """``t`` (float, 0-d or ``(B,)`` tensor) as a float64 tensor on its device (a number: on the host); no range check (hot path)."""
    if isinstance(t, torch.Tensor):
        return t.to(torch.float64)
    return torch.tensor(float(t), dtype=torch.float64, device="cpu")


def as_float64(value: object) -> torch.Tensor:
    """A tensor as float64 on its own device; numbers and sequences as float64 host tensors.

    (``torch.as_tensor(t, dtype=...)`` would move a tensor to torch's *default* device when one
    is set; the library never relies on the default device.)
    """
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64)
    return torch.tensor(value, dtype=torch.float64, device="cpu")


def check_positive(name: str, value: float) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise.

    Raises:
        TypeError: if ``value`` is not a real number.
        ValueError: if it is not finite or not positive.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(name: str, x: torch.Tensor, where: str = "") -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or inf; ``where`` is added to the message."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        extra = f" {where}" if where else ""
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf){extra}")
    return x


def check_batch(name: str, x: object, min_dim: int = 2) -> torch.Tensor:
    """Check ``x`` is a floating tensor of shape ``(B, *shape)`` with at least ``min_dim`` dims."""
    x = check_tensor(name, x)
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (batch, *data_shape) with at least {min_dim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    return x


def check_label(y: object, n_classes: Optional[int] = None) -> torch.Tensor:
    """Return ``y`` as an int64 tensor of shape ``()`` or ``(B,)``; raise on anything else."""
    if isinstance(y, bool):
        raise TypeError("y must be an int or an integer tensor of labels, got bool")
    if isinstance(y, int):
        yt = torch.tensor(y, dtype=torch.int64)
    elif isinstance(y, torch.Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of labels, got dtype {y.dtype}")
        if y.dim() > 1:
            raise ValueError(f"y must be a scalar or have shape (B,), got shape {tuple(y.shape)}")
        yt = y.to(torch.int64)
    else:
        raise TypeError(f"y must be an int or an integer tensor of labels, got {type(y).__name__}")
    if yt.numel() > 0 and bool((yt < 0).any()):
        raise ValueError(f"y must be >= 0, got min {int(yt.min())}")
    if n_classes is not None and yt.numel() > 0 and bool((yt >= n_classes).any()):
        raise ValueError(f"y must be in [0, {n_classes - 1}] (the data has {n_classes} components), got max {int(yt.max())}")
    return yt


def label_for_batch(y: torch.Tensor, batch: int) -> torch.Tensor:
    if y.dim() == 1 and y.shape[0] != batch:
        raise ValueError(f"y has shape ({y.shape[0]},) but x has batch size {batch}")
    return y


class NonFiniteError(ValueError):
    """A state or a score became NaN/inf during a solve; the message says where and when."""

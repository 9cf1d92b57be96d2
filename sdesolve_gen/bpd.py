r"""Bits per dimension and uniform dequantisation of n-bit data.

**Change of variables.** Discrete data are integers :math:`k \in \{0, \dots, n-1\}^D` (``n = n_bins``,
256 for 8-bit images). Uniform dequantisation adds :math:`u \sim U[0,1)^D` and the model sees the
rescaled value

.. math:: x = \text{lo} + \frac{k + u}{n}\,(\text{hi} - \text{lo}), \qquad
          \text{data\_range} = (\text{lo}, \text{hi}),

e.g. ``(0, 1)`` or ``(-1, 1)``. Let :math:`y = k + u \in [0, n)^D`. The map :math:`y \mapsto x`
is affine with Jacobian :math:`\Delta = (\text{hi} - \text{lo})/n` per dimension, so a density
:math:`p_x` on x gives :math:`\log p_y(y) = \log p_x(x) + D\log\Delta`. By Jensen,
:math:`\log P(k) = \log \int_{[0,1)^D} p_y(k+u)\,du \ge \mathbb E_u[\log p_y(k+u)]`, so

.. math:: \text{bpd} = -\frac{\log p_x(x) + D \log\big((\text{hi}-\text{lo})/n\big)}{D \log 2}

(in bits per dimension, averaged over u) upper-bounds the discrete code length. For data in
``[0, 1]`` with ``n = 256`` this is :math:`-\log p_x/(D\log 2) + 8`; for ``[-1, 1]`` it is
:math:`-\log p_x/(D\log 2) + 7`. Check: the uniform density on :math:`[0,1]^D`
(:math:`\log p_x = 0`) costs exactly 8 bits per dimension. With ``data_range=None`` the result is
the continuous code length :math:`-\log p_x(x)/(D\log 2)`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ._checks import check_tensor

Tensor = torch.Tensor

__all__ = ["bits_per_dim", "dequantize"]


def _check_range(data_range: Optional[Sequence[float]]) -> Optional[Tuple[float, float]]:
    if data_range is None:
        return None
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (lo, hi) of numbers, got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite with hi > lo, got {data_range!r}")
    return lo, hi


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    return n_bins


def _data_dim(data_shape: Union[int, Sequence[int]]) -> int:
    shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
    if len(shape) == 0 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape):
        raise ValueError(f"data_shape must be a positive int or a tuple of positive ints, got {data_shape!r}")
    return math.prod(shape)


def bits_per_dim(
    log_prob: Tensor,
    data_shape: Union[int, Sequence[int]],
    *,
    data_range: Optional[Sequence[float]] = None,
    n_bins: int = 256,
) -> Tensor:
    r"""Convert log densities (nats) to bits per dimension.

    .. math:: \text{bpd} = -\frac{\log p_x(x) + D \log\big((\text{hi}-\text{lo})/n\big)}{D \log 2}

    (see the module docstring for the derivation; with ``data_range=None`` the offset term is
    dropped: continuous code length).

    Args:
        log_prob: :math:`\log p_x(x)`, any shape (typically ``(B,)``), nats.
        data_shape: shape of one sample (``D`` is its product).
        data_range: ``(lo, hi)`` the dequantised data were rescaled to, or ``None``.
        n_bins: number of discrete levels per dimension (256 for 8-bit data).

    Returns:
        bits per dimension, shape of ``log_prob``.
    """
    log_prob = check_tensor("log_prob", log_prob)
    if bool((torch.isnan(log_prob) | (log_prob == math.inf)).any()):
        raise ValueError("log_prob contains NaN or +inf: no code length (a zero density, -inf, gives +inf bits/dim)")
    D = _data_dim(data_shape)
    rng = _check_range(data_range)
    n_bins = _check_bins(n_bins)
    offset = 0.0 if rng is None else D * math.log((rng[1] - rng[0]) / n_bins)
    return -(log_prob + offset) / (D * math.log(2.0))


def dequantize(
    x_int: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    n_bins: int = 256,
    data_range: Sequence[float] = (0.0, 1.0),
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    r"""Uniformly dequantise integer data: :math:`x = \text{lo} + (k + u)(\text{hi}-\text{lo})/n`, :math:`u\sim U[0,1)`.

    Args:
        x_int: integers ``k`` in ``[0, n_bins - 1]``, any shape (an integer tensor, or a float
            tensor holding whole numbers).
        generator: optional ``torch.Generator`` for ``u``.
        n_bins: number of levels ``n``.
        data_range: ``(lo, hi)``, e.g. ``(0, 1)`` or ``(-1, 1)``.
        dtype: result dtype (default: ``x_int``'s if floating, else the default dtype).

    Returns:
        dequantised data, shape of ``x_int``; sample ``k`` lands in
        ``[lo + k Δ, lo + (k+1) Δ)`` with :math:`\Delta = (\text{hi}-\text{lo})/n`.
    """
    if not isinstance(x_int, torch.Tensor):
        raise TypeError(f"x_int must be a torch.Tensor of integers, got {type(x_int).__name__}")
    n_bins = _check_bins(n_bins)
    lo, hi = _check_range(data_range)  # type: ignore[misc]
    if x_int.is_floating_point():
        if not bool(torch.isfinite(x_int).all()) or not bool((x_int == torch.round(x_int)).all()):
            raise ValueError("x_int must hold whole numbers (integer levels k), got non-integer values")
        out_dtype = dtype or x_int.dtype
    elif x_int.dtype == torch.bool or x_int.is_complex():
        raise TypeError(f"x_int must be an integer tensor, got dtype {x_int.dtype}")
    else:
        out_dtype = dtype or torch.get_default_dtype()
    if x_int.numel() and (int(x_int.min()) < 0 or int(x_int.max()) > n_bins - 1):
        raise ValueError(f"x_int must lie in [0, n_bins - 1] = [0, {n_bins - 1}], got [{int(x_int.min())}, {int(x_int.max())}]")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(x_int.shape, generator=generator, device=gen_device, dtype=torch.float64).to(x_int.device)
    x = lo + (x_int.to(torch.float64) + u) * ((hi - lo) / n_bins)
    return x.to(out_dtype)

"""The argument checks of the public API (the one owner of what a valid argument is).

Every check raises ``ValueError`` or ``TypeError`` naming the offending argument and what was
expected, before any work, never ``assert``:

* numbers: :func:`check_int` (bools refused, numpy integers accepted), :func:`check_positive`,
  :func:`check_range` (probabilities, open/closed intervals), :func:`check_bool`;
* tensors: :func:`check_tensor`, :func:`check_batch` (``(B, *shape)``, empty batches refused),
  :func:`check_finite`, :func:`check_exact_shapes`, :func:`check_same_shape` (outputs of user
  callables must have exactly the expected shape: no silent broadcasting),
  :func:`check_score_output` (a score's shape, device and dtype are exactly its input's),
  :func:`check_time_tensor` (a network's time input);
* times and coefficients: :func:`check_model_time` (``t`` in ``[0, T]``), :func:`check_coefficient`
  (``sigma(t) > 0`` where the maths divides by it);
* devices: :func:`check_generator` (a generator on the data's device);
* options: :func:`check_probe_options` (Hutchinson options with the exact divergence),
  :func:`check_in_data_range` (bits/dim of data outside the declared range), :func:`checked_prior`.

Checks in hot paths read values only where that costs no device synchronisation
(:func:`host_values`: numbers and CPU tensors); the samplers validate their grid up front.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

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
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (numpy scalars are numbers.Real)
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


def check_batch(name: str, x: object, min_dim: int = 2, *, allow_empty: bool = False) -> torch.Tensor:
    """Check ``x`` is a floating tensor of shape ``(B, *shape)`` with at least ``min_dim`` dims
    and (unless ``allow_empty``) at least one sample and one element per sample."""
    x = check_tensor(name, x)
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have shape (batch, *data_shape) with at least {min_dim} dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} must hold at least one sample with at least one element, got shape {tuple(x.shape)}")
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


def check_int(name: str, value: object, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """Return ``value`` if it is an ``int`` (not a bool) in ``[lo, hi]``, else raise.

    Raises:
        TypeError: for a bool, a float or anything that is not an integer.
        ValueError: if it lies outside ``[lo, hi]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints are Integral
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{name} must be an int in [{lo_s}, {hi_s}], got {value}")
    return value


def check_real(name: str, value: object) -> float:
    """``float(value)`` for a real number or a one-element tensor; ``TypeError`` otherwise (bools refused)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_range(
    name: str, value: object, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """Return ``float(value)`` if it is a finite real number in the interval ``lo .. hi``.

    ``lo_open``/``hi_open`` exclude the end points (``(0, 1]`` is ``lo_open=True``).

    Raises:
        TypeError: if ``value`` is not a real number (bools refused).
        ValueError: if it is NaN/inf or outside the interval; the message names ``name`` and the interval.
    """
    v = check_real(name, value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {v}")
    return v


def host_values(x: Union[float, torch.Tensor]) -> Optional[torch.Tensor]:
    """(Anything that is neither a tensor nor a real number gives ``None``.)

    ``x`` as a float64 host tensor when reading it costs no device synchronisation
    (a number or a CPU tensor); ``None`` for tensors on an accelerator or the meta device,
    whose values the hot paths do not read (the samplers validated their grid up front)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64) if x.device.type == "cpu" else None
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return torch.tensor(float(x), dtype=torch.float64)


def check_coefficient(name: str, c: Union[float, torch.Tensor], what: str = "> 0") -> None:
    """Raise ``ValueError`` if a schedule coefficient (alpha or sigma) is not finite and > 0.

    Only values readable without a device synchronisation are checked (see :func:`host_values`).
    """
    v = host_values(c)
    if v is not None and v.numel() > 0 and not bool((torch.isfinite(v) & (v > 0)).all()):
        bad = v[~(torch.isfinite(v) & (v > 0))][0].item()
        hint = " (at t = 0 a VP-type sigma(t) is 0: use t >= eps)" if bad == 0 else ""
        raise ValueError(f"{name} must be finite and {what}, got {bad}{hint}")


def check_model_time(sde: object, t: object, batch: int) -> None:
    """A score model's time argument: in ``[0, T]`` and of shape ``()``/``(1,)``/``(batch,)``.

    Checked only where it costs no device synchronisation (a number or a CPU tensor, see
    :func:`host_values`); the samplers validate their whole grid before the first step.
    """
    if isinstance(t, bool) or host_values(t) is not None:  # type: ignore[arg-type]
        sde.time(t, batch=batch)  # type: ignore[attr-defined]


def check_same_shape(name: str, value: torch.Tensor, expected: Tuple[int, ...], producer: str) -> torch.Tensor:
    """Raise ``ValueError`` unless ``value`` (returned by ``producer``) has exactly ``expected`` shape.

    Used on user callables' outputs so that broadcasting (``(B, 1)`` against ``(B,)`` giving
    ``(B, B)``) never happens silently.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{producer} must return a tensor of shape {expected} ({name}), got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{producer} returned shape {tuple(value.shape)} for {name}, expected exactly {tuple(expected)}"
                         " (no broadcasting)")
    return value


def check_score_output(s: object, x: torch.Tensor, producer: str = "score_fn") -> torch.Tensor:
    """Raise unless ``s``, returned by ``producer`` for the input ``x``, is a tensor of exactly
    ``x``'s shape (``ValueError``; no broadcasting), on its device (``ValueError``) and of its dtype
    (``TypeError``: the state would otherwise change precision silently). Returns ``s``."""
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"{producer} returned shape {got}, expected {tuple(x.shape)}")
    if s.device != x.device:
        raise ValueError(f"{producer} returned a tensor on {s.device}, expected x's device {x.device}")
    if s.dtype != x.dtype:
        raise TypeError(f"{producer} returned dtype {s.dtype}, expected x's dtype {x.dtype} "
                        "(the state would change precision silently)")
    return s


def check_in_data_range(name: str, x: torch.Tensor, data_range: object) -> None:
    """Raise ``ValueError`` if ``x`` has values outside ``data_range = (lo, hi)`` (bits/dim are
    defined only for data inside the declared range). ``None`` checks nothing."""
    if data_range is None:
        return
    if not isinstance(data_range, (tuple, list)) or len(data_range) != 2:
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}")
    lo, hi = check_real("data_range[0]", data_range[0]), check_real("data_range[1]", data_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    if x.numel() == 0:
        return
    x_lo, x_hi = float(x.min()), float(x.max())
    if x_lo < lo or x_hi > hi:
        raise ValueError(f"{name} has values in [{x_lo:.6g}, {x_hi:.6g}], outside data_range = ({lo:g}, {hi:g}): "
                         "bits/dim are defined for data inside the declared range")


class _CheckedPrior:
    """A user prior whose ``log_prob(z)`` is checked to return exactly ``(B,)`` on ``z``'s device."""

    def __init__(self, prior: object) -> None:
        self.prior = prior

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        lp = self.prior.log_prob(z)  # type: ignore[attr-defined]
        check_same_shape("log_prob(z)", lp, (z.shape[0],), "prior.log_prob")
        if lp.device != z.device:
            raise ValueError(f"prior.log_prob returned a tensor on {lp.device} but z is on {z.device}")
        return lp

    def __getattr__(self, item: str) -> object:
        return getattr(self.prior, item)


def checked_prior(prior: object) -> object:
    """Validate a ``prior`` argument: ``"standard"`` or an object with ``log_prob(z) -> (B,)``.

    Returns ``prior`` itself for ``"standard"``, else a wrapper whose ``log_prob`` refuses any
    output that is not exactly ``(B,)`` (a ``(B, 1)`` output would broadcast silently).
    """
    if isinstance(prior, str):
        if prior != "standard":
            raise ValueError(f"prior must be 'standard' or an object with log_prob(z), got {prior!r}")
        return prior
    if isinstance(prior, _CheckedPrior):
        return prior
    if not callable(getattr(prior, "log_prob", None)):
        raise TypeError(f"prior must be 'standard' or an object with a log_prob(z) method, got {type(prior).__name__}")
    return _CheckedPrior(prior)


def check_probe_options(divergence: object, n_probes: object, probe: object, probes: object) -> None:
    """Refuse Hutchinson options with ``divergence="exact"``, where they would be silently ignored."""
    if divergence != "exact":
        return
    given = [name for name, used in (("n_probes", n_probes != 1), ("probe", probe != "rademacher"),
                                     ("probes", probes is not None)) if used]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to divergence='hutchinson'; with divergence='exact' "
                         "they would be ignored (drop them or use divergence='hutchinson')")


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``; ``TypeError`` otherwise (no truthy strings or ints)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_generator(generator: object, device: torch.device, ref_name: str) -> None:
    """Raise unless ``generator`` is ``None`` or a ``torch.Generator`` on ``device``'s type.

    Raises:
        TypeError: if it is not a ``torch.Generator``.
        ValueError: if it lives on another device than ``ref_name`` (random draws follow the data).
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"generator is on {generator.device} but {ref_name} is on {device}: "
                         f"create it there, torch.Generator(device={ref_name}.device)")


def check_time_tensor(name: str, t: object, batch: int) -> torch.Tensor:
    """A network's time input: a real tensor of shape ``()``, ``(1,)`` (one time for all) or exactly
    ``(batch,)``; never ``(B, 1)``, which would broadcast into a ``(B, B, ...)`` output. Shapes only:
    no device synchronisation. Returns ``t`` expanded to ``(batch,)``."""
    if not isinstance(t, torch.Tensor) or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor of shape () or ({batch},), got {type(t).__name__}")
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"{name} must have shape (), (1,) or ({batch},) to match the batch, got {tuple(t.shape)}")
    return t.reshape(-1).expand(batch) if t.dim() == 1 else t.expand(batch)


def check_exact_shapes(name_a: str, a: object, name_b: str, b: object) -> None:
    """Raise unless ``a`` and ``b`` are floating tensors of exactly the same non-empty shape."""
    ta, tb = check_batch(name_a, a, min_dim=1), check_batch(name_b, b, min_dim=1)
    if ta.shape != tb.shape:
        raise ValueError(f"{name_a} has shape {tuple(ta.shape)} but {name_b} has shape {tuple(tb.shape)}; they must match exactly")

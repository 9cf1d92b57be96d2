r"""The one result type of every solve: :class:`Solution`.

``sdeint``, ``odeint``, every sampler and the likelihood return a :class:`Solution` (the
likelihood a subclass with its log densities). It carries the output and what the solve did,
in the spirit of diffrax's ``Solution``:

* ``x``: the final state, shape ``(B, *shape)`` (a tuple of tensors for tuple-state ODEs);
* ``ts`` / ``ys``: the saved times (float64, ``(n_saved,)``) and states
  ``(n_saved, B, *shape)``, or ``None`` when only the final state was kept;
* statistics: ``nfe`` (score / vector-field evaluations), ``n_steps`` (accepted steps; for a
  fixed grid the number of grid intervals), ``n_rejected`` (rejected steps of adaptive
  methods), ``wall_time`` (seconds), and ``extra`` (method-specific details).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

Tensor = torch.Tensor

__all__ = ["Solution"]


@dataclass(kw_only=True)
class Solution:
    """What a solve returned and what it cost.

    Attributes:
        x: final state, ``(B, *shape)`` (for a tuple-state ODE: the tuple of final tensors).
        method: solver or sampler name (the registry name for samplers).
        nfe: number of function (score / network) evaluations.
        n_steps: accepted steps (fixed grids: number of grid intervals).
        n_rejected: rejected steps of adaptive methods (0 for fixed-step ones).
        wall_time: seconds spent in the solve.
        ts: float64 times at which ``ys`` was saved, ``(n_saved,)``, or ``None``.
        ys: saved states, ``(n_saved, B, *shape)`` (tuple-state ODEs: a tuple of such
            tensors), or ``None`` when only the final state was kept.
        extra: method-specific details (tolerances, orders, ...).
    """

    x: Tensor
    method: str
    nfe: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    wall_time: float = 0.0
    ts: Optional[Tensor] = None
    ys: Optional[Tensor] = None  # (a tuple of tensors for a tuple-state ODE)
    extra: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shape = tuple(self.x.shape) if isinstance(self.x, torch.Tensor) else tuple(tuple(v.shape) for v in self.x)
        saved = "none" if self.ts is None else str(int(self.ts.numel()))
        return (
            f"{type(self).__name__}(method={self.method!r}, x.shape={shape}, saved={saved}, nfe={self.nfe}, "
            f"n_steps={self.n_steps}, n_rejected={self.n_rejected}, wall_time={self.wall_time:.3g})"
        )

"""Records returned by solvers and samplers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class SolveInfo:
    """What a solve or a sampler did.

    Attributes:
        method: solver or sampler name.
        nfe: number of score (network) evaluations.
        n_steps: accepted steps (fixed-step methods: number of grid intervals).
        n_rejected: rejected steps of adaptive methods (0 otherwise).
        wall_time: seconds spent.
        extra: method-specific details (e.g. step sizes, tolerances).
    """

    method: str
    nfe: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    wall_time: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)

"""Gather per-rank ``(index, part)`` lists into one list in index order, on every rank."""

from __future__ import annotations

from typing import Any, List, Tuple, TypeVar

P = TypeVar("P")

__all__ = ["gather_in_order"]


def gather_in_order(mine: List[Tuple[int, P]], world: int, distributed: bool) -> List[Tuple[int, P]]:
    """All ranks' ``(k, part)`` pairs sorted by ``k`` (``all_gather_object``, works with gloo);
    ``mine`` itself when not ``distributed``. Every rank gets the same list, so results computed
    from it are identical to one process."""
    if not distributed:
        return mine
    import torch.distributed as dist

    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return sorted((kb for part in gathered for kb in part), key=lambda kb: kb[0])

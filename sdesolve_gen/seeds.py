r"""Per-sample random streams: sample ``i`` of a batch draws all its noise from its own seed.

With a plain :class:`torch.Generator` a batch of ``B`` samples shares one stream, so a
sample's noise depends on the batch size and on its position in the batch. A
:class:`SeedStreams` holds one :class:`torch.Generator` per sample (the "stacked generators" of
EDM's ``generate.py``); its :meth:`~SeedStreams.randn` draws one tensor of the per-sample
shape from each and stacks them. It is accepted wherever the samplers and
:func:`~sdesolve_gen.sdeint` accept a ``generator`` (the prior draw, every step's noise,
:class:`~sdesolve_gen.integrate.GridBrownian`), so the sample of seed ``s`` is a function of
``(s, sampler, grid, model)`` alone::

    streams = SeedStreams([10, 11, 12])
    x_T = sde.prior_sample((3, 2), generator=streams)
    sol = euler_maruyama(sde, score, x_T, ts, generator=streams)
    # == the same three seeds run in any other batch, in any order

Only the random draws are per-sample: samplers whose step control couples the batch
(``adaptive_sde``, ``dpm_solver_adaptive`` take a batch-wide step) stay batch dependent.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Union

import torch

Tensor = torch.Tensor

__all__ = ["SeedStreams", "randn"]


class SeedStreams:
    """One :class:`torch.Generator` per sample, seeded ``manual_seed(seed_i)``.

    Args:
        seeds: one integer seed per sample (``0 <= seed < 2**63``); duplicates are allowed (the
            samples are then identical).
        device: device of the generators (and of the draws; default CPU).

    Attributes:
        seeds: the seeds, as a list of ints.
        generators: the generators, in batch order.
    """

    def __init__(self, seeds: Iterable[int], *, device: Optional[Union[str, torch.device]] = None) -> None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds must hold at least one seed")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int):
                raise TypeError(f"seeds must be ints, got {type(s).__name__}")
            if not 0 <= s < 2**63:
                raise ValueError(f"seeds must lie in [0, 2**63), got {s}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seeds: List[int] = seeds
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        return f"SeedStreams(n={len(self)}, first={self.seeds[0]}, device={self.device})"

    def randn(self, shape: Sequence[int], *, dtype: Optional[torch.dtype] = None,
              device: Optional[Union[str, torch.device]] = None) -> Tensor:
        """``torch.stack([torch.randn(shape[1:], generator=g_i) for each sample i])``.

        Raises:
            ValueError: if ``shape[0]`` is not the number of streams, or ``device`` is another
                device type than the generators'.
        """
        shape = tuple(shape)
        if len(shape) < 1 or shape[0] != len(self.generators):
            raise ValueError(f"SeedStreams holds {len(self.generators)} streams but a draw of shape {shape} was "
                             "asked for: the batch size must equal the number of seeds")
        if device is not None and torch.device(device).type != self.device.type:
            raise ValueError(f"SeedStreams are on {self.device} but a draw on {device} was asked for")
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])


def randn(shape: Sequence[int], generator: Any = None, *, dtype: Optional[torch.dtype] = None,
          device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """``torch.randn`` from a :class:`torch.Generator` (or ``None``) or a :class:`SeedStreams`."""
    if isinstance(generator, SeedStreams):
        return generator.randn(shape, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

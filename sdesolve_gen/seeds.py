r"""Per-sample random streams: sample ``i`` of a batch draws all its noise from its own seed.

With a plain :class:`torch.Generator` a batch of ``B`` samples shares one stream, so a
sample's noise depends on the batch size and on its position in the batch. A
:class:`SeedStreams` gives every sample its own stream, keyed by its seed. Its
:meth:`~SeedStreams.randn` is accepted wherever the samplers and :func:`~sdesolve_gen.sdeint`
accept a ``generator`` (the prior draw, every step's noise,
:class:`~sdesolve_gen.integrate.GridBrownian`), so the sample of seed ``s`` is a function of
``(s, sampler, grid, model)`` alone::

    streams = SeedStreams([10, 11, 12])
    x_T = sde.prior_sample((3, 2), generator=streams)
    sol = euler_maruyama(sde, score, x_T, ts, generator=streams)
    # == the same three seeds run in any other batch, in any order

Two ways to draw (``method``):

* ``"philox"`` (default): the counter-based Philox-4x32-10 (:mod:`sdesolve_gen.philox`). The
  ``t``-th draw of sample ``i`` (seed :math:`s_i`), block ``j`` of its elements, is
  :math:`\mathrm{Philox}_{(s_i \bmod 2^{32},\ \lfloor s_i/2^{32} \rfloor)}(j, t, 0, 0)`, mapped to
  normals by Box-Muller (:func:`~sdesolve_gen.philox.normal_from_words`); one vectorised
  computation for the whole batch. The 32-bit words are exact integer arithmetic, hence the
  same on every device; the normals go through ``log``/``sqrt``/``cos``/``sin``, which may differ
  in the last ulp between devices (or CPU instruction sets), never between batch sizes, batch
  positions or ranks on one device.
* ``"generator"``: one :class:`torch.Generator` per sample, ``manual_seed(seed_i)`` (the "stacked
  generators" of EDM's ``generate.py``), drawn one sample at a time and stacked: one Python-level
  ``randn`` per sample per draw. Its streams are the device's generator (mt19937 on CPU,
  Philox on CUDA), so CPU and CUDA give different samples.

Only the random draws are per-sample: samplers whose step control couples the batch
(``adaptive_sde``, ``dpm_solver_adaptive``, ``dpm_solver_adaptive_ms`` take a batch-wide step;
``predictor_corrector``'s Langevin step size comes from batch-mean norms, as in score_sde) stay
batch dependent.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .philox import MASK32, normal_from_words, philox4x32

Tensor = torch.Tensor

__all__ = ["SeedStreams", "randn", "METHODS"]

#: The ways :class:`SeedStreams` draws.
METHODS = ("philox", "generator")
_AHEAD_MAX_DRAWS = 64
_AHEAD_MAX_ELEMENTS = 2**20


class SeedStreams:
    """One random stream per sample, keyed by the sample's seed.

    Args:
        seeds: one integer seed per sample (``0 <= seed < 2**63``); duplicates are allowed (the
            samples are then identical).
        device: device of the draws (default CPU).
        method: ``"philox"`` (default; counter-based, vectorised over the batch) or
            ``"generator"`` (one :class:`torch.Generator` per sample); see the module doc.

    Attributes:
        seeds: the seeds, as a list of ints.
        method: the method.
        draws: number of :meth:`randn` calls so far (the Philox draw counter ``t``).
        generators: with ``method="generator"`` the generators, in batch order (else empty).
    """

    def __init__(self, seeds: Iterable[int], *, device: Optional[Union[str, torch.device]] = None,
                 method: str = "philox") -> None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds must hold at least one seed")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int):
                raise TypeError(f"seeds must be ints, got {type(s).__name__}")
            if not 0 <= s < 2**63:
                raise ValueError(f"seeds must lie in [0, 2**63), got {s}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seeds: List[int] = seeds
        self.method = method
        self.draws = 0
        self.generators: List[torch.Generator] = (
            [torch.Generator(device=self.device).manual_seed(s) for s in seeds] if method == "generator" else [])
        self._key: Optional[Tensor] = None
        self._ahead: Optional[Tuple[Any, int, Tensor]] = None  # (shape and dtype, first draw, draws computed ahead)

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        return f"SeedStreams(n={len(self)}, first={self.seeds[0]}, device={self.device}, method={self.method!r})"

    def randn(self, shape: Sequence[int], *, dtype: Optional[torch.dtype] = None,
              device: Optional[Union[str, torch.device]] = None) -> Tensor:
        """Standard normals of ``shape``, row ``i`` from sample ``i``'s stream (the next draw of each).

        Raises:
            ValueError: if ``shape[0]`` is not the number of streams, or ``device`` is another
                device type than the streams'.
        """
        shape = tuple(shape)
        if len(shape) < 1 or shape[0] != len(self.seeds):
            raise ValueError(f"SeedStreams holds {len(self.seeds)} streams but a draw of shape {shape} was "
                             "asked for: the batch size must equal the number of seeds")
        if device is not None and torch.device(device).type != self.device.type:
            raise ValueError(f"SeedStreams are on {self.device} but a draw on {device} was asked for")
        dtype = dtype or torch.get_default_dtype()
        t = self.draws
        self.draws += 1
        if self.method == "generator":
            return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=self.device)
                                for g in self.generators])
        n = math.prod(shape[1:])
        per_block = 2 if dtype == torch.float64 else 4
        n_blocks = -(-n // per_block)
        if n_blocks > MASK32 or t > MASK32:
            raise ValueError(f"SeedStreams(method='philox') draws at most 2**32 blocks per sample and 2**32 draws; "
                             f"asked for draw {t} of {n} elements per sample")
        what = (shape, dtype)
        if self._ahead is not None and self._ahead[0] == what and 0 <= t - self._ahead[1] < self._ahead[2].shape[0]:
            return self._ahead[2][t - self._ahead[1]]
        # Draws t, t+1, ... are independent of when they are computed (the counter is the draw
        # index), so when a draw repeats the previous one's shape, compute the next k at once
        # (k doubling up to _AHEAD_MAX_ELEMENTS normals): the same numbers, fewer and larger tensor ops.
        repeat = self._ahead is not None and self._ahead[0] == what
        k = 1
        if repeat:
            k = max(1, min(2 * self._ahead[2].shape[0], _AHEAD_MAX_DRAWS,  # type: ignore[index]
                           _AHEAD_MAX_ELEMENTS // max(1, len(self.seeds) * n_blocks * per_block), MASK32 + 1 - t))
        z = self._philox(t, k, n_blocks, n, dtype).reshape(k, *shape)
        self._ahead = (what, t, z)
        return z[0]

    def _philox(self, t: int, k: int, n_blocks: int, n: int, dtype: torch.dtype) -> Tensor:
        """Draws ``t .. t+k-1``: ``(k, B, n)`` normals."""
        if self._key is None:
            s = torch.tensor(self.seeds, dtype=torch.int64, device=self.device)
            self._key = torch.stack([s & MASK32, s >> 32]).view(2, 1, len(self.seeds), 1)  # (2, 1, B, 1)
        counter = torch.zeros((4, k, len(self.seeds), n_blocks), dtype=torch.int64, device=self.device)
        counter[0] = torch.arange(n_blocks, dtype=torch.int64, device=self.device)
        counter[1] = torch.arange(t, t + k, dtype=torch.int64, device=self.device).view(k, 1, 1)
        return normal_from_words(philox4x32(counter, self._key, check=False), dtype)[..., :n]


def randn(shape: Sequence[int], generator: Any = None, *, dtype: Optional[torch.dtype] = None,
          device: Optional[Union[str, torch.device]] = None) -> Tensor:
    """``torch.randn`` from a :class:`torch.Generator` (or ``None``) or a :class:`SeedStreams`."""
    if isinstance(generator, SeedStreams):
        return generator.randn(shape, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

r"""Plumbing shared by every sampler: validated inputs, the grid's schedule values, the score call.

A sampler is a small function with one signature (the style of k-diffusion's ``sampling.py``)::

    sol = sampler(sde, score_fn, x_T, ts, *, generator=None, denoise=False, progress=False, ...)

with ``sde`` a :class:`~sdesolve_gen.sde.LinearSDE`, ``score_fn(x, t)`` a score, ``x_T`` the
initial noise of shape ``(B, *shape)``, ``ts`` a float64 grid running from ``T`` down to ``eps``
(e.g. :func:`~sdesolve_gen.integrate.timesteps`); it returns a :class:`~sdesolve_gen.Solution`
whose ``x`` holds the samples ``(B, *shape)``. A step goes from :math:`t = t_i` to
:math:`s = t_{i+1} < t` with :math:`h = t - s`.
"""

from __future__ import annotations

import time as _time
from typing import Any, Iterable, Optional

import torch

from .._checks import check_batch
from ..reverse import ScoreFn, _ScoreCaller
from ..sde import LinearSDE
from ..solution import Solution

Tensor = torch.Tensor

__all__ = ["Run", "check_ts", "tweedie_x0", "tweedie_denoise"]


class Run:
    """Validated inputs and per-grid schedule values shared by the samplers.

    Attributes:
        t: list of grid times (floats, decreasing); ``tt`` the same as 0-d float64 tensors.
        alpha, sigma, a, g2: lists of :math:`\\alpha, \\sigma, (\\log\\alpha)', g^2` on the grid.
    """

    def __init__(self, name: str, sde: Any, score_fn: Any, x_T: Any, ts: Any, generator: Optional[torch.Generator]) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.x_T = check_batch("x_T", x_T)
        if not bool(torch.isfinite(self.x_T).all()):
            raise ValueError("x_T contains NaN or inf")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        ts = check_ts(ts, sde)
        self.name, self.sde, self.generator = name, sde, generator
        self.caller = _ScoreCaller(sde, score_fn, None, True)
        self.tt = [ts[i] for i in range(ts.numel())]
        self.t = ts.tolist()
        self.alpha = torch.exp(sde.log_alpha(ts)).tolist()
        self.sigma = torch.sqrt(sde.sigma2(ts)).tolist()
        self.a = sde.drift_coef(ts).tolist()
        self.g2 = sde.diffusion2(ts).tolist()
        self.start = _time.perf_counter()

    def score(self, x: Tensor, i_or_t: Any) -> Tensor:
        t = self.tt[i_or_t] if isinstance(i_or_t, int) else i_or_t
        return self.caller.score(x, t)

    def noise(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def steps(self, progress: bool) -> Iterable[int]:
        rng = range(len(self.t) - 1)
        if progress:
            from tqdm.auto import tqdm

            return tqdm(rng, desc=self.name, leave=False)
        return rng

    def finish(self, x: Tensor, denoise: bool, **extra: Any) -> Solution:
        if denoise:
            x = tweedie_x0(x, self.score(x, len(self.t) - 1), self.alpha[-1], self.sigma[-1])
        return Solution(
            x=x,
            method=self.name,
            nfe=self.caller.nfe,
            n_steps=len(self.t) - 1,
            wall_time=_time.perf_counter() - self.start,
            extra=extra,
        )


def check_ts(ts: Any, sde: LinearSDE) -> Tensor:
    if not isinstance(ts, torch.Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError("ts must be a 1-D tensor of times") from None
    ts = ts.detach().to(torch.float64).cpu()
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be 1-D with at least 2 times (T -> eps), got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("ts must be finite")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly decreasing (sampling runs from T down to eps)")
    if float(ts[-1]) <= 0.0 or float(ts[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"ts must lie in (0, T] = (0, {sde.T}], got [{float(ts[-1])}, {float(ts[0])}]")
    return ts


def tweedie_x0(x: Tensor, score: Tensor, alpha: float, sigma: float) -> Tensor:
    r"""Tweedie's posterior mean :math:`\mathbb E[x_0 \mid x_t] = (x + \sigma^2 s)/\alpha`."""
    return (x + sigma * sigma * score) / alpha


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    r"""One Tweedie step at time ``t``: :math:`\hat x_0 = (x + \sigma(t)^2 s(x, t))/\alpha(t)`."""
    tt = sde.time(t)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    return tweedie_x0(x, _ScoreCaller(sde, score_fn, None, True).score(x, tt), alpha, sigma)

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

import math
import time as _time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import torch

from .._checks import as_float64, check_batch, check_bool
from ..reverse import ScoreFn, _ScoreCaller
from ..sde import LinearSDE
from ..seeds import SeedStreams, randn
from ..solution import Solution

Tensor = torch.Tensor

__all__ = ["Run", "Callback", "check_ts", "tweedie_x0", "tweedie_denoise"]

#: The per-step callback, called as ``callback({"i": step, "t": time reached, "x": state, "denoised": x0_hat or None})``.
Callback = Callable[[Dict[str, Any]], Any]


class Run:
    r"""Validated inputs and per-grid schedule values shared by the samplers.

    Every sampler takes the same common keyword arguments and hands them to :class:`Run`:

    * ``model_kwargs``: keyword arguments for every ``score_fn(x, t, **model_kwargs)`` call
      (class labels, conditioning inputs);
    * ``callback``: called after every step as ``callback({"i", "t", "x", "denoised"})`` with the
      step index, the time reached (0-d float64 tensor on ``x``'s device), the state and the
      sampler's data estimate :math:`\hat x_0` where it forms one (else ``None``);
    * ``differentiable``: build the autograd graph through the solve (default ``False``: the
      score runs under ``torch.no_grad()``, ``x_T`` is detached, no graph crosses steps);
    * ``check_finite``: ``"end"`` (default: one host synchronisation after the solve, the error
      naming the first bad time), ``"step"`` (raise at once) or ``"off"``;
    * ``denoise``: validated here, before the first step, and applied by :meth:`finish`.

    Device rule: time tensors handed to the score live on ``x_T``'s device and random draws use
    ``generator``, which must be on that device; nothing in the step loop synchronises with
    the host. ``generator`` may be a :class:`~sdesolve_gen.seeds.SeedStreams` with one stream
    per row of ``x_T`` (per-sample seeds: row ``i``'s noise comes from its own stream).

    Attributes:
        t: list of grid times (floats, decreasing); ``tt`` the same as 0-d float64 tensors on ``x_T``'s device.
        alpha, sigma, a, g2: lists of :math:`\alpha, \sigma, (\log\alpha)', g^2` on the grid.
    """

    def __init__(
        self,
        name: str,
        sde: Any,
        score_fn: Any,
        x_T: Any,
        ts: Any,
        generator: Optional[Any],
        *,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        callback: Optional[Callback] = None,
        differentiable: bool = False,
        check_finite: Any = "end",
        denoise: bool = False,
    ) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.x_T = check_batch("x_T", x_T)
        if isinstance(generator, SeedStreams):  # per-sample streams: one per row of x_T
            if len(generator) != self.x_T.shape[0]:
                raise ValueError(f"generator holds {len(generator)} per-sample streams but x_T has batch size "
                                 f"{self.x_T.shape[0]}")
        if generator is not None:
            if not isinstance(generator, (torch.Generator, SeedStreams)):
                raise TypeError(f"generator must be a torch.Generator or SeedStreams, got {type(generator).__name__}")
            if torch.device(generator.device).type != self.x_T.device.type:
                raise ValueError(f"generator is on {generator.device} but x_T is on {self.x_T.device}: "
                                 "random draws follow x_T's device, pass a generator on that device")
        if not bool(torch.isfinite(self.x_T).all()):
            raise ValueError("x_T contains NaN or inf")
        self.denoise = check_bool("denoise", denoise)  # checked before any work; :meth:`finish` applies it
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(info_dict), got {type(callback).__name__}")
        ts = check_ts(ts, sde)
        self.name, self.sde, self.generator, self.callback = name, sde, generator, callback
        self.caller = _ScoreCaller(sde, score_fn, None, check_finite, model_kwargs, differentiable)
        if not differentiable:
            self.x_T = self.x_T.detach()
        ts_x = ts.to(self.x_T.device)
        self.tt = [ts_x[i] for i in range(ts_x.numel())]
        self.t = ts.tolist()
        self.alpha = torch.exp(sde.log_alpha(ts)).tolist()
        self.sigma = torch.sqrt(sde.sigma2(ts)).tolist()
        self.a = sde.drift_coef(ts).tolist()
        self.g2 = sde.diffusion2(ts).tolist()
        self.start = _time.perf_counter()

    def score(self, x: Tensor, i_or_t: Any) -> Tensor:
        """The score at ``x`` and grid index ``i`` (an int) or a time tensor."""
        t = self.tt[i_or_t] if isinstance(i_or_t, int) else i_or_t
        return self.caller.score(x, t)

    def noise(self, x: Tensor) -> Tensor:
        """A standard normal draw of ``x``'s shape, dtype and device from the run's generator."""
        return randn(x.shape, self.generator, dtype=x.dtype, device=x.device)

    def steps(self, progress: bool) -> Iterable[int]:
        """Step indices ``0 .. len(ts) - 2``, with a tqdm bar if ``progress``."""
        rng = range(len(self.t) - 1)
        if check_bool("progress", progress):
            from tqdm.auto import tqdm

            return tqdm(rng, desc=self.name, leave=False)
        return rng

    def done(self, i: int, x: Tensor, denoised: Optional[Tensor] = None) -> None:
        """Report the end of step ``i`` (now at ``ts[i + 1]``) to the callback, if any."""
        if self.callback is None:
            return
        try:
            self.callback({"i": i, "t": self.tt[i + 1], "x": x, "denoised": denoised})
        except Exception as err:
            raise ValueError(f"callback raised {type(err).__name__} at step {i} (t={self.t[i + 1]:.6g}): {err}") from err

    def finish(self, x: Tensor, **extra: Any) -> Solution:
        """Denoise if the run was asked to, check finiteness once, and wrap the result in a :class:`~sdesolve_gen.Solution`."""
        if self.denoise:
            x = tweedie_x0(x, self.score(x, len(self.t) - 1), self.alpha[-1], self.sigma[-1])
        self.caller.raise_if_nonfinite()
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
            ts = as_float64(ts)
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
    if isinstance(alpha, (int, float)) and not (alpha > 0 and math.isfinite(alpha)):  # (numbers only: no device sync)
        raise ValueError(f"alpha must be a finite number > 0 (Tweedie divides by it), got {alpha}")
    return (x + sigma * sigma * score) / alpha


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    r"""One Tweedie step at time ``t``: :math:`\hat x_0 = (x + \sigma(t)^2 s(x, t))/\alpha(t)`."""
    tt = sde.time(t)
    alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
    return tweedie_x0(x, _ScoreCaller(sde, score_fn, None, True).score(x, tt), alpha, sigma)

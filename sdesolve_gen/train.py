r"""Training: a small trainer with EMA, atomic checkpoints, bit-exact resume and DDP.

The loss is :func:`~sdesolve_gen.losses.dsm_loss` on a score model ``(x, t) -> score`` (wrap any
network with :class:`~sdesolve_gen.ScoreModel`). Everything random (batch indices, times, noise)
comes from two ``torch.Generator`` objects owned by the trainer, and their states go into every
checkpoint with the model, the EMA weights, the optimiser and the step: a run killed at step k and
resumed from its checkpoint produces the same weights, bit for bit, as a run that never stopped.

Checkpoints are written atomically: to a temporary file in the same directory, flushed and
fsync'ed, then ``os.replace``'d over the previous one (and the directory fsync'ed), so a crash
leaves either the old or the new checkpoint, never a torn one. They are read with
``torch.load(weights_only=True)``.

Distributed data parallel: launch with ``torchrun --nproc_per_node=2 script.py`` (gloo on CPU).
When ``torch.distributed`` is initialised the trainer wraps the model in
``DistributedDataParallel``, draws each rank's batches from its own shard with its own generators
(seeded ``seed + rank``), and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ._checks import check_positive
from .losses import Weighting, dsm_loss
from .sde import LinearSDE

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["EMA", "Trainer", "atomic_save", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "sdesolve_gen.train/1"
_KEYS = {"format", "step", "model", "ema", "optimizer", "rng"}


class EMA:
    r"""Exponential moving average of parameters: :math:`\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta`.

    Args:
        model: the module whose parameters are averaged.
        decay: :math:`d \in [0, 1)` (default 0.999).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            p.copy_(s)

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        self.decay = float(state["decay"])
        self.shadow = [s.clone() for s in state["shadow"]]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file, flush, fsync, ``os.replace``, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - directories cannot be fsync'ed on some platforms
        pass
    return path


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a trainer checkpoint (``weights_only=True``) and check its structure.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, corrupt or not a trainer checkpoint (names the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn/corrupt files
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not _KEYS <= set(state) or state.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} is not an sdesolve_gen trainer checkpoint (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


class Trainer:
    r"""Train a score model by denoising score matching.

    Args:
        model: score model ``(x, t) -> score``, e.g. ``ScoreModel(MLPScoreNet(2), sde, "eps")``.
        sde: the forward SDE.
        data: a tensor ``(N, *shape)`` of training data, or an object with
            ``sample(n, generator=..., dtype=...)`` (e.g. an analytic ``GaussianMixture``).
        batch_size: per-rank batch size.
        lr, weight_decay: AdamW settings.
        lr_decay_steps: if > 0, cosine decay of the learning rate,
            :math:`\mathrm{lr}_k = \mathrm{lr}\,\tfrac12(1 + \cos(\pi\min(k/K, 1)))` with ``K = lr_decay_steps``
            (a function of the step alone, so resume stays bit-exact); 0 keeps it constant.
        grad_clip: max gradient norm (``None`` or 0 to disable).
        ema_decay: EMA decay of the weights used for sampling.
        weighting, importance_sampling, eps: passed to :func:`~sdesolve_gen.losses.dsm_loss`.
        seed: seed of the trainer's generators (rank r uses ``seed + r``).
        checkpoint_dir: where ``checkpoint.pt`` and ``log.jsonl`` go (rank 0 only), or ``None``.
        checkpoint_every: steps between checkpoints (0: only at the end of :meth:`train`).
        log_every: steps between log lines.
        eval_fn: optional ``eval_fn(trainer) -> dict`` called every ``eval_every`` steps; its
            result is logged.
        eval_every: steps between evaluations (0: never).
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        model: nn.Module,
        sde: LinearSDE,
        data: Any,
        *,
        batch_size: int = 256,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        lr_decay_steps: int = 0,
        grad_clip: Optional[float] = 1.0,
        ema_decay: float = 0.999,
        weighting: Weighting = "sigma2",
        importance_sampling: bool = False,
        eps: Optional[float] = None,
        seed: int = 0,
        checkpoint_dir: Optional[PathLike] = None,
        checkpoint_every: int = 0,
        log_every: int = 100,
        eval_fn: Optional[Callable[["Trainer"], Dict[str, float]]] = None,
        eval_every: int = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (e.g. ScoreModel), got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for name, v in (("checkpoint_every", checkpoint_every), ("log_every", log_every), ("eval_every", eval_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if isinstance(data, torch.Tensor):
            if not data.is_floating_point() or data.dim() < 2 or data.shape[0] < 1:
                raise ValueError(f"data must be a floating tensor of shape (N, *shape), got {data.dtype} {tuple(data.shape)}")
            if not bool(torch.isfinite(data).all()):
                raise ValueError("data contains NaN or inf")
        elif not callable(getattr(data, "sample", None)):
            raise TypeError("data must be a tensor (N, *shape) or have a sample(n, generator=...) method")
        self.model, self.sde, self.data = model, sde, data
        self.batch_size = batch_size
        self.grad_clip = grad_clip if grad_clip else None
        self.weighting, self.importance_sampling, self.eps = weighting, importance_sampling, eps
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.eval_fn, self.eval_every, self.progress = eval_fn, eval_every, progress
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=check_positive("lr", lr), weight_decay=weight_decay)
        if isinstance(lr_decay_steps, bool) or not isinstance(lr_decay_steps, int) or lr_decay_steps < 0:
            raise ValueError(f"lr_decay_steps must be an int >= 0, got {lr_decay_steps!r}")
        self.base_lr, self.lr_decay_steps = float(lr), lr_decay_steps
        self.ema = EMA(model, ema_decay)
        self.step = 0
        self.history: List[float] = []

        dist = torch.distributed
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.net = nn.parallel.DistributedDataParallel(model) if self.distributed else model
        self.g_data = torch.Generator().manual_seed(seed + self.rank)
        self.g_noise = torch.Generator().manual_seed(10_000 + seed + self.rank)
        if isinstance(data, torch.Tensor):
            self.shard = torch.arange(self.rank, data.shape[0], self.world)
            if self.shard.numel() == 0:
                raise ValueError(f"data has {data.shape[0]} samples, fewer than the {self.world} ranks")
        self.dtype = next(model.parameters()).dtype

    # ------------------------------------------------------------------ one step

    def _batch(self) -> Tensor:
        if isinstance(self.data, torch.Tensor):
            idx = self.shard[torch.randint(self.shard.numel(), (self.batch_size,), generator=self.g_data)]
            return self.data[idx].to(self.dtype)
        return self.data.sample(self.batch_size, generator=self.g_data, dtype=self.dtype)

    def train_step(self) -> float:
        """One optimiser step on one batch; returns the (rank-local) loss."""
        x0 = self._batch()
        loss = dsm_loss(
            self.net, self.sde, x0, weighting=self.weighting, importance_sampling=self.importance_sampling,
            generator=self.g_noise, eps=self.eps,
        )
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"training loss became non-finite at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.lr_decay_steps:
            frac = min(self.step / self.lr_decay_steps, 1.0)
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        value = float(loss.detach())
        self.history.append(value)
        return value

    def train(self, n_steps: int) -> List[float]:
        """Train until ``self.step == n_steps`` (a total, so a resumed run stops where planned).

        Returns:
            the losses of the steps taken in this call.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
        losses: List[float] = []
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, initial=self.step, desc="train")
        start = time.perf_counter()
        self.model.train()
        while self.step < n_steps:
            losses.append(self.train_step())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            record: Dict[str, Any] = {}
            if self.log_every and self.step % self.log_every == 0:
                window = self.history[-self.log_every:]
                record.update(loss=sum(window) / len(window))
            if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                record.update(self.eval_fn(self))
            if record:
                self._log(dict(step=self.step, wall_time=time.perf_counter() - start, **record))
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        if self.checkpoint_dir is not None:
            self.save()
        return losses

    def _log(self, record: Dict[str, Any]) -> None:
        if self.rank != 0 or self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with open(self.checkpoint_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> Dict[str, Any]:
        """Checkpoint contents. Under DDP this is a collective (every rank must call it): the
        generator states of ALL ranks are gathered, so each rank resumes its own streams."""
        rng = {"data": self.g_data.get_state(), "noise": self.g_noise.get_state(), "torch": torch.get_rng_state()}
        rng_ranks: List[Any] = [rng]
        if self.distributed:
            rng_ranks = [None] * self.world
            torch.distributed.all_gather_object(rng_ranks, rng)
        return {
            "format": _FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "history": torch.tensor(self.history, dtype=torch.float64),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        ranks = state.get("rng_ranks", [state["rng"]])
        if len(ranks) != self.world:
            raise ValueError(f"checkpoint holds generator states of {len(ranks)} rank(s) but this run has {self.world}; "
                             "bit-exact resume needs the same number of ranks")
        rng = ranks[self.rank]
        self.g_data.set_state(rng["data"])
        self.g_noise.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        self.history = [float(v) for v in state.get("history", torch.zeros(0)).tolist()]

    def save(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Atomically write the checkpoint (rank 0 only); default ``checkpoint_dir/checkpoint.pt``."""
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("save() needs a path or a checkpoint_dir")
            path = self.checkpoint_dir / CHECKPOINT_NAME
        state = self.state_dict()  # collective under DDP
        out = atomic_save(state, path) if self.rank == 0 else None
        if self.distributed:
            torch.distributed.barrier()  # no rank reads the file before rank 0 has replaced it
        return out

    def resume(self, path: Optional[PathLike] = None) -> bool:
        """Load the checkpoint at ``path`` (or ``checkpoint_dir``) if it exists; True if loaded."""
        target = Path(path) if path is not None else self.checkpoint_dir
        if target is None:
            raise ValueError("resume() needs a path or a checkpoint_dir")
        file = target / CHECKPOINT_NAME if target.is_dir() or path is None else target
        if not file.exists():
            return False
        self.load_state_dict(load_checkpoint(file))
        return True

    def ema_model(self) -> nn.Module:
        """A copy of the model carrying the EMA weights, in eval mode (use it for sampling)."""
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m)
        return m.eval()

r"""Training: a small trainer with EMA, verified atomic checkpoints, bit-exact resume and DDP.

The loss is :func:`~sdesolve_gen.losses.dsm_loss` on a score model ``(x, t) -> score`` (wrap any
network with :class:`~sdesolve_gen.ScoreModel`). Everything random (batch indices, label dropout,
times, noise) comes from two ``torch.Generator`` objects owned by the trainer and created on the
data and model devices; their states go into every checkpoint with the model, the EMA, the
optimiser, the learning-rate scheduler and the step: a run killed at step k and resumed from its
checkpoint produces the same weights, bit for bit, as a run that never stopped.

Checkpoints (:mod:`sdesolve_gen.checkpoints`) carry a SHA-256 digest of their payload, checked on
load (every corrupted byte is refused with a ``ValueError`` naming the file), and are written
atomically (temp file, fsync, ``os.replace``). Before the first step :meth:`Trainer.train` checks
that the checkpoint directory is writable and has room for a checkpoint, and removes temporary
files left by dead processes.

Distributed data parallel: launch with ``torchrun --nproc_per_node=2 script.py`` (gloo on CPU).
When ``torch.distributed`` is initialised the trainer wraps the model in
``DistributedDataParallel``, draws each rank's batches from its own shard with its own generators
(seeded ``seed + rank``), and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.optim.swa_utils import AveragedModel

from ._checks import check_int, check_positive, check_range
from .checkpoints import atomic_save, check_writable, clean_stale_temp_files, load_verified
from .losses import WEIGHTINGS, Weighting, dsm_loss
from .sde import LinearSDE

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]
OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler]

__all__ = ["EMA", "Trainer", "atomic_save", "load_checkpoint", "seeded", "CHECKPOINT_NAME"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "sdesolve_gen.train/2"
_KEYS = {"format", "step", "model", "ema", "optimizer", "rng"}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's global generators seeded with ``seed``, restoring them afterwards.

    Use it to build a network reproducibly (``nn.Linear`` etc. draw their initial weights from the
    global generator)::

        with sg.train.seeded(0):
            net = sg.MLPScoreNet(2)

    ``torch.random.fork_rng`` saves and restores the CPU generator (and those of the accelerator
    devices), ``torch.manual_seed`` seeds all of them.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class EMA(AveragedModel):
    r"""Exponential moving average of a model's parameters AND buffers, with a warm-up of the decay.

    A :class:`torch.optim.swa_utils.AveragedModel` (``use_buffers=True``). The first update copies
    the model; update :math:`n \ge 1` (``n`` = updates already averaged) applies

    .. math::

        \bar\theta \leftarrow d_n\,\bar\theta + (1 - d_n)\,\theta, \qquad
        d_n = \min\Big(d, \frac{1 + n}{10 + n}\Big)

    (``torch.lerp``, so constant buffers stay bit-identical; integer buffers are copied). Without
    the warm-up a run of K steps averages over ~:math:`1/(1-d)` steps even when K is smaller, and
    its EMA still remembers the untrained initial weights; with it the window grows with the run
    (:math:`d_n` reaches 0.999 after ~9000 updates).

    Args:
        model: the module whose parameters and buffers are averaged (a deep copy is kept in
            ``self.module``, on the model's device).
        decay: :math:`d \in [0, 1)` (default 0.999).
        warmup: use :math:`d_n` (default) or the constant :math:`d`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(f"decay (Trainer: ema_decay) must be a number in [0, 1), got {type(decay).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay (Trainer: ema_decay) must lie in [0, 1), got {decay}")
        if not isinstance(warmup, bool):
            raise TypeError(f"ema_warmup must be a bool, got {type(warmup).__name__}")
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.decay = float(decay)
        self.warmup = warmup

    def current_decay(self, n: int) -> float:
        """:math:`d_n` applied by the update after ``n`` averaged updates."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def _average(self, averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Union[Tensor, int]) -> None:
        weight = 1.0 - self.current_decay(int(num_averaged))
        for a, c in zip(averaged, current):
            if a.is_floating_point() or a.is_complex():
                a.lerp_(c, weight)
            else:
                a.copy_(c)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters and buffers of ``model`` into the average."""
        self.update_parameters(model)

    @property
    def n_updates(self) -> int:
        """Number of updates averaged so far."""
        return int(self.n_averaged)

    @property
    def shadow(self) -> List[Tensor]:
        """The averaged parameters, in ``model.parameters()`` order."""
        return list(self.module.parameters())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Copy the averaged parameters and buffers into ``model`` (same architecture)."""
        src = list(self.module.parameters()) + list(self.module.buffers())
        dst = list(model.parameters()) + list(model.buffers())
        if len(src) != len(dst):
            raise ValueError(f"model has {len(dst)} parameters and buffers, the EMA holds {len(src)}")
        for s, d in zip(src, dst):
            d.copy_(s)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a trainer checkpoint: verify its SHA-256 digest, ``torch.load(weights_only=True)``, check its keys.

    Args:
        path: the checkpoint file, or a directory holding ``checkpoint.pt``.

    Returns:
        the checkpoint dictionary (tensors on the CPU).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file if it is truncated, corrupt (any changed byte), has no
            integrity header, or is not a trainer checkpoint of this format.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming a checkpoint file or directory, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = load_verified(path)
    if not isinstance(state, dict) or not _KEYS <= set(state) or state.get("format") != _FORMAT:
        what = f"keys {sorted(state)}, format {state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not an sdesolve_gen trainer checkpoint of format {_FORMAT!r} ({what})")
    return state


def _check_int(name: str, v: Any, lo: int) -> int:
    return check_int(name, v, lo)  # (TypeError for bools and floats, ValueError below lo)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class Trainer:
    r"""Train a score model by denoising score matching.

    Each step draws a batch :math:`x_0` (``(B, *shape)``, and labels ``y`` ``(B,)`` for labelled
    data), times and noise, and takes one optimiser step on
    :func:`~sdesolve_gen.losses.dsm_loss`; then the LR scheduler (if any) steps and the EMA is
    updated.

    Args:
        model: score model ``(x, t) -> score``, e.g. ``ScoreModel(MLPScoreNet(2), sde, "eps")``;
            for labelled data it is called as ``model(x, t, **{label_kwarg: y})``.
        sde: the forward SDE.
        data: the training data, one of

            * a floating tensor ``(N, *shape)``;
            * a pair ``(x, y)``: ``x`` as above and integer labels ``y`` of shape ``(N,)``
              (class-conditional training);
            * an object with ``sample(n, generator=..., dtype=...)`` returning ``x`` or ``(x, y)``
              (e.g. an analytic ``GaussianMixture``; it gets a CPU generator).
        batch_size: per-rank batch size.
        lr, weight_decay: AdamW settings (defaults 2e-3 and 0) when ``optimizer`` is not given.
        optimizer: an optimiser over ``model.parameters()``, or a factory ``params -> optimiser``
            (default AdamW). Its state is checkpointed.
        lr_scheduler: any ``torch.optim.lr_scheduler`` scheduler of the trainer's optimiser, or a
            factory ``optimizer -> scheduler`` (use the factory with the default optimiser). It is
            stepped once per training step and its state is checkpointed.
        lr_decay_steps: if > 0 (and no ``lr_scheduler``), a cosine decay as a ``LambdaLR``,
            :math:`\mathrm{lr}_k = \mathrm{lr}\,\tfrac12(1 + \cos(\pi\min(k/K, 1)))`, ``K = lr_decay_steps``.
        grad_clip: max gradient norm (``None`` or 0 to disable).
        ema_decay: decay :math:`d` of the EMA weights used for sampling (see :class:`EMA`).
        ema_warmup: warm the EMA decay up as :math:`\min(d, (1+n)/(10+n))` (default True).
        weighting, importance_sampling, eps: passed to :func:`~sdesolve_gen.losses.dsm_loss`.
        label_dropout: probability :math:`p \in [0, 1)` of replacing each label by ``null_label``
            (classifier-free guidance trains the unconditional model through the null label).
        null_label: the null label (required if ``label_dropout > 0``; e.g. ``num_classes`` of
            :class:`~sdesolve_gen.UNet`); it must not occur in the data.
        label_kwarg: keyword under which labels are passed to the model (default ``"y"``).
        seed: seed of the trainer's generators (rank r uses ``seed + r``).
        device: where the model is trained (default: the model's device); the model is moved
            there, batches are moved there, the noise generator lives there and the data
            generator on the data's device.
        checkpoint_dir: where ``checkpoint.pt`` and ``log.jsonl`` go (rank 0 only), or ``None``.
        checkpoint_every: steps between checkpoints (0: only at the end of :meth:`train`).
        log_every: steps between log records (``log.jsonl`` and an INFO message of the
            ``sdesolve_gen.train`` logger); 0 disables them.
        eval_fn: optional ``eval_fn(trainer) -> dict`` called every ``eval_every`` steps; its
            result is logged.
        eval_every: steps between evaluations (0: never).
        progress: show a tqdm bar.

    The trainer does not change torch's thread count (see the training docs: on a small machine
    ``torch.set_num_threads(1)`` is usually faster; the CLI sets it with ``--threads``).
    """

    def __init__(
        self,
        model: nn.Module,
        sde: LinearSDE,
        data: Any,
        *,
        batch_size: int = 256,
        lr: Optional[float] = None,
        weight_decay: Optional[float] = None,
        optimizer: Union[None, torch.optim.Optimizer, OptimizerFactory] = None,
        lr_scheduler: Union[None, LRScheduler, SchedulerFactory] = None,
        lr_decay_steps: int = 0,
        grad_clip: Optional[float] = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        weighting: Weighting = "sigma2",
        importance_sampling: bool = False,
        eps: Optional[float] = None,
        label_dropout: float = 0.0,
        null_label: Optional[int] = None,
        label_kwarg: str = "y",
        seed: int = 0,
        device: Union[None, str, torch.device] = None,
        checkpoint_dir: Optional[PathLike] = None,
        checkpoint_every: int = 0,
        log_every: int = 100,
        eval_fn: Optional[Callable[[Trainer], Dict[str, float]]] = None,
        eval_every: int = 0,
        progress: bool = False,
    ) -> None:
        # ---- validate everything before any work
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (e.g. ScoreModel), got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters to train")
        check_int("batch_size", batch_size, 1)
        for name, v in (("checkpoint_every", checkpoint_every), ("log_every", log_every), ("eval_every", eval_every),
                        ("lr_decay_steps", lr_decay_steps)):
            _check_int(name, v, 0)
        if eval_fn is not None and not callable(eval_fn):
            raise TypeError(f"eval_fn must be callable as eval_fn(trainer) -> dict, got {type(eval_fn).__name__}")
        # options that would be ignored are refused (pass 0 to switch them off)
        if eval_every and eval_fn is None:
            raise ValueError("eval_every > 0 needs eval_fn (no evaluation would run); pass eval_every=0 or an eval_fn")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every > 0 needs checkpoint_dir (no checkpoint would be written); "
                             "pass checkpoint_every=0 or a checkpoint_dir")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        x_data, y_data = self._split_data(data)
        if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be a number in [0, 1), got {label_dropout!r}")
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0):
            raise ValueError(f"null_label must be an int >= 0 or None, got {null_label!r}")
        if label_dropout > 0 and null_label is None:
            raise ValueError("label_dropout > 0 needs null_label (the label that stands for 'no class', "
                             "e.g. num_classes of the UNet)")
        if isinstance(x_data, torch.Tensor) and label_dropout > 0 and y_data is None:
            raise ValueError("label_dropout > 0 needs labelled data: pass data=(x, y)")
        if y_data is not None and null_label is not None and bool((y_data == null_label).any()):
            raise ValueError(f"null_label={null_label} is also a class label in the data")
        if not isinstance(label_kwarg, str) or not label_kwarg.isidentifier():
            raise ValueError(f"label_kwarg must be a keyword name, got {label_kwarg!r}")
        if optimizer is not None and (lr is not None or weight_decay is not None):
            raise ValueError("lr and weight_decay configure the default AdamW; with optimizer= set them on your optimiser")
        if lr_scheduler is not None and lr_decay_steps:
            raise ValueError("pass lr_scheduler or lr_decay_steps, not both")
        if optimizer is not None and not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or a factory params -> optimizer, got {type(optimizer).__name__}")
        if lr_scheduler is not None and not (isinstance(lr_scheduler, LRScheduler) or callable(lr_scheduler)):
            raise TypeError(f"lr_scheduler must be a torch LR scheduler or a factory optimizer -> scheduler, got {type(lr_scheduler).__name__}")
        lr_value = check_positive("lr", 2e-3 if lr is None else lr)
        if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and not isinstance(grad_clip, bool)
                                          and grad_clip == 0):
            grad_clip = check_positive("grad_clip", grad_clip)  # a negative norm would ascend the loss
        if not (callable(weighting) or weighting in WEIGHTINGS):
            raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable t -> lambda(t), got {weighting!r}")
        if not isinstance(importance_sampling, bool):
            raise TypeError(f"importance_sampling must be a bool, got {type(importance_sampling).__name__}")
        if importance_sampling and weighting != "g2":
            raise ValueError("importance_sampling is defined for weighting='g2' (the likelihood weighting)")
        if eps is not None:
            check_range("eps", eps, 0.0, sde.T, lo_open=True, hi_open=True)
        wd_value = 0.0 if weight_decay is None else float(weight_decay)
        if not (math.isfinite(wd_value) and wd_value >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        try:
            dev = torch.device(device) if device is not None else params[0].device
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must name a torch device, got {device!r} ({exc})") from None

        # ---- state
        self.device = dev
        self.model = model.to(dev)
        self.sde, self.data = sde, data
        self._x, self._y = x_data, y_data
        self.batch_size = batch_size
        self.grad_clip = grad_clip if grad_clip else None
        self.weighting, self.importance_sampling, self.eps = weighting, importance_sampling, eps
        self.label_dropout, self.null_label, self.label_kwarg = float(label_dropout), null_label, label_kwarg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.eval_fn, self.eval_every, self.progress = eval_fn, eval_every, progress

        if optimizer is None:
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr_value, weight_decay=wd_value)
        elif isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        else:
            self.optimizer = optimizer(list(self.model.parameters()))
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise TypeError(f"optimizer factory returned {type(self.optimizer).__name__}, not a torch.optim.Optimizer")
        opt_params = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if opt_params != {id(p) for p in self.model.parameters()}:
            raise ValueError("optimizer must optimise exactly the model's parameters")
        self.base_lr, self.lr_decay_steps = lr_value, lr_decay_steps
        if lr_decay_steps:
            K = lr_decay_steps
            self.scheduler: Optional[LRScheduler] = LambdaLR(
                self.optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k / K, 1.0))))
        elif lr_scheduler is None:
            self.scheduler = None
        elif isinstance(lr_scheduler, LRScheduler):
            self.scheduler = lr_scheduler
        else:
            self.scheduler = lr_scheduler(self.optimizer)
            if not isinstance(self.scheduler, LRScheduler):
                raise TypeError(f"lr_scheduler factory returned {type(self.scheduler).__name__}, not a torch LR scheduler")
        if self.scheduler is not None and self.scheduler.optimizer is not self.optimizer:
            raise ValueError("lr_scheduler must schedule the trainer's optimizer (pass a factory optimizer -> scheduler)")
        self.ema = EMA(self.model, ema_decay, warmup=ema_warmup)
        self.step = 0
        self.history: List[float] = []

        dist = torch.distributed
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if self.distributed:
            self.net: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev] if dev.type not in ("cpu", "meta") else None)
        else:
            self.net = self.model
        data_dev = self._x.device if self._x is not None else torch.device("cpu")
        self.g_data = torch.Generator(device=data_dev).manual_seed(seed + self.rank)
        self.g_noise = torch.Generator(device=dev).manual_seed(10_000 + seed + self.rank)
        if self._x is not None:
            self.shard = torch.arange(self.rank, self._x.shape[0], self.world, device=data_dev)
            if self.shard.numel() == 0:
                raise ValueError(f"data has {self._x.shape[0]} samples, fewer than the {self.world} ranks")
        self.dtype = params[0].dtype

    @staticmethod
    def _split_data(data: Any) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        def check_x(x: Any) -> Tensor:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
                what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"data must be a floating tensor of shape (N, *shape), got {what}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError("data contains NaN or inf")
            return x

        if isinstance(data, torch.Tensor):
            return check_x(data), None
        if isinstance(data, (tuple, list)):
            if len(data) != 2:
                raise TypeError(f"labelled data must be a pair (x, y), got a {type(data).__name__} of length {len(data)}")
            x, y = check_x(data[0]), data[1]
            if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
                raise TypeError(f"data labels y must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"data labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            if bool((y < 0).any()):
                raise ValueError("data labels y must be >= 0")
            return x, y.to(device=x.device, dtype=torch.long)
        if not callable(getattr(data, "sample", None)):
            raise TypeError("data must be a tensor (N, *shape), a pair (x, y) or have a sample(n, generator=...) method")
        return None, None

    # ------------------------------------------------------------------ one step

    def _batch(self) -> Tuple[Tensor, Optional[Tensor]]:
        """One batch ``x0`` ``(B, *shape)`` on the trainer's device, and its labels ``(B,)`` or ``None``."""
        y: Optional[Tensor]
        if self._x is not None:
            idx = self.shard[torch.randint(self.shard.numel(), (self.batch_size,), generator=self.g_data,
                                           device=self.shard.device)]
            x = self._x[idx].to(device=self.device, dtype=self.dtype)
            y = self._y[idx] if self._y is not None else None
        else:
            out = self.data.sample(self.batch_size, generator=self.g_data, dtype=self.dtype)
            x, y = out if isinstance(out, (tuple, list)) else (out, None)
            x = x.to(device=self.device, dtype=self.dtype)
        if y is not None:
            if self.label_dropout > 0:
                drop = torch.rand(y.shape[0], generator=self.g_data, device=self.g_data.device) < self.label_dropout
                y = torch.where(drop.to(y.device), torch.full_like(y, int(self.null_label or 0)), y)
            y = y.to(self.device)
        return x, y

    def train_step(self) -> float:
        """One optimiser step on one batch; returns the (rank-local) loss."""
        x0, y = self._batch()
        loss = dsm_loss(
            self.net, self.sde, x0, weighting=self.weighting, importance_sampling=self.importance_sampling,
            generator=self.g_noise, eps=self.eps, model_kwargs={self.label_kwarg: y} if y is not None else None,
        )
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"training loss became non-finite at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        value = float(loss.detach())
        self.history.append(value)
        return value

    def checkpoint_size_estimate(self, n_steps: int = 0) -> int:
        """Bytes a checkpoint will take (an upper estimate used by the free-space check before training).

        Model + EMA + optimiser state (Adam-like: two moments per parameter if it has none yet)
        + the loss history (8 bytes per step) + 4 KiB per tensor and 256 KiB of pickling and
        archive overhead.
        """
        sd = self.model.state_dict()
        model_bytes = _tensor_bytes(sd)
        opt_bytes = _tensor_bytes(self.optimizer.state_dict()["state"]) or 2 * _tensor_bytes(list(self.model.parameters()))
        return 2 * model_bytes + opt_bytes + 8 * max(n_steps, self.step) + 2**10 * 4 * len(sd) + 2**18

    def _preflight(self, n_steps: int) -> None:
        if self.rank != 0 or self.checkpoint_dir is None:
            return
        check_writable(self.checkpoint_dir, self.checkpoint_size_estimate(n_steps))
        clean_stale_temp_files(self.checkpoint_dir)

    def train(self, n_steps: int) -> List[float]:
        """Train until ``self.step == n_steps`` (a total, so a resumed run stops where planned).

        Before the first step (rank 0, with a ``checkpoint_dir``) the directory is created if
        needed, checked for writability and free space (:func:`~sdesolve_gen.checkpoints.check_writable`),
        and temporary files of dead processes are removed.

        Returns:
            the losses of the steps taken in this call.

        Raises:
            OSError: naming the checkpoint directory if it is not writable or too full.
        """
        _check_int("n_steps", n_steps, 0)
        self._preflight(n_steps)
        losses: List[float] = []
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, initial=self.step, desc="train")
        start = time.perf_counter()
        self.model.train()
        try:
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
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint_dir is not None:
            self.save()
        return losses

    def _log(self, record: Dict[str, Any]) -> None:
        if self.rank != 0:
            return
        logger.info("step %d: %s", record["step"],
                    ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step"))
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with open(self.checkpoint_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ state

    def _rng_state(self) -> Dict[str, Tensor]:
        rng = {"data": self.g_data.get_state(), "noise": self.g_noise.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state_dict(self) -> Dict[str, Any]:
        """Checkpoint contents. Under DDP this is a collective (every rank must call it): the
        generator states of ALL ranks are gathered, so each rank resumes its own streams."""
        rng = self._rng_state()
        rng_ranks: List[Any] = [rng]
        if self.distributed:
            rng_ranks = [None] * self.world
            torch.distributed.all_gather_object(rng_ranks, rng)
        return {
            "format": _FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "ema_decay": self.ema.decay,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,
            "history": torch.tensor(self.history, dtype=torch.float64),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (e.g. from :func:`load_checkpoint`), everything bit-exact.

        Raises:
            ValueError: if the checkpoint does not match this trainer (architecture, rank count,
                scheduler present or not).
        """
        ranks = state.get("rng_ranks", [state["rng"]])
        if len(ranks) != self.world:
            raise ValueError(f"checkpoint holds generator states of {len(ranks)} rank(s) but this run has {self.world}; "
                             "bit-exact resume needs the same number of ranks")
        if (state.get("scheduler") is None) != (self.scheduler is None):
            raise ValueError("checkpoint and trainer disagree on the LR scheduler (one has one, the other not); "
                             "resume with the same lr_scheduler / lr_decay_steps")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint does not match the model: {str(exc).splitlines()[0]}") from None
        if "ema_decay" in state and float(state["ema_decay"]) != self.ema.decay:
            logger.warning("checkpoint was trained with ema_decay=%g; continuing with it instead of %g",
                           float(state["ema_decay"]), self.ema.decay)
            self.ema.decay = float(state["ema_decay"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rng = ranks[self.rank]
        self.g_data.set_state(rng["data"])
        self.g_noise.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.history = [float(v) for v in state.get("history", torch.zeros(0)).tolist()]

    def save(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Atomically write the checkpoint (rank 0 only); default ``checkpoint_dir/checkpoint.pt``.

        Raises:
            OSError: naming the file if it cannot be written (e.g. a full disk); no temporary
                file is left and the previous checkpoint is unchanged.
        """
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
        """Load the checkpoint at ``path`` (or ``checkpoint_dir``) if it exists; True if loaded.

        Raises:
            ValueError: naming the file if it exists but is corrupt or does not match.
        """
        target = Path(path) if path is not None else self.checkpoint_dir
        if target is None:
            raise ValueError("resume() needs a path or a checkpoint_dir")
        file = target / CHECKPOINT_NAME if target.is_dir() or path is None else target
        if not file.exists():
            return False
        self.load_state_dict(load_checkpoint(file))
        return True

    def ema_model(self) -> nn.Module:
        """A copy of the model holding the EMA parameters and buffers, in eval mode (for sampling)."""
        return copy.deepcopy(self.ema.module).eval()

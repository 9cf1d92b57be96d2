r"""Sharded, restartable generation of many samples, one seed per sample, and its evaluation.

:func:`generate` draws the sample of every seed in ``seeds`` with a registered sampler and
:class:`~sdesolve_gen.seeds.SeedStreams` (so the sample of a seed depends on the seed, the
sampler, the grid and the model alone: not on the batch size, the batch position or the number
of ranks). The seeds are cut, in the order given, into batches of ``batch_size``; batch ``k``
goes to ``torch.distributed`` rank ``k mod world_size`` (one rank if ``torch.distributed`` is not
initialised). Each finished batch is written atomically as ``batch-<k>.npz`` (arrays ``samples``
and ``seeds``; the zip entries carry a fixed timestamp, so equal samples give equal bytes),
optionally with a PNG. A restarted run skips the batches already on disk. ``manifest.json``
records what the directory holds (sampler, grid, SDE, model identity, shape, dtype, batch size,
seeds); a directory holding another run's files is refused.

:func:`evaluate` reads such a directory, sharded the same way, and gathers a summary (count,
mean and standard error of a per-sample score such as the exact log-density of toy data,
optionally a histogram of integer labels such as a classifier's classes, and the data-set
bits/dim of the samples under a model by
:func:`~sdesolve_gen.likelihood.dataset_log_likelihood`); every rank gets what one process gets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
import threading
import time as _time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._checks import check_int
from ._gather import gather_in_order
from .checkpoints import atomic_write_bytes, clean_stale_temp_files, temp_path
from .seeds import METHODS, SeedStreams

Tensor = torch.Tensor

__all__ = ["generate", "evaluate", "parse_seeds", "format_seeds", "GenerateResult", "EvalResult",
           "OutputDirError", "MANIFEST", "batch_path", "load_samples", "state_digest"]

#: Name of the manifest file in an output directory.
MANIFEST = "manifest.json"
_FORMAT = "sdesolve_gen.generate 1"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class OutputDirError(ValueError):
    """An output directory holds another run's files (raised naming ``out_dir``)."""


# ------------------------------------------------------------------------------------------ seeds


def parse_seeds(seeds: Any) -> List[int]:
    """Seeds from ``"0-49999"``, ``"0-9,20,30-39"`` (inclusive ranges), a ``range`` or a sequence of ints.

    Raises:
        ValueError: naming ``seeds`` for an empty range (``"5-3"``), an empty list, a negative
            seed, or seeds given twice (overlapping ranges); TypeError for non-integers.
    """
    out: List[int] = []
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",")]
        for part in parts:
            lo_hi = part.split("-")
            try:
                if len(lo_hi) == 1:
                    lo = hi = int(lo_hi[0])
                elif len(lo_hi) == 2:
                    lo, hi = int(lo_hi[0]), int(lo_hi[1])
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"seeds: cannot read {part!r} in {seeds!r} (expected e.g. '0-49999' or '0-9,20,30-39', "
                                 "non-negative integers, ranges inclusive)") from None
            if hi < lo:
                raise ValueError(f"seeds: the range {part!r} is empty (its end {hi} is below its start {lo})")
            out.extend(range(lo, hi + 1))
    else:
        if isinstance(seeds, (int, float, bool)) or seeds is None:
            raise TypeError(f"seeds must be a string such as '0-99', a range or a sequence of ints, got {seeds!r}")
        for s in seeds:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
                raise TypeError(f"seeds must be ints, got {type(s).__name__}")
            out.append(int(s))
    if not out:
        raise ValueError("seeds: no seeds given (the range or list is empty)")
    if min(out) < 0 or max(out) >= 2**63:
        raise ValueError(f"seeds: every seed must lie in [0, 2**63), got {min(out) if min(out) < 0 else max(out)}")
    if len(set(out)) != len(out):
        seen, dup = set(), None
        for s in out:
            if s in seen:
                dup = s
                break
            seen.add(s)
        raise ValueError(f"seeds: seed {dup} is given more than once (overlapping ranges?); every seed must be unique")
    return out


def format_seeds(seeds: Sequence[int]) -> str:
    """The compact inclusive-range string of a seed list, in its order (inverse of :func:`parse_seeds`)."""
    parts: List[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


# ------------------------------------------------------------------------------------------ files


def batch_path(out_dir: Union[str, os.PathLike], k: int) -> Path:
    """The file of batch ``k`` in ``out_dir``."""
    return Path(out_dir) / f"batch-{k:06d}.npz"


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) whose bytes depend on the arrays only (fixed zip timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _read_batch(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["samples"], z["seeds"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def load_samples(out_dir: Union[str, os.PathLike]) -> Tuple[Tensor, Tensor]:
    """All samples and seeds of a complete output directory, in the manifest's seed order.

    Raises:
        FileNotFoundError: if a batch is missing (the run is not finished).
    """
    man = _read_manifest(Path(out_dir))
    xs, ss = [], []
    for k in range(_n_batches(man)):
        got = _read_batch(batch_path(out_dir, k))
        if got is None:
            raise FileNotFoundError(f"{batch_path(out_dir, k)}: batch {k} is missing or unreadable (unfinished run?)")
        xs.append(torch.from_numpy(got[0]))
        ss.append(torch.from_numpy(got[1]))
    return torch.cat(xs), torch.cat(ss)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's ``state_dict`` (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj.detach().cpu().tolist(), "dtype": str(obj.dtype)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if callable(obj):
        return f"<callable {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}>"
    return repr(obj)


def _read_manifest(out_dir: Path) -> Dict[str, Any]:
    path = out_dir / MANIFEST
    try:
        with open(path) as f:
            man = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"out_dir: {str(out_dir)!r} has no {MANIFEST} (not written by generate?)") from None
    except ValueError as err:
        raise OutputDirError(f"out_dir: cannot read {str(path)!r}: {err}") from None
    if not isinstance(man, dict) or man.get("format") != _FORMAT:
        raise OutputDirError(f"out_dir: {str(path)!r} is not a manifest of sdesolve_gen.generate")
    return man


def _n_batches(man: Mapping[str, Any]) -> int:
    n = len(parse_seeds(man["seeds"]))
    return -(-n // int(man["batch_size"]))


#: manifest key -> the argument of :func:`generate` it comes from (named in the refusal).
_ARGUMENT = {"sampler": "sampler", "sampler_kwargs": "sampler_kwargs", "denoise": "denoise", "grid": "steps/ts",
             "sde": "sde", "model": "model_info", "shape": "shape", "dtype": "dtype", "batch_size": "batch_size",
             "seeds": "seeds", "model_kwargs": "model_kwargs", "noise": "noise", "format": "out_dir"}


def _check_or_write_manifest(out_dir: Path, man: Dict[str, Any]) -> Optional[str]:
    """Rank 0: accept ``out_dir`` (empty, or the same run's manifest) and write the manifest; else the error text."""
    path = out_dir / MANIFEST
    if path.exists():
        try:
            old = _read_manifest(out_dir)
        except (OutputDirError, FileNotFoundError) as err:
            return str(err)
        old.setdefault("noise", "generator")  # written before the noise scheme was recorded (and selectable)
        for key in man:
            if old.get(key) != man[key]:
                show = lambda v: (repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "...")  # noqa: E731
                return (f"out_dir: {str(out_dir)!r} holds another run's files: its manifest has {key}={show(old.get(key))}, "
                        f"this run has {key}={show(man[key])} (argument {_ARGUMENT.get(key, key)}); "
                        "pass a new out_dir, or the same arguments to resume")
        return None
    if out_dir.exists():
        if not out_dir.is_dir():
            return f"out_dir: {str(out_dir)!r} exists and is not a directory"
        foreign = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
        if foreign:
            return (f"out_dir: {str(out_dir)!r} is not empty and has no {MANIFEST} (it holds e.g. {foreign[0]!r}): "
                    "refusing to mix another run's files with this one; pass an empty or new out_dir")
    try:
        atomic_write_bytes((json.dumps(man, indent=1, sort_keys=True) + "\n").encode(), path)
    except OSError as err:
        return f"out_dir: cannot write {str(path)!r}: {err}"
    return None


def _dist() -> Tuple[bool, int, int]:
    import torch.distributed as dist

    on = dist.is_available() and dist.is_initialized()
    return on, (dist.get_rank() if on else 0), (dist.get_world_size() if on else 1)


def _agree(on: bool, rank: int, msg: Optional[str]) -> Optional[str]:
    """Rank 0's verdict, broadcast to every rank."""
    if not on:
        return msg
    import torch.distributed as dist

    box = [msg if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _LauncherWatch:
    """Under torchrun: SIGKILL this worker as soon as its launcher is gone (the worker was re-parented).

    ``kill -9`` of the torchrun launcher does not reach its workers: they ran on as orphans
    (measured with torch 2.13), so a restart would race them for the same batches. A daemon thread
    polls ``os.getppid()`` every ``interval`` seconds; when it changes, the worker reports it on
    stderr and kills itself with SIGKILL, as if it had been killed with its launcher (batch files
    are atomic, so at most the unfinished batch is lost and redone on restart). The files of a batch
    are written holding ``lock``; the watch takes it first, so a write in progress finishes and no
    temporary file is left behind (a restart that starts before the killed worker is reaped would
    keep such a file as a live process's). If the lock is not free within ``write_timeout``
    seconds, the temporary files of the batch in progress (``pending``) are removed instead.
    Inactive (no thread) unless ``active``.
    """

    def __init__(self, active: bool, interval: float = 0.2, write_timeout: float = 30.0) -> None:
        self.parent = os.getppid()
        self.active, self.interval, self.write_timeout = active, interval, write_timeout
        self.pending: List[Path] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdesolve_gen-launcher-watch", daemon=True)

    def __enter__(self) -> "_LauncherWatch":
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != self.parent:
                sys.stderr.write(f"generate: pid {os.getpid()}: the launcher (pid {self.parent}) is gone; stopping\n")
                sys.stderr.flush()
                if not self.lock.acquire(timeout=self.write_timeout):
                    for tmp in list(self.pending):
                        try:
                            tmp.unlink()
                        except OSError:  # not written yet, or already renamed into place
                            pass
                os.kill(os.getpid(), signal.SIGKILL)


def _launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and hasattr(signal, "SIGKILL")


# ------------------------------------------------------------------------------------------ generate


@dataclass
class GenerateResult:
    """What :func:`generate` did on this rank.

    Attributes:
        out_dir: the output directory.
        rank, world_size: this rank and the number of ranks.
        n_batches: batches of the whole run; ``batches``: the indices this rank owns.
        written, skipped: this rank's batches generated now / found complete on disk.
        n_samples: samples this rank generated now; ``wall_time``: seconds on this rank.
    """

    out_dir: Path
    rank: int
    world_size: int
    n_batches: int
    batches: List[int] = field(default_factory=list)
    written: List[int] = field(default_factory=list)
    skipped: List[int] = field(default_factory=list)
    n_samples: int = 0
    wall_time: float = 0.0

    @property
    def samples_per_s(self) -> float:
        """Samples generated per second on this rank (0 if none)."""
        return self.n_samples / self.wall_time if self.wall_time > 0 and self.n_samples else 0.0


def generate(
    sde: Any,
    score_fn: Any,
    sampler: str,
    seeds: Any,
    out_dir: Union[str, os.PathLike],
    *,
    batch_size: int,
    shape: Sequence[int],
    steps: Optional[int] = None,
    ts: Optional[Tensor] = None,
    sampler_kwargs: Optional[Mapping[str, Any]] = None,
    denoise: bool = False,
    model_kwargs: Any = None,
    model_info: Optional[Mapping[str, Any]] = None,
    dtype: torch.dtype = torch.float32,
    png: bool = False,
    png_fn: Optional[Callable[[Tensor, Path], None]] = None,
    progress: Union[bool, Callable[[str], None]] = True,
    noise: str = "philox",
) -> GenerateResult:
    r"""Generate the sample of every seed into ``out_dir``, sharded over ``torch.distributed`` ranks.

    Args:
        sde, score_fn: the SDE and score (``score_fn(x, t, **model_kwargs)``), as for the samplers.
        sampler: a name in :data:`~sdesolve_gen.samplers.SAMPLERS`.
        seeds: see :func:`parse_seeds` (``"0-49999"``, ``"0-9,20"``, a range or ints; unique).
        out_dir: output directory (created; must be empty, new, or hold this same run).
        batch_size: samples per batch file (the last batch may be smaller). The samples do not
            depend on it, the file layout does: it is part of the manifest.
        shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        steps, ts: the grid: ``ts`` as is, or the sampler's default grid of ``steps`` steps.
        sampler_kwargs: extra keyword arguments of the sampler (e.g. ``rtol`` of ``ode``).
        denoise: final Tweedie step.
        model_kwargs: keyword arguments of every score call: a mapping shared by all samples,
            or a callable ``model_kwargs(seeds) -> mapping`` of the batch's seeds (a
            ``LongTensor``), for per-sample conditioning such as labels.
        model_info: what identifies the model in the manifest (e.g. checkpoint digest and
            config); default: the :func:`state_digest` of ``score_fn`` if it is a module.
        dtype: of the samples.
        png, png_fn: also write ``batch-<k>.png`` per batch with ``png_fn(samples, path)``
            (default: an image grid for ``(C, H, W)`` samples, a scatter plot otherwise).
        progress: print one line per finished batch on rank 0 (or a callable taking the line).
        noise: the per-sample streams, ``method`` of :class:`~sdesolve_gen.seeds.SeedStreams`:
            ``"philox"`` (default) or ``"generator"`` (the scheme of directories written before
            the default changed; their manifests have no ``noise`` entry and read as
            ``"generator"``, so resume them with ``noise="generator"``).

    Returns:
        :class:`GenerateResult` of this rank.

    Raises:
        ValueError: naming ``seeds`` (empty, overlapping), ``batch_size``, ``steps``/``ts``;
            :class:`OutputDirError` (a ``ValueError``) naming ``out_dir`` if it holds another
            run's files (another sampler, grid, model, seeds, ...). KeyError for an unknown sampler.
    """
    from .samplers import SAMPLERS

    spec = SAMPLERS[sampler]
    seed_list = parse_seeds(seeds)
    if noise not in METHODS:
        raise ValueError(f"noise must be one of {METHODS}, got {noise!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be the non-empty shape of one sample, got {shape!r}")
    if ts is None:
        if steps is None:
            raise ValueError("steps: pass steps (grid steps) or ts (the grid)")
        check_int("steps", steps, 1)
        ts = spec.timesteps(sde, steps)
    elif steps is not None:
        raise ValueError("steps: pass steps or ts, not both")
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    sampler_kwargs = dict(sampler_kwargs or {})
    if model_info is None:
        model_info = {"state_digest": state_digest(score_fn)} if isinstance(score_fn, torch.nn.Module) else \
            {"score_fn": _jsonable(score_fn)}
    man = {
        "format": _FORMAT, "sampler": spec.name, "sampler_kwargs": _jsonable(sampler_kwargs), "denoise": bool(denoise),
        "grid": ts.tolist(), "sde": repr(sde), "model": _jsonable(model_info), "shape": list(shape),
        "dtype": str(dtype), "batch_size": batch_size, "seeds": format_seeds(seed_list),
        "model_kwargs": _jsonable(model_kwargs), "noise": noise,
    }
    man = json.loads(json.dumps(man))  # what a re-read would see (tuples -> lists, float repr round trip)
    out = Path(out_dir)
    on, rank, world = _dist()
    msg = None
    if rank == 0:
        msg = _check_or_write_manifest(out, man)
        if msg is None:
            clean_stale_temp_files(out)
    msg = _agree(on, rank, msg)
    if msg is not None:
        raise OutputDirError(msg)

    say: Optional[Callable[[str], None]] = None
    if rank == 0 and progress:
        say = progress if callable(progress) else (lambda line: print(line, file=sys.stdout, flush=True))
    n_batches = -(-len(seed_list) // batch_size)
    res = GenerateResult(out, rank, world, n_batches, batches=list(range(rank, n_batches, world)))
    with _LauncherWatch(on and _launched_by_torchrun()) as watch:
        start = _time.perf_counter()
        for done, k in enumerate(res.batches, 1):
            chunk = seed_list[k * batch_size:(k + 1) * batch_size]
            path = batch_path(out, k)
            got = _read_batch(path) if path.exists() else None
            if got is not None and got[1].tolist() == chunk and tuple(got[0].shape) == (len(chunk), *shape):
                res.skipped.append(k)
                continue
            streams = SeedStreams(chunk, method=noise)
            x_T = sde.prior_sample((len(chunk), *shape), generator=streams, dtype=dtype)
            kwargs = dict(sampler_kwargs)
            if denoise:
                kwargs["denoise"] = True
            if model_kwargs is not None:
                kwargs["model_kwargs"] = model_kwargs(torch.tensor(chunk)) if callable(model_kwargs) else model_kwargs
            x = spec(sde, score_fn, x_T, ts, generator=streams, **kwargs).x.detach().to(dtype).cpu()
            data = _npz_bytes({"samples": x.numpy(), "seeds": np.asarray(chunk, dtype=np.int64)})
            with watch.lock:
                watch.pending = [temp_path(path), _png_temp(path.with_suffix(".png"))]
                if png:
                    _write_png(x, path.with_suffix(".png"), png_fn)
                atomic_write_bytes(data, path)
            res.written.append(k)
            res.n_samples += len(chunk)
            if say is not None:
                el = _time.perf_counter() - start
                say(f"generate: rank 0 batch {k} ({done}/{len(res.batches)} of rank 0's, {len(res.skipped)} already on "
                    f"disk), {res.n_samples / el:.1f} samples/s on rank 0, world size {world}")
        res.wall_time = _time.perf_counter() - start
        if on:
            import torch.distributed as dist

            dist.barrier()
    return res


def _png_temp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")


def _write_png(x: Tensor, path: Path, png_fn: Optional[Callable[[Tensor, Path], None]]) -> None:
    tmp = _png_temp(path)
    try:
        if png_fn is not None:
            png_fn(x, tmp)
        elif x.dim() == 4:
            from .plotting import image_grid

            image_grid(x[:100], str(tmp), value_range=(-1.0, 1.0))
        else:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4, 4))
            xf = x.flatten(1).double()
            ax.scatter(xf[:, 0], xf[:, 1] if xf.shape[1] > 1 else torch.zeros(len(xf)), s=4)
            fig.savefig(str(tmp), dpi=80)
            plt.close(fig)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------------------ evaluate


@dataclass
class EvalResult:
    """A gathered summary of an output directory (the same on every rank, equal to one process's).

    Attributes:
        n: samples scored; ``missing``: batches not on disk (or unreadable, or with wrong seeds).
        mean, stderr: of the per-sample score (``nan`` without ``score``); ``n_nonfinite`` samples
            with a non-finite score are left out of both.
        histogram: counts per label ``0 .. n_labels-1`` (``None`` without ``label_fn``).
        seeds: ``(n,)`` seeds of the scored samples, in the manifest's order.
        scores, labels: ``(n,)`` per-sample score / label in that order (``None`` without them).
        likelihood: the :class:`~sdesolve_gen.likelihood.DatasetLikelihood` (bits/dim) of the
            samples under ``likelihood_model`` (``None`` without it).
    """

    n: int
    missing: int
    mean: float
    stderr: float
    n_nonfinite: int = 0
    histogram: Optional[List[int]] = None
    seeds: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    likelihood: Any = None


class _DirBatches:
    """The batches of a complete output directory as float64 tensors, batch ``k`` = file ``k``."""

    def __init__(self, out_dir: Path, n_batches: int) -> None:
        self.out_dir, self.n_batches = out_dir, n_batches

    def __iter__(self) -> Any:
        for k in range(self.n_batches):
            got = _read_batch(batch_path(self.out_dir, k))
            if got is None:  # checked before; a file removed meanwhile
                raise FileNotFoundError(f"{batch_path(self.out_dir, k)}: batch {k} vanished during evaluate")
            yield torch.from_numpy(got[0]).double()


def evaluate(
    out_dir: Union[str, os.PathLike],
    *,
    score: Optional[Callable[[Tensor], Tensor]] = None,
    label_fn: Optional[Callable[[Tensor], Tensor]] = None,
    n_labels: int = 10,
    likelihood_model: Optional[Tuple[Any, Any]] = None,
    likelihood_kwargs: Optional[Mapping[str, Any]] = None,
) -> EvalResult:
    r"""Summarise a :func:`generate` directory, sharded over ``torch.distributed`` ranks and gathered.

    Batch ``k`` is scored by rank ``k mod world_size``; the per-sample results are gathered
    (``all_gather_object``, works with gloo) into the manifest's order and summarised there, so
    every rank returns exactly (bit for bit) what one process returns.

    Args:
        out_dir: a directory written by :func:`generate`.
        score: per-sample score of a ``(n, *shape)`` float64 batch, shape ``(n,)`` (e.g. the
            exact log-density ``target.log_prob`` of toy data).
        label_fn: integer labels in ``[0, n_labels)`` of a float64 batch (e.g. a classifier's classes).
        n_labels: histogram size.
        likelihood_model: ``(sde, score_fn)``: also the data-set bits/dim of the samples under
            this model, by :func:`~sdesolve_gen.likelihood.dataset_log_likelihood` with one
            likelihood batch per batch file (probes of batch ``k`` seeded ``seed + k``; sharded the
            same way). The samples are passed as float64: ``score_fn`` must accept float64.
            Needs every batch on disk.
        likelihood_kwargs: keyword arguments of ``dataset_log_likelihood`` (``seed``,
            ``data_range``, ``divergence``, ``rtol``, ...; not ``batch_size``).

    Raises:
        FileNotFoundError: with ``likelihood_model`` if a batch is missing (its bits/dim would
            cover another set of samples than the directory's).
        ValueError: naming ``likelihood_model`` / ``likelihood_kwargs`` / ``n_labels`` for bad values.
    """
    man = _read_manifest(Path(out_dir))
    if isinstance(n_labels, bool) or not isinstance(n_labels, int) or n_labels < 1:
        raise ValueError(f"n_labels must be an int >= 1, got {n_labels!r}")
    if likelihood_model is not None and (not isinstance(likelihood_model, (tuple, list)) or len(likelihood_model) != 2):
        raise ValueError("likelihood_model must be a pair (sde, score_fn)")
    lk_kwargs = dict(likelihood_kwargs or {})
    if "batch_size" in lk_kwargs:
        raise ValueError("likelihood_kwargs: batch_size is the directory's (one likelihood batch per file); "
                         "do not pass it")
    seed_list = parse_seeds(man["seeds"])
    bs = int(man["batch_size"])
    on, rank, world = _dist()
    n_b = -(-len(seed_list) // bs)
    with _LauncherWatch(on and _launched_by_torchrun()):  # under torchrun: stop when the launcher is killed (as generate does)
        allb = _evaluate_batches(out_dir, seed_list, bs, n_b, on, rank, world, score, label_fn)
        res = _summarise(allb, score is not None, label_fn is not None, n_labels)
        if likelihood_model is not None:
            res.likelihood = _bits_per_dim(out_dir, allb, n_b, bs, on, likelihood_model, lk_kwargs)
    return res


def _evaluate_batches(out_dir: Any, seed_list: List[int], bs: int, n_b: int, on: bool, rank: int, world: int,
                      score: Optional[Callable[[Tensor], Tensor]], label_fn: Optional[Callable[[Tensor], Tensor]],
                      ) -> List[Tuple[int, Optional[Dict[str, Any]]]]:
    """This rank's batches scored, gathered from every rank: ``[(k, part or None if missing)]`` in batch order."""
    mine: List[Tuple[int, Optional[Dict[str, Any]]]] = []
    for k in range(rank, n_b, world):
        got = _read_batch(batch_path(out_dir, k))
        if got is None or got[1].tolist() != seed_list[k * bs:(k + 1) * bs]:
            mine.append((k, None))
            continue
        x = torch.from_numpy(got[0]).double()
        part: Dict[str, Any] = {"seeds": torch.from_numpy(got[1]).long()}
        if score is not None:
            part["scores"] = score(x).detach().double().reshape(-1).cpu()
        if label_fn is not None:
            part["labels"] = torch.as_tensor(label_fn(x)).long().reshape(-1).cpu()
        mine.append((k, part))
    return gather_in_order(mine, world, on)


def _summarise(allb: List[Tuple[int, Optional[Dict[str, Any]]]], has_score: bool, has_labels: bool,
               n_labels: int) -> EvalResult:
    """The :class:`EvalResult` of the gathered batches (no likelihood)."""
    parts = [p for _, p in allb if p is not None]
    missing = sum(p is None for _, p in allb)
    empty_l = torch.zeros(0, dtype=torch.long)
    seeds_t = torch.cat([p["seeds"] for p in parts]) if parts else empty_l
    n = int(seeds_t.numel())
    res = EvalResult(n=n, missing=missing, mean=float("nan"), stderr=float("nan"), seeds=seeds_t)
    if has_score:
        v = torch.cat([p["scores"] for p in parts]) if parts else torch.zeros(0, dtype=torch.float64)
        fin = torch.isfinite(v)
        vf = v[fin]
        m = int(vf.numel())
        res.scores, res.n_nonfinite = v, n - m
        if m > 0:
            res.mean = float(vf.mean())
        if m > 1:
            res.stderr = float(vf.std()) / m ** 0.5
    if has_labels:
        lab = torch.cat([p["labels"] for p in parts]) if parts else empty_l
        res.labels = lab
        res.histogram = [int(c) for c in torch.bincount(lab.clamp(0, n_labels - 1), minlength=n_labels)[:n_labels]]
    return res


def _bits_per_dim(out_dir: Any, allb: List[Tuple[int, Optional[Dict[str, Any]]]], n_b: int, bs: int, on: bool,
                  likelihood_model: Tuple[Any, Any], lk_kwargs: Dict[str, Any]) -> Any:
    """``dataset_log_likelihood`` of a complete directory, one likelihood batch per file."""
    missing = sum(p is None for _, p in allb)
    if missing:
        first = next(k for k, p in allb if p is None)
        raise FileNotFoundError(f"{batch_path(out_dir, first)}: batch {first} is missing or unreadable: the bits/dim "
                                f"of likelihood_model needs every batch ({missing} of {n_b} missing)")
    from .likelihood import dataset_log_likelihood

    sde, score_fn = likelihood_model
    return dataset_log_likelihood(sde, score_fn, _DirBatches(Path(out_dir), n_b), batch_size=bs, distributed=on,
                                  **lk_kwargs)

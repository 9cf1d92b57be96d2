r"""The ``sdesolve-gen`` command line.

Subcommands (``sdesolve-gen <command> --help`` for each)::

    sdesolve-gen demo        [--out demo.png] [--seed 0] [-n 10000] ...
    sdesolve-gen train       --ckpt DIR [--data eight_gaussians|two_moons|swiss_roll|checkerboard|digits] [--conditional] [--steps N] [--resume]
    sdesolve-gen sample      DIR [--sampler NAME] [-n N] [--steps N] [--seed S] [--class K [--cfg W]] [--out samples.pt|.png]
    sdesolve-gen sample      DIR --seeds 0-49999 --out OUTDIR [--batch N] [--png]   (sharded; torchrun for ranks)
    sdesolve-gen evaluate    OUTDIR [--bpd CHECKPOINT]                               (sharded; torchrun for ranks)
    sdesolve-gen likelihood  DIR [-n N] [--divergence exact|hutchinson] [--probes K] [--seed S] [--progress]
    sdesolve-gen bench       [--quick] [--out DIR] [--only SECTION ...]

Bad arguments and user errors (unknown sampler, missing checkpoint, non-positive sizes, an
unknown value in a checkpoint's config, ...) are reported as ONE line
``sdesolve-gen <command>: error: <message naming the argument>`` on stderr with exit code 2 and no
traceback. Operating-system errors (a full disk, a read-only checkpoint directory) are one line
naming the path, exit code 1. A closed output pipe (``sdesolve-gen ... | head -1``) ends the
command quietly with exit code 1. The logic lives in the library (:mod:`sdesolve_gen.demo`, the
samplers, :func:`~sdesolve_gen.log_likelihood`, the trainer); this module only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser"]

class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line on stderr (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# ------------------------------------------------------------------------------------------ demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    out = args.out
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CLIError(f"argument --out: directory {parent!r} does not exist")
    if not out.lower().endswith(".png"):
        raise CLIError(f"argument --out: expected a .png path, got {out!r}")
    log = (lambda s: print(f"  {s}", file=sys.stderr, flush=True)) if args.verbose else None
    result = run_demo(
        out, seed=args.seed, n=args.n, em_steps=args.em_steps, pc_steps=args.pc_steps,
        dpm_steps=args.dpm_steps, n_likelihood=args.n_likelihood, progress=args.progress, log=log,
    )
    print(f"sdesolve-gen demo: 2-D Gaussian mixture (4 components), VP SDE, exact score; every sampler starts from "
          f"the exact prior p_T; N={args.n}, seed={args.seed}")
    print(format_table(result))
    return 0


# ------------------------------------------------------------------------------------------ bench


def _benchmarks_root() -> Optional[str]:
    """The source checkout holding ``benchmarks/__main__.py`` next to this package, if any."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")) else None


def _cmd_bench(args: argparse.Namespace) -> int:
    root = _benchmarks_root()
    if root is None:
        raise CLIError("the benchmarks package ships with the source checkout only; run `sdesolve-gen bench` "
                       "from an editable install (pip install -e .) of the git repository")
    cmd: List[str] = [sys.executable, "-m", "benchmarks"]
    if args.quick:
        cmd.append("--quick")
    if args.out is not None:
        cmd += ["--out", os.path.abspath(args.out)]
    if args.only:
        cmd += ["--only", *args.only]
    if args.repeats is not None:
        cmd += ["--repeats", str(args.repeats)]
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print("running: python " + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, env=env)


# ---------------------------------------------------------------------- train / sample / likelihood

_CONFIG = "sdesolve_gen_cli.json"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"sdesolve_gen.{module}")
    except ImportError as err:
        raise CLIError(f"this command needs sdesolve_gen.{module}, which could not be imported ({err})") from None


_SDES = {"vp": "VPSDE", "ve": "VESDE", "subvp": "SubVPSDE"}
_DIGITS_HOLDOUT = 297  # the last 297 of the 1797 digits are held out (never trained on)
_N_DIGIT_CLASSES = 10
_DEFAULT_LABEL_DROPOUT = 0.1  # --conditional: probability of the null label


def _check_config(cfg: Any, where: str) -> Dict[str, Any]:
    """Refuse a config with a missing or unknown key or an unknown value (one line naming both)."""
    from .data import TOY_DATASETS

    if not isinstance(cfg, dict):
        raise CLIError(f"{where}: expected a JSON object, got {type(cfg).__name__}")

    def bad(key: str, want: str) -> CLIError:
        return CLIError(f"{where}: {key}={cfg.get(key)!r} is not {want}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    checks = {
        "data": (lambda v: v in TOY_DATASETS or v == "digits", f"one of {', '.join(sorted(TOY_DATASETS))}, digits"),
        "sde": (lambda v: v in _SDES, f"one of {', '.join(_SDES)}"),
        "parameterisation": (lambda v: v == "eps", "'eps'"),
        "batch_size": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "lr": (lambda v: is_num(v) and v > 0, "a number > 0"),
        "seed": (is_int, "an int"),
        "ema_decay": (lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        "conditional": (lambda v: isinstance(v, bool), "true or false"),
        "label_dropout": (lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        "hidden": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "depth": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "base": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    }
    required = ("data", "sde")
    for key in required:
        if key not in cfg:
            raise CLIError(f"{where}: missing key {key!r}")
    for key, value in cfg.items():
        if key not in checks:
            raise CLIError(f"{where}: unknown key {key!r} (known: {', '.join(checks)})")
        ok, want = checks[key]
        if not ok(value):
            raise bad(key, want)
    if cfg.get("conditional") and cfg["data"] != "digits":
        raise CLIError(f"{where}: conditional=true needs data='digits', got {cfg['data']!r}")
    return cfg


def _load_config(ckpt: str) -> Dict[str, Any]:
    if not os.path.exists(ckpt):
        raise CLIError(f"argument checkpoint: no such file or directory: {ckpt!r}")
    directory = ckpt if os.path.isdir(ckpt) else os.path.dirname(os.path.abspath(ckpt))
    path = os.path.join(directory, _CONFIG)
    if not os.path.isfile(path):
        raise CLIError(f"argument checkpoint: {directory!r} has no {_CONFIG} (was it written by `sdesolve-gen train`?)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as err:
        raise CLIError(f"argument checkpoint: cannot read {path!r}: {err}") from None
    return _check_config(cfg, f"argument checkpoint: config {path!r}")


def _build(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Model, SDE and data objects from a CLI config (see :func:`_cmd_train`)."""
    import torch

    from . import sde as sde_mod
    from .parameterisation import ScoreModel

    nets, data_mod, train_mod = _require("nets"), _require("data"), _require("train")
    sde = getattr(sde_mod, _SDES[cfg["sde"]])()
    # the initial weights come from torch's global generator: build the net under the run's seed
    # (and restore the generator afterwards) so `train --seed S` is reproducible bit for bit
    with train_mod.seeded(cfg.get("seed", 0)):
        if cfg["data"] == "digits":
            x, y = data_mod.load_digits(data_range=(-1.0, 1.0), return_labels=True)
            train, held = x[:-_DIGITS_HOLDOUT], x[-_DIGITS_HOLDOUT:]
            if cfg.get("conditional"):
                train = (train, y[:-_DIGITS_HOLDOUT])
            net = nets.UNet(in_channels=1, base=cfg.get("base", 32), t_max=sde.T,
                            num_classes=_N_DIGIT_CLASSES if cfg.get("conditional") else None)
            target, shape = None, (1, 8, 8)  # type: Any, tuple[int, ...]
        else:
            if cfg["data"] not in data_mod.TOY_DATASETS:
                raise CLIError(f"argument --data: unknown dataset {cfg['data']!r}; choose from "
                               f"{', '.join(sorted(data_mod.TOY_DATASETS))}, digits")
            target = data_mod.TOY_DATASETS[cfg["data"]]()
            train, held = target, None
            net = nets.MLPScoreNet(2, hidden=cfg.get("hidden", 128), depth=cfg.get("depth", 3), t_max=sde.T)
            shape = (2,)
        model = ScoreModel(net, sde, "eps").to(torch.float32)
    return dict(sde=sde, model=model, train=train, held=held, target=target, shape=shape)


def _load_model(ckpt: str, weights: str = "ema") -> Dict[str, Any]:
    """Config + objects + weights (``"ema"`` or ``"raw"``) of a checkpoint written by ``sdesolve-gen train``."""
    cfg = _load_config(ckpt)
    train_mod = _require("train")
    built = _build(cfg)
    path = ckpt if os.path.isfile(ckpt) else os.path.join(ckpt, train_mod.CHECKPOINT_NAME)
    try:
        state = train_mod.load_checkpoint(path)
    except FileNotFoundError:
        raise CLIError(f"argument checkpoint: no checkpoint file {path!r}") from None
    except ValueError as err:
        raise CLIError(f"argument checkpoint: {err}") from None
    model = built["model"]
    model.load_state_dict(state["model"])
    if weights == "ema":
        ema = train_mod.EMA(model)
        ema.load_state_dict(state["ema"])
        ema.copy_to(model)
    model.eval()
    built.update(cfg=cfg, step=int(state["step"]))
    return built


def _cmd_train(args: argparse.Namespace) -> int:
    train_mod = _require("train")
    ckpt = args.ckpt
    if os.path.exists(ckpt) and not os.path.isdir(ckpt):
        raise CLIError(f"argument --ckpt: {ckpt!r} exists and is not a directory")
    cfg_path = os.path.join(ckpt, _CONFIG)
    has_ckpt = os.path.isfile(os.path.join(ckpt, train_mod.CHECKPOINT_NAME))
    if args.conditional and args.data != "digits":
        raise CLIError(f"argument --conditional: class-conditional training needs --data digits, got {args.data!r}")
    if args.label_dropout is not None and not args.conditional:
        raise CLIError("argument --label-dropout: only used with --conditional (unconditional training has no labels)")
    if args.label_dropout is None:
        args.label_dropout = _DEFAULT_LABEL_DROPOUT
    if not 0.0 <= args.label_dropout < 1.0:
        raise CLIError(f"argument --label-dropout: must lie in [0, 1), got {args.label_dropout!r}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise CLIError(f"argument --ema-decay: must lie in [0, 1), got {args.ema_decay!r}")
    from .data import TOY_DATASETS

    if args.data not in TOY_DATASETS and args.data != "digits":
        raise CLIError(f"argument --data: unknown dataset {args.data!r}; choose from "
                       f"{', '.join(sorted(TOY_DATASETS))}, digits")
    cfg = dict(data=args.data, sde=args.sde, parameterisation="eps", batch_size=args.batch_size, lr=args.lr,
               seed=args.seed, ema_decay=args.ema_decay)
    if args.conditional:
        cfg.update(conditional=True, label_dropout=args.label_dropout)
    _check_config(cfg, "arguments")
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lib_logger = logging.getLogger("sdesolve_gen")
        lib_logger.addHandler(handler)
        lib_logger.setLevel(logging.INFO)
    if args.resume:
        if not has_ckpt:
            raise CLIError(f"argument --resume: no checkpoint in {ckpt!r} to resume from")
        old = _load_config(ckpt)
        for key in ("data", "sde", "batch_size", "lr", "seed", "ema_decay", "conditional", "label_dropout"):
            if old.get(key) != cfg.get(key):
                raise CLIError(f"argument --{key.replace('_', '-')}: the checkpoint in {ckpt!r} was trained with "
                               f"{key}={old.get(key)!r}, not {cfg.get(key)!r} (resume needs the same settings)")
    elif has_ckpt:
        raise CLIError(f"argument --ckpt: {ckpt!r} already holds a checkpoint; pass --resume to continue it "
                       f"or choose a new directory")
    import torch

    # seed torch's global generator too: it initialises the weights (see _build) and its state
    # is part of the checkpoint, so two runs with the same --seed write the same tensors
    torch.manual_seed(args.seed)
    built = _build(cfg)
    from .checkpoints import atomic_write_bytes

    atomic_write_bytes(json.dumps(cfg, indent=1).encode("utf-8"), cfg_path)  # atomic, also on --resume
    cond = dict(label_dropout=args.label_dropout, null_label=_N_DIGIT_CLASSES) if args.conditional else {}
    trainer = train_mod.Trainer(
        built["model"], built["sde"], built["train"], batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        ema_decay=args.ema_decay, checkpoint_dir=ckpt, checkpoint_every=args.every, log_every=max(1, min(100, args.steps // 20)),
        progress=args.progress, **cond,
    )
    if args.resume:
        trainer.resume()
        print(f"resumed {ckpt} at step {trainer.step}")
    if trainer.step >= args.steps:
        raise CLIError(f"argument --steps: the checkpoint is already at step {trainer.step} >= {args.steps}")
    start = time.perf_counter()
    losses = trainer.train(args.steps)
    wall = time.perf_counter() - start
    tail = losses[-min(len(losses), 100):]
    what = f"{args.data} (class-conditional, label dropout {args.label_dropout:g})" if args.conditional else args.data
    print(f"trained {what} ({args.sde} SDE, eps-parameterised, {sum(p.numel() for p in built['model'].parameters())} "
          f"parameters) to step {trainer.step} in {wall:.1f} s; mean loss of the last {len(tail)} steps "
          f"{sum(tail) / len(tail):.4f}")
    print(f"checkpoint: {os.path.join(ckpt, train_mod.CHECKPOINT_NAME)}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plotting import loss_curve

        fig, ax = plt.subplots(figsize=(6, 4))
        loss_curve(ax, trainer.history, smooth=0.98, title=f"DSM loss, {args.data}")
        fig.savefig(os.path.join(ckpt, "loss.png"), dpi=90)
        plt.close(fig)
        print(f"loss curve: {os.path.join(ckpt, 'loss.png')}")
    except ImportError:
        pass
    return 0


def _run_sampler(name: str, sde: Any, score: Any, x_T: Any, steps: int, g: Any, progress: bool) -> Any:
    from .samplers import SAMPLERS

    spec = SAMPLERS[name]
    kwargs: Dict[str, Any] = {"generator": g}
    if not spec.adaptive:
        kwargs["progress"] = progress
    if spec.name == "ode":
        kwargs.update(rtol=1e-5, atol=1e-5)
    return spec(sde, score, x_T, spec.timesteps(sde, steps), **kwargs)


def _init_dist_from_env() -> bool:
    """Under torchrun (``WORLD_SIZE`` set): initialise torch.distributed (gloo; nccl on CUDA). True if this call did."""
    import torch
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo")
    return True


def _checkpoint_sha256(ckpt: str) -> str:
    """sha256 of the checkpoint file of ``ckpt`` (a checkpoint directory or the file inside it)."""
    import hashlib

    path = ckpt if os.path.isfile(ckpt) else os.path.join(ckpt, _require("train").CHECKPOINT_NAME)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _cmd_sample_seeds(args: argparse.Namespace) -> int:
    """``sample --seeds A-B --out DIR``: sharded, restartable generation (see :func:`sdesolve_gen.generate.generate`)."""
    from .generate import OutputDirError, generate

    if args.n is not None:
        raise CLIError("argument -n/--n-samples: not allowed with --seeds (the seeds say how many samples)")
    if args.out.endswith(".pt") or args.out.lower().endswith(".png"):
        raise CLIError(f"argument --out: with --seeds it is an output directory, got {args.out!r}")
    try:
        from .generate import parse_seeds

        parse_seeds(args.seeds)
    except ValueError as err:
        raise CLIError(f"argument --seeds: {err}") from None
    m = _load_model(args.checkpoint, args.weights)
    sde = m["sde"]
    model, _ = _guided(args, m)
    info = {"checkpoint_sha256": _checkpoint_sha256(args.checkpoint), "config": m["cfg"], "step": m["step"], "weights": args.weights,
            "class": args.label, "cfg_scale": args.cfg}
    spec_kwargs = {"rtol": 1e-5, "atol": 1e-5} if args.sampler == "ode" else {}
    started = _init_dist_from_env()
    try:
        res = generate(sde, model, args.sampler, args.seeds, args.out, batch_size=args.batch or 256, shape=m["shape"],
                       steps=args.steps, sampler_kwargs=spec_kwargs, model_info=info, png=args.png)
    except OutputDirError as err:
        raise CLIError(f"argument --out: {err}") from None
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if res.rank == 0:
        print(f"wrote {res.n_batches} batches to {args.out} (rank 0 of {res.world_size}: {len(res.written)} generated, "
              f"{len(res.skipped)} already on disk, {res.samples_per_s:.1f} samples/s)")
    return 0


def _guided(args: argparse.Namespace, m: Dict[str, Any]) -> Any:
    """``(score, description)``: the checkpoint's model, guided to ``--class`` with ``--cfg`` when given."""
    model = m["model"]
    if args.label is None:
        if args.cfg != 0.0:
            raise CLIError("argument --cfg: needs --class")
        return model, ""
    if not m["cfg"].get("conditional"):
        raise CLIError("argument --class: the checkpoint is not class-conditional (train it with --conditional)")
    if not 0 <= args.label < _N_DIGIT_CLASSES:
        raise CLIError(f"argument --class: must lie in [0, {_N_DIGIT_CLASSES - 1}], got {args.label}")
    from .guidance import label_guidance

    guided = label_guidance(model, args.label, args.cfg, null_label=_N_DIGIT_CLASSES, num_classes=_N_DIGIT_CLASSES)
    return guided, f", class {args.label}, cfg {args.cfg:g}"


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _cmd_sample_seeds(args)
    if args.batch is not None or args.png:
        raise CLIError("argument --batch/--png: only with --seeds (sharded generation into a directory)")
    args.n = 1000 if args.n is None else args.n
    out = args.out
    if not (out.endswith(".pt") or out.lower().endswith(".png")):
        raise CLIError(f"argument --out: expected a .pt or .png path, got {out!r}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise CLIError(f"argument --out: directory {os.path.dirname(os.path.abspath(out))!r} does not exist")
    import torch

    if not math.isfinite(args.cfg):
        raise CLIError(f"argument --cfg: must be a finite number, got {args.cfg!r}")
    m = _load_model(args.checkpoint, args.weights)
    sde, model = m["sde"], m["model"]
    model, what = _guided(args, m)
    g = torch.Generator().manual_seed(args.seed)
    x_T = sde.prior_sample((args.n, *m["shape"]), generator=g, dtype=torch.float32)
    info = _run_sampler(args.sampler, sde, model, x_T, args.steps, g, args.progress)
    x = info.x
    print(f"{info.method}: {args.n} samples from {m['cfg']['data']}{what} (checkpoint step {m['step']}, "
          f"{args.weights} weights), NFE {info.nfe}, wall {info.wall_time:.2f} s")
    if m["target"] is not None:
        p0 = m["target"]
        lp = p0.log_prob(x.double())
        ref = float(p0.log_prob(p0.sample(100_000, generator=g, dtype=torch.float64)).mean())
        print(f"mean exact log p_data(samples) {float(lp.mean()):.4f} +- {float(lp.std()) / math.sqrt(args.n):.4f} "
              f"vs E_data[log p_data] {ref:.4f} (a perfect sampler of a perfect model matches)")
    if out.endswith(".pt"):
        torch.save({"samples": x, "method": info.method, "nfe": info.nfe, "checkpoint_step": m["step"]}, out)
    else:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plotting import image_grid, scatter_vs_density

        if m["target"] is not None:
            fig, ax = plt.subplots(figsize=(6, 6))
            scatter_vs_density(ax, x, m["target"], title=f"{info.method}, NFE {info.nfe}")
            fig.savefig(out, dpi=90)
            plt.close(fig)
        else:
            image_grid(x[:100], out, value_range=(-1.0, 1.0))
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate OUTDIR``: gathered sample-quality summary of a ``sample --seeds`` directory."""
    import torch

    from .generate import MANIFEST, _read_manifest, evaluate

    try:
        man = _read_manifest(__import__("pathlib").Path(args.dir))
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(f"argument dir: {err}") from None
    cfg = (man.get("model") or {}).get("config")
    if not isinstance(cfg, dict) or "data" not in cfg:
        raise CLIError(f"argument dir: its {MANIFEST} names no checkpoint config (not written by `sample --seeds`?)")
    cfg = _check_config(cfg, f"argument dir: {MANIFEST} config")
    lik: Dict[str, Any] = {}
    if args.bpd is not None:
        info = man["model"]
        if _checkpoint_sha256(args.bpd) != info.get("checkpoint_sha256"):
            raise CLIError(f"argument --bpd: {args.bpd!r} is not the checkpoint the samples of {args.dir!r} were drawn "
                           f"from (its sha256 differs from the manifest's checkpoint_sha256)")
        m = _load_model(args.bpd, info.get("weights", "ema"))
        m["model"] = m["model"].double()
        score, _ = _guided(argparse.Namespace(label=info.get("class"), cfg=info.get("cfg_scale", 0.0)), m)
        lik = dict(likelihood_model=(m["sde"], score),
                   likelihood_kwargs=dict(rtol=args.rtol, atol=args.atol, divergence=args.divergence))
    started = _init_dist_from_env()
    try:
        if cfg["data"] == "digits":
            clf = _digit_classifier()
            res = evaluate(args.dir, label_fn=lambda x: torch.from_numpy(clf.predict(x.flatten(1).numpy())),
                           n_labels=_N_DIGIT_CLASSES, **lik)
        else:
            target = _require("data").TOY_DATASETS[cfg["data"]]()
            res = evaluate(args.dir, score=target.log_prob, **lik)
            g = torch.Generator().manual_seed(0)
            ref = float(target.log_prob(target.sample(100_000, generator=g, dtype=torch.float64)).mean())
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if "RANK" in os.environ and os.environ["RANK"] != "0":
        return 0
    print(f"{args.dir}: {res.n} samples ({man['sampler']}, {len(man['grid']) - 1} steps, {cfg['data']})"
          + (f", {res.missing} batches MISSING" if res.missing else ""))
    if res.histogram is not None:
        total = max(sum(res.histogram), 1)
        print("class histogram (logistic-regression classifier trained on the digits training split): "
              + " ".join(f"{k}:{c / total:.3f}" for k, c in enumerate(res.histogram)))
    else:
        print(f"mean exact log p_data(samples) {res.mean:.4f} +- {res.stderr:.4f} vs E_data[log p_data] {ref:.4f}"
              + (f"; {res.n_nonfinite} non-finite" if res.n_nonfinite else ""))
    if res.likelihood is not None:
        lk = res.likelihood
        print(f"bits/dim of the samples under the checkpoint's model (PF-ODE, dopri5 rtol={args.rtol:g} "
              f"atol={args.atol:g}, {args.divergence} divergence, continuous): {lk.mean_bpd:.4f} "
              f"(stderr over samples {lk.data_stderr:.4f}), NFE {lk.nfe}, {lk.world_size} rank(s)")
    return 0 if res.missing == 0 else 1


def _digit_classifier() -> Any:
    """Multinomial logistic regression on the training split of the 8x8 digits (values in [-1, 1])."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:  # pragma: no cover - sklearn ships with the digits data
        raise ImportError(f"the digits class histogram needs scikit-learn: {err}") from None
    x, y = _require("data").load_digits(data_range=(-1.0, 1.0), return_labels=True)
    x, y = x[:-_DIGITS_HOLDOUT].flatten(1).numpy(), y[:-_DIGITS_HOLDOUT].numpy()
    return LogisticRegression(max_iter=2000).fit(x, y)


def _cmd_likelihood(args: argparse.Namespace) -> int:
    import torch

    from .bpd import bits_per_dim
    from .likelihood import log_likelihood

    if args.probes is not None and args.divergence != "hutchinson":
        raise CLIError("argument --probes: only used with --divergence hutchinson (the exact divergence draws no probes)")
    args.probes = 1 if args.probes is None else args.probes
    m = _load_model(args.checkpoint, args.weights)
    sde, model = m["sde"], m["model"].double()
    g = torch.Generator().manual_seed(args.seed)
    if m["target"] is not None:
        # fresh draws from the analytic target: independent of every training batch
        x = m["target"].sample(args.n, generator=g, dtype=torch.float64)
        what = f"{args.n} fresh samples of {m['cfg']['data']}"
    else:
        held = m["held"]
        x = held[: args.n].double()
        what = f"{x.shape[0]} held-out digits (never trained on)"
    res = log_likelihood(sde, model, x, rtol=args.rtol, atol=args.atol, divergence=args.divergence,
                         n_probes=args.probes, generator=g, progress=args.progress)
    lp = res.log_prob
    n = lp.numel()
    D = math.prod(m["shape"])
    se_data = float(lp.std()) / math.sqrt(n) if n > 1 else float("nan")
    se_probe = float(res.stderr.pow(2).mean().sqrt() / math.sqrt(n)) if args.divergence == "hutchinson" else 0.0
    bpd = bits_per_dim(lp, m["shape"])  # continuous code length (no data_range offset)
    se_bpd = float(bpd.std()) / math.sqrt(n) if n > 1 else float("nan")
    print(f"PF-ODE log-likelihood ({res.extra['method']} rtol={args.rtol:g} atol={args.atol:g}, {args.divergence} divergence"
          f"{f', {args.probes} probes' if args.divergence == 'hutchinson' else ''}, standard prior, {args.weights} weights, checkpoint step {m['step']}) of {what}:")
    print(f"  mean log p = {float(lp.mean()):.4f} nats  (stderr over data {se_data:.4f}, over probes {se_probe:.4f})")
    print(f"  bits/dim   = {float(bpd.mean()):.4f}  (continuous, -log p / (D ln 2), D = {D}; "
          f"stderr {se_bpd:.4f})")
    if m["target"] is not None:
        exact = m["target"].log_prob(x)
        print(f"  exact mean log p_data of the same points = {float(exact.mean()):.4f} nats "
              f"(model - exact = {float((lp - exact).mean()):+.4f})")
    print(f"  NFE {res.nfe}, wall {res.wall_time:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``sdesolve-gen`` argument parser (one subparser per command)."""
    p = _Parser(prog="sdesolve-gen", description="Score-based generative modelling on torchsde / torchdiffeq.")
    from . import __version__
    from .samplers import SAMPLERS

    p.add_argument("--version", action="version", version=f"sdesolve-gen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser(
        "demo", help="4 samplers + PF-ODE likelihood on a 2-D Gaussian mixture with exact scores; writes a PNG",
        description="Sample an embedded 2-D Gaussian mixture (VP SDE, exact score, exact prior) with Euler-Maruyama, "
        "predictor-corrector, the PF-ODE (dopri5) and DPM-Solver-3; compare with exact samples (sliced W2, "
        "mean log-density); compare PF-ODE log-likelihoods with the exact ones; write one figure and print a table.",
    )
    d.add_argument("--out", default="demo.png", help="PNG path of the figure (default: demo.png)")
    d.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    d.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=10_000, help="samples per sampler (default: 10000)")
    d.add_argument("--em-steps", type=_positive_int, default=500, help="Euler-Maruyama steps (default: 500)")
    d.add_argument("--pc-steps", type=_positive_int, default=250, help="predictor-corrector steps (default: 250)")
    d.add_argument("--dpm-steps", type=_positive_int, default=10, help="DPM-Solver-3 steps, 3 NFE each (default: 10)")
    d.add_argument("--n-likelihood", type=_positive_int, default=8, help="data points for the likelihood check (default: 8)")
    d.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)")
    d.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    d.add_argument("-v", "--verbose", action="store_true", help="print what is running to stderr")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a score network on a toy 2-D dataset or digits",
                       description="Train a score network with denoising score matching; checkpoints are atomic "
                       "and --resume continues from the last one.")
    t.add_argument("--data", default="eight_gaussians",
                   help="eight_gaussians, two_moons, swiss_roll, checkerboard (analytic 2-D mixtures) or digits "
                   "(sklearn 8x8, last 297 held out) (default: eight_gaussians)")
    t.add_argument("--ckpt", required=True, help="checkpoint directory (created if missing)")
    t.add_argument("--steps", type=_positive_int, default=2000, help="total optimisation steps (default: 2000)")
    t.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (default: 256)")
    t.add_argument("--lr", type=_positive_float, default=2e-3, help="learning rate (default: 2e-3)")
    t.add_argument("--ema-decay", type=_finite_float, default=0.999, help="EMA decay of the sampling weights (default: 0.999)")
    t.add_argument("--sde", default="vp", choices=("vp", "ve", "subvp"), help="forward SDE (default: vp)")
    t.add_argument("--every", type=_positive_int, default=500, help="checkpoint every N steps (default: 500)")
    t.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt")
    t.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)")
    t.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    t.add_argument("--conditional", action="store_true",
                   help="class-conditional U-Net on the digit labels (with --data digits); label 10 is the null "
                   "label of classifier-free guidance")
    t.add_argument("--label-dropout", type=_finite_float, default=None,
                   help=f"with --conditional: probability of training on the null label (default: {_DEFAULT_LABEL_DROPOUT})")
    t.add_argument("-v", "--verbose", action="store_true", help="log progress (every log record) to stderr")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint",
                       description="Draw samples from a checkpoint written by `sdesolve-gen train`.")
    s.add_argument("checkpoint", help="checkpoint directory (or file inside it) written by `sdesolve-gen train`")
    s.add_argument("--sampler", default="euler_maruyama", choices=list(SAMPLERS), metavar="NAME",
                   help="one of: " + ", ".join(SAMPLERS) + " (default: euler_maruyama; see docs' sampler table)")
    s.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=None, help="number of samples (default: 1000)")
    s.add_argument("--seeds", default=None, metavar="A-B[,C-D]",
                   help="sharded generation: one sample per seed (e.g. 0-49999), written to the directory --out in "
                   "batches; restartable; split over torchrun ranks")
    s.add_argument("--batch", type=_positive_int, default=None, help="with --seeds: samples per batch file (default: 256)")
    s.add_argument("--png", action="store_true", help="with --seeds: also write a PNG per batch")
    s.add_argument("--steps", type=_positive_int, default=500, help="grid steps (default: 500; ignored by ode/adaptive_sde)")
    s.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    s.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)")
    s.add_argument("--weights", default="ema", choices=("ema", "raw"),
                   help="EMA weights (default) or the raw last weights (EMA lags by ~1/(1-decay) steps)")
    s.add_argument("--out", default="samples.pt", help="output: .pt (tensor) or .png (figure) (default: samples.pt); "
                   "with --seeds an output directory")
    s.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    s.add_argument("--class", dest="label", type=_int, default=None, metavar="K",
                   help="conditional checkpoints: sample class K (default: unconditional, the null label)")
    s.add_argument("--cfg", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance scale w with --class: s = (1+w) s(x|K) - w s(x) (default: 0)")
    s.set_defaults(func=_cmd_sample)

    lk = sub.add_parser("likelihood", help="PF-ODE log-likelihood of held-out data under a checkpoint",
                        description="Compute log p(x) by the probability-flow ODE (dopri8) for held-out data of "
                        "the checkpoint's dataset; print nats and bits/dim with standard errors.")
    lk.add_argument("checkpoint", help="checkpoint directory (or file inside it) written by `sdesolve-gen train`")
    lk.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=256, help="data points (default: 256)")
    lk.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"), help="divergence (default: exact)")
    lk.add_argument("--probes", type=_positive_int, default=None,
                    help="Hutchinson probes (default: 1; only with --divergence hutchinson)")
    lk.add_argument("--rtol", type=_positive_float, default=1e-5, help="ODE rtol (default: 1e-5)")
    lk.add_argument("--atol", type=_positive_float, default=1e-5, help="ODE atol (default: 1e-5)")
    lk.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    lk.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)")
    lk.add_argument("--weights", default="ema", choices=("ema", "raw"),
                   help="EMA weights (default) or the raw last weights (EMA lags by ~1/(1-decay) steps)")
    lk.add_argument("--progress", action="store_true", help="show a tqdm bar per accepted solver step")
    lk.set_defaults(func=_cmd_likelihood)

    ev = sub.add_parser("evaluate", help="sample-quality summary of a `sample --seeds` directory",
                        description="Score every sample of a directory written by `sample --seeds` (sharded over "
                        "torchrun ranks and gathered): toy data by its exact log-density, digits by a class histogram.")
    ev.add_argument("dir", help="output directory of `sdesolve-gen sample --seeds`")
    ev.add_argument("--bpd", default=None, metavar="CHECKPOINT",
                    help="also the bits/dim of the samples under this checkpoint's model (the one that drew them: "
                    "its sha256 must match the manifest's), by the PF-ODE likelihood, sharded over the ranks")
    ev.add_argument("--divergence", default="auto", choices=("auto", "exact", "hutchinson"),
                    help="with --bpd: divergence of the likelihood (default: auto)")
    ev.add_argument("--rtol", type=_positive_float, default=1e-5, help="with --bpd: ODE rtol (default: 1e-5)")
    ev.add_argument("--atol", type=_positive_float, default=1e-5, help="with --bpd: ODE atol (default: 1e-5)")
    ev.add_argument("--threads", type=_positive_int, default=1, help="torch intra-op threads (default: 1)")
    ev.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("bench", help="run the benchmarks (python -m benchmarks)",
                       description="Run the benchmarks package of the source checkout and write its report.")
    b.add_argument("--quick", action="store_true", help="small sizes")
    b.add_argument("--out", default=None, help="output directory (default: the benchmarks package's)")
    b.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    b.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats per measurement")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sdesolve-gen``; returns the exit code (0 ok, 2 user error, 1 OS error or closed pipe).

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe surfaces here, not as a traceback at interpreter exit
    except BrokenPipeError:
        # the reader went away (`sdesolve-gen ... | head -1`): stop quietly; point stdout at
        # /dev/null so the interpreter's final flush does not raise again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a file descriptor
            pass
        return 1


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    prog = f"sdesolve-gen {args.command}"
    if getattr(args, "threads", None):
        import torch

        # small models gain little from intra-op threads, and on a busy machine OpenMP threads
        # contending for cores slowed the default demo 8x (measured: 162 s with 2 threads at
        # load 6 vs 21 s with 1), so every command uses --threads (default 1).
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except BrokenPipeError:
        raise
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"{prog}: error: {msg}\n")
        return 2
    except OSError as err:  # a full disk, a read-only directory: one line naming the path
        msg = err.strerror if err.strerror else str(err)
        if err.filename and str(err.filename) not in msg:
            msg = f"{msg}: {err.filename}"
        sys.stderr.write(f"{prog}: error: {msg.splitlines()[0]}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

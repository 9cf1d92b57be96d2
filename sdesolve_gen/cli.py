r"""The ``sdesolve-gen`` command line.

Subcommands (``sdesolve-gen <command> --help`` for each)::

    sdesolve-gen demo        [--out demo.png] [--seed 0] [-n 10000] ...
    sdesolve-gen train       --data gmm8|moons|swissroll|checkerboard|digits --ckpt DIR [--steps N] [--resume]
    sdesolve-gen sample      DIR [--sampler NAME] [-n N] [--steps N] [--seed S] [--out samples.pt|.png]
    sdesolve-gen likelihood  DIR [-n N] [--divergence exact|hutchinson] [--probes K] [--seed S]
    sdesolve-gen bench       [--quick] [--out DIR] [--only SECTION ...]

Bad arguments and user errors (unknown sampler, missing checkpoint, non-positive sizes, ...) are
reported as ONE line ``sdesolve-gen <command>: error: <message naming the argument>`` on stderr
with exit code 2 and no traceback. The logic lives in the library (:mod:`sdesolve_gen.demo`, the
samplers, :func:`~sdesolve_gen.log_likelihood`, the trainer); this module only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser", "SAMPLERS"]

#: Sampler names accepted by ``sample --sampler`` (see :mod:`sdesolve_gen.samplers`).
SAMPLERS = (
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "pc",
    "ode",
    "heun",
    "dpm_solver-1",
    "dpm_solver-2",
    "dpm_solver-3",
    "dpm_solver_pp_2m",
    "adaptive_sde",
)


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
    import torch

    # 2-D problems gain nothing from intra-op threads, and on a busy machine OpenMP threads
    # contending for cores slowed the default demo 15x (measured: 162 s with 2 threads at load 6
    # vs ~10 s with 1), so the demo process uses --threads (default 1).
    torch.set_num_threads(args.threads)
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
    print("running: " + " ".join(cmd[1:]).replace(sys.executable, "python"), flush=True)
    return subprocess.call(cmd, env=env)


# ---------------------------------------------------------------------- train / sample / likelihood

_CONFIG = "sdesolve_gen_cli.json"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"sdesolve_gen.{module}")
    except ImportError as err:
        raise CLIError(f"this command needs sdesolve_gen.{module}, which could not be imported ({err})") from None


def _training_api() -> Dict[str, Any]:
    return {name: _require(name) for name in ("data", "nets", "train")}


def _load_config(ckpt: str) -> Dict[str, Any]:
    if not os.path.exists(ckpt):
        raise CLIError(f"argument checkpoint: no such file or directory: {ckpt!r}")
    directory = ckpt if os.path.isdir(ckpt) else os.path.dirname(os.path.abspath(ckpt))
    path = os.path.join(directory, _CONFIG)
    if not os.path.isfile(path):
        raise CLIError(f"argument checkpoint: {directory!r} has no {_CONFIG} (was it written by `sdesolve-gen train`?)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise CLIError(f"argument checkpoint: cannot read {path!r}: {err}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    _training_api()
    raise CLIError("train: the training API has not been wired to the CLI yet")


def _cmd_sample(args: argparse.Namespace) -> int:
    _load_config(args.checkpoint)
    _training_api()
    raise CLIError("sample: the training API has not been wired to the CLI yet")


def _cmd_likelihood(args: argparse.Namespace) -> int:
    _load_config(args.checkpoint)
    _training_api()
    raise CLIError("likelihood: the training API has not been wired to the CLI yet")


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``sdesolve-gen`` argument parser (one subparser per command)."""
    p = _Parser(prog="sdesolve-gen", description="Score-based generative modelling on torchsde / torchdiffeq.")
    from . import __version__

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
    t.add_argument("--data", default="gmm8", help="dataset: a toy 2-D mixture name or 'digits' (default: gmm8)")
    t.add_argument("--ckpt", required=True, help="checkpoint directory (created if missing)")
    t.add_argument("--steps", type=_positive_int, default=2000, help="total optimisation steps (default: 2000)")
    t.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (default: 256)")
    t.add_argument("--lr", type=_positive_float, default=2e-3, help="learning rate (default: 2e-3)")
    t.add_argument("--sde", default="vp", choices=("vp", "ve", "subvp"), help="forward SDE (default: vp)")
    t.add_argument("--every", type=_positive_int, default=500, help="checkpoint every N steps (default: 500)")
    t.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --ckpt")
    t.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="sample from a trained checkpoint",
                       description="Draw samples from a checkpoint written by `sdesolve-gen train`.")
    s.add_argument("checkpoint", help="checkpoint directory (or file inside it) written by `sdesolve-gen train`")
    s.add_argument("--sampler", default="euler_maruyama", choices=SAMPLERS, metavar="NAME",
                   help="one of: " + ", ".join(SAMPLERS) + " (default: euler_maruyama)")
    s.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=1000, help="number of samples (default: 1000)")
    s.add_argument("--steps", type=_positive_int, default=500, help="grid steps (default: 500; ignored by ode/adaptive_sde)")
    s.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    s.add_argument("--out", default="samples.pt", help="output: .pt (tensor) or .png (figure) (default: samples.pt)")
    s.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    s.set_defaults(func=_cmd_sample)

    lk = sub.add_parser("likelihood", help="PF-ODE log-likelihood of held-out data under a checkpoint",
                        description="Compute log p(x) by the probability-flow ODE (dopri5) for held-out data of "
                        "the checkpoint's dataset; print nats and bits/dim with standard errors.")
    lk.add_argument("checkpoint", help="checkpoint directory (or file inside it) written by `sdesolve-gen train`")
    lk.add_argument("-n", "--n-samples", dest="n", type=_positive_int, default=256, help="data points (default: 256)")
    lk.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"), help="divergence (default: exact)")
    lk.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes (default: 1)")
    lk.add_argument("--rtol", type=_positive_float, default=1e-5, help="ODE rtol (default: 1e-5)")
    lk.add_argument("--atol", type=_positive_float, default=1e-5, help="ODE atol (default: 1e-5)")
    lk.add_argument("--seed", type=_int, default=0, help="random seed (default: 0)")
    lk.set_defaults(func=_cmd_likelihood)

    b = sub.add_parser("bench", help="run the benchmarks (python -m benchmarks)",
                       description="Run the benchmarks package of the source checkout and write its report.")
    b.add_argument("--quick", action="store_true", help="small sizes")
    b.add_argument("--out", default=None, help="output directory (default: the benchmarks package's)")
    b.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    b.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats per measurement")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sdesolve-gen``; returns the exit code (0 ok, 2 user error).

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    prog = f"sdesolve-gen {args.command}"
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        sys.stderr.write(f"{prog}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

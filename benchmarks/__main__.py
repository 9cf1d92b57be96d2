"""``python -m benchmarks [--quick] [--out DIR] [--only NAME ...] [--jobs N]``: run the benchmarks, write
``results.md``, ``results.json`` and the scaling PNGs to ``--out`` (default ``benchmarks/results``)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from typing import List, Optional

import torch

SECTIONS = ("sampling", "likelihood", "em_overhead", "pf_ode_nfe", "scaling", "inference", "generate_seeds")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (< 3 min on 2 cores)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"), help="output directory")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median)")
    ap.add_argument("--jobs", type=int, default=1, help="sampling: run its problems in this many processes")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    results = {
        "mode": "quick" if args.quick else "full",
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats,
        "sections": {}, "goals": {}, "skipped": [],
    }
    start = time.perf_counter()
    for name in args.only or SECTIONS:
        print(f"[{time.perf_counter() - start:6.1f}s] {name} ...", flush=True)
        try:
            import importlib

            mod = importlib.import_module(f"benchmarks.{name}")
            kw = {"out": args.out} if name in ("scaling", "sampling") else {}
            if name == "sampling" and args.jobs > 1:
                kw["jobs"] = args.jobs
            res = mod.run(quick=args.quick, repeats=repeats, **kw)
        except ImportError as e:
            msg = f"{name}: not available yet ({e})"
            print(msg)
            results["skipped"].append(msg)
            continue
        except Exception as e:  # keep the command running; record the failure honestly
            msg = f"{name}: FAILED ({type(e).__name__}: {e})"
            traceback.print_exc()
            results["skipped"].append(msg)
            continue
        results["sections"][name] = res
        results["skipped"] += res.get("skipped", [])
        if hasattr(mod, "goal") and res["rows"]:
            key = name
            results["goals"][key] = mod.goal(res["rows"])
    results["total_seconds"] = time.perf_counter() - start
    from .report import write

    paths = write(results, args.out)
    print(open(paths["markdown"]).read().split("## Skipped")[0].split("\n## Sampling")[0])
    print(f"wrote {paths['markdown']} and {paths['json']} in {results['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

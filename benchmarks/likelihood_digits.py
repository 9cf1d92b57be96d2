r"""Digits: time to the held-out mean bits/dim with estimator error <= 0.005 bits/dim.

The model is the one ``examples/train_digits.py`` trains (U-Net ``base=32``,
``channel_mults=(1, 2)``, VP SDE, eps-prediction, EMA weights), loaded from that example's
checkpoint directory; if none exists the example is run (``--train-steps``, default 800) to make
one. The first ``n_images`` held-out digits (the example's split; never trained on; one fixed
dequantisation) are scored in float64 at eps = 1e-3, all in one run, one thread:

* reference: exact divergence, dopri5, per-sample control, ``rtol = atol = ref_tol`` (an exact
  trace of this U-Net costs ~64 backward passes per evaluation, so the reference is the slow
  part; the "exact, 1e-2" row is the same solve 10x looser, a check of the reference);
* score_sde's path: :func:`benchmarks.peers.rk45_log_likelihood` (scipy RK45 at 1e-5, one
  Rademacher probe per image, flat numpy state), same model, images, eps and prior;
* ours: :func:`sdesolve_gen.likelihood.dataset_log_likelihood` in a few configurations.

"Estimator error" = |mean bpd - reference mean bpd| (probe noise + solver error of the mean);
the data's own spread (std / sqrt(N)) is reported separately and is not part of it.

    python -m benchmarks.likelihood_digits --quick        # 8 images, reference at 1e-3
    python -m benchmarks.likelihood_digits [--n-images 64] [--checkpoint-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import tempfile
import time
from typing import Any, Dict, List

import torch

import sdesolve_gen as sg
from sdesolve_gen.data import load_digits
from sdesolve_gen.likelihood import dataset_log_likelihood
from sdesolve_gen.train import load_checkpoint

from .peers import rk45_log_likelihood

N_LEVELS, RANGE, EPS = 17, (-1.0, 1.0), 1e-3
_EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train_digits.py")


def _example_model(ckpt_dir: str, train_steps: int, log) -> Any:
    """The example's EMA model from its checkpoint (running the example first if there is none)."""
    if not os.path.exists(os.path.join(ckpt_dir, "checkpoint.pt")):
        spec = importlib.util.spec_from_file_location("train_digits", _EXAMPLE)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        mod.main(["--steps", str(train_steps), "--checkpoint-dir", ckpt_dir, "--n-eval", "2",
                  "--out", os.path.join(ckpt_dir, "samples.png")])
        log(f"  ran examples/train_digits.py for {train_steps} steps in {time.perf_counter() - t0:.0f} s")
    state = load_checkpoint(ckpt_dir)
    sde = sg.VPSDE()
    # the example's architecture (examples/train_digits.py defaults: base 32, channel_mults (1, 2))
    model = sg.ScoreModel(sg.UNet(1, base=32, channel_mults=(1, 2)), sde, "eps")
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    model.load_state_dict(ema)
    return sde, model.double().eval(), int(state["step"])


def _test_images() -> torch.Tensor:
    levels = load_digits(as_levels=True)
    perm = torch.randperm(levels.shape[0], generator=torch.Generator().manual_seed(0))  # the example's split
    return levels[perm[1600:]]


def run(*, n_images: int = 64, ref_tol: float = 1e-5, ckpt_dir: str, train_steps: int = 800,
        out: str = "benchmarks/results", log=print) -> Dict[str, Any]:
    sde, model, step = _example_model(ckpt_dir, train_steps, log)
    x = sg.dequantize(_test_images(), generator=torch.Generator().manual_seed(3), n_bins=N_LEVELS,
                      data_range=RANGE, dtype=torch.float64)[:n_images]
    N = x.shape[0]
    rows: List[Dict[str, Any]] = []

    def to_bpd(lp: torch.Tensor) -> torch.Tensor:
        return sg.bits_per_dim(lp, (1, 8, 8), data_range=RANGE, n_bins=N_LEVELS)

    def record(name: str, fn) -> Dict[str, Any]:
        t0 = time.perf_counter()
        res = fn()
        t = time.perf_counter() - t0
        lp = res["log_prob"] if isinstance(res, dict) else res.log_prob
        nfe = res["nfe"] if isinstance(res, dict) else res.nfe
        bpd = to_bpd(lp)
        row = dict(method=name, time=t, nfe=int(nfe), mean_bpd=float(bpd.mean()), data_stderr=float(bpd.std()) / math.sqrt(N))
        if not isinstance(res, dict):
            row.update(probe_stderr=res.probe_stderr)
        rows.append(row)
        log(f"  {name:52s} {t:8.1f} s  nfe {nfe:5d}  mean bpd {row['mean_bpd']:.4f}")
        return row

    common = dict(eps=EPS, batch_size=N, data_range=RANGE, n_bins=N_LEVELS, method="dopri5")
    ref = record(f"reference: exact, dopri5 {ref_tol:g}", lambda: dataset_log_likelihood(
        sde, model, x, divergence="exact", rtol=ref_tol, atol=ref_tol, **common))
    record("score_sde: scipy RK45 1e-5, Hutchinson x1", lambda: rk45_log_likelihood(sde, model, x, eps=EPS, seed=0))
    for k, tol in ((1, 1e-2), (8, 1e-2)):
        record(f"ours: Hutchinson x{k} (Rademacher), dopri5 {tol:g}", lambda k=k, tol=tol: dataset_log_likelihood(
            sde, model, x, divergence="hutchinson", n_probes=k, rtol=tol, atol=tol, **common))
    # also the reference's own convergence check: the exact solve 10x looser
    record("ours: exact, dopri5 1e-2", lambda: dataset_log_likelihood(sde, model, x, divergence="exact", rtol=1e-2, atol=1e-2, **common))
    peer = next(r for r in rows if r["method"].startswith("score_sde"))
    for r in rows:
        r["estimator_error"] = abs(r["mean_bpd"] - ref["mean_bpd"])
        r["speedup_vs_score_sde"] = peer["time"] / r["time"]
    ok = [r for r in rows if r["method"].startswith("ours") and r["estimator_error"] <= 0.005]
    best = min(ok, key=lambda r: r["time"]) if ok else None
    goal = dict(best=best["method"] if best else None, speedup=best["speedup_vs_score_sde"] if best else 0.0,
                peer_error=peer["estimator_error"], passed=bool(best) and best["speedup_vs_score_sde"] >= 3.0)
    res = {"rows": rows, "goal": goal, "N": N, "D": 64, "train_steps": step, "ref_tol": ref_tol,
           "threads": torch.get_num_threads()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "likelihood_digits.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 images, reference at 1e-3")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--ref-tol", type=float, default=None)
    ap.add_argument("--checkpoint-dir", default=os.path.join(tempfile.gettempdir(), "sdesolve_gen_digits"))
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    n = a.n_images if a.n_images is not None else (8 if a.quick else 64)
    rt = a.ref_tol if a.ref_tol is not None else (1e-3 if a.quick else 1e-5)
    torch.set_num_threads(1)
    r = run(n_images=n, ref_tol=rt, ckpt_dir=a.checkpoint_dir, train_steps=a.train_steps, out=a.out)
    print(json.dumps(r["goal"], indent=1))

r"""Digits: time to the held-out mean bits/dim with estimator error <= 0.005 bits/dim.

A small U-Net is trained briefly on scikit-learn's 8x8 digits (as in ``examples/train_digits.py``,
17 levels dequantised onto [-1, 1], VP SDE, eps-prediction, EMA weights), then the 197 held-out
images (never trained on; one fixed dequantisation; the first ``n_images``) are scored in float64
at eps = 1e-3:

* reference: exact divergence, dopri5, per-sample control, rtol = atol = 1e-6 (the exact trace
  of this U-Net costs ~35 backward passes' time per evaluation, so the reference is the slow part);
* score_sde-style peer: :func:`benchmarks.peers.rk45_log_likelihood` (scipy RK45 at 1e-5, one
  Rademacher probe per image, flat numpy state), same model, images, eps and prior;
* ours: :func:`sdesolve_gen.likelihood.dataset_log_likelihood` in a few configurations.

"Estimator error" = |mean bpd - reference mean bpd| (probe noise + solver error, both on the
mean); the data's own spread (std / sqrt(N)) is reported separately and is not part of it.

    python -m benchmarks.likelihood_digits [--steps 1500] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Dict

import torch

import sdesolve_gen as sg
from sdesolve_gen.data import load_digits
from sdesolve_gen.likelihood import dataset_log_likelihood

from .peers import rk45_log_likelihood

N_LEVELS, RANGE, EPS = 17, (-1.0, 1.0), 1e-3


class _Dequantized:
    def __init__(self, levels: torch.Tensor) -> None:
        self.levels = levels

    def sample(self, n, *, generator=None, dtype=torch.float32):
        idx = torch.randint(self.levels.shape[0], (n,), generator=generator)
        return sg.dequantize(self.levels[idx], generator=generator, n_bins=N_LEVELS, data_range=RANGE, dtype=dtype)


def _train(steps: int, log) -> Any:
    torch.manual_seed(0)
    levels = load_digits(as_levels=True)
    perm = torch.randperm(levels.shape[0], generator=torch.Generator().manual_seed(0))
    train, test = levels[perm[:1600]], levels[perm[1600:]]
    sde = sg.VPSDE()
    model = sg.ScoreModel(sg.UNet(1, base=16, channel_mults=(1, 2)), sde, "eps")
    tr = sg.Trainer(model, sde, _Dequantized(train), batch_size=64, lr=2e-3, ema_decay=0.99, seed=0, log_every=10**9)
    t0 = time.perf_counter()
    tr.train(steps)
    log(f"  trained {steps} steps in {time.perf_counter() - t0:.0f} s")
    return sde, tr.ema_model().double().eval(), test


def run(*, steps: int = 1500, n_images: int = 64, out: str = "benchmarks/results", log=print) -> Dict[str, Any]:
    sde, model, test = _train(steps, log)
    x = sg.dequantize(test, generator=torch.Generator().manual_seed(3), n_bins=N_LEVELS, data_range=RANGE, dtype=torch.float64)[:n_images]
    N, D = x.shape[0], 64
    to_bpd = lambda lp: sg.bits_per_dim(lp, (1, 8, 8), data_range=RANGE, n_bins=N_LEVELS)  # noqa: E731
    rows = []

    def record(name, fn):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        lp = out["log_prob"] if isinstance(out, dict) else out.log_prob
        nfe = out["nfe"] if isinstance(out, dict) else out.nfe
        bpd = to_bpd(lp)
        row = dict(method=name, time=t, nfe=int(nfe), mean_bpd=float(bpd.mean()),
                   data_stderr=float(bpd.std()) / math.sqrt(N))
        if not isinstance(out, dict):
            row.update(probe_stderr=out.probe_stderr, solver_error=out.solver_error)
        rows.append(row)
        log(f"  {name:55s} {t:7.1f} s  nfe {nfe:5d}  mean bpd {row['mean_bpd']:.4f}")
        return row

    common = dict(eps=EPS, batch_size=N, data_range=RANGE, n_bins=N_LEVELS)
    ref = record("reference: exact, dopri5 1e-6", lambda: dataset_log_likelihood(sde, model, x, divergence="exact", rtol=1e-6, atol=1e-6, **common))
    record("score_sde-style: scipy RK45 1e-5, Hutchinson x1", lambda: rk45_log_likelihood(sde, model, x, eps=EPS, seed=0))
    record("ours: Hutchinson x2 (Rademacher), dopri5 1e-4", lambda: dataset_log_likelihood(
        sde, model, x, divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4, **common))
    record("ours: Hutchinson x1 (Rademacher), dopri5 1e-3", lambda: dataset_log_likelihood(
        sde, model, x, divergence="hutchinson", n_probes=1, rtol=1e-3, atol=1e-3, **common))
    peer = next(r for r in rows if r["method"].startswith("score_sde"))
    for r in rows:
        r["estimator_error"] = abs(r["mean_bpd"] - ref["mean_bpd"])
        r["speedup_vs_score_sde"] = peer["time"] / r["time"]
    ok = [r for r in rows if r["method"].startswith("ours") and r["estimator_error"] <= 0.005]
    best = min(ok, key=lambda r: r["time"]) if ok else None
    goal = dict(best=best["method"] if best else None, speedup=best["speedup_vs_score_sde"] if best else 0.0,
                peer_error=peer["estimator_error"], passed=bool(best) and best["speedup_vs_score_sde"] >= 3.0)
    res = {"rows": rows, "goal": goal, "N": N, "D": D, "train_steps": steps, "threads": torch.get_num_threads()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "likelihood_digits.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = run(steps=a.steps, n_images=a.n_images, out=a.out)
    print(json.dumps(r["goal"], indent=1))

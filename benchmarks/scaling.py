r"""Scaling curves: cost vs batch size, dimension and NFE for sampling (DPM-Solver++(2M) and EM on
the closed-form isotropic-Gaussian score, O(BD) per call, so solver cost is what is measured), and
likelihood cost vs dimension for the exact trace (D backward passes per evaluation) vs Hutchinson
(one per probe) on the same score. One PNG per curve in the out dir."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import torch

from sdesolve_gen import samplers
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.sde import VPSDE

from .metrics import median_time
from .problems import isotropic_score


def _plot(path: str, xs, series: Dict[str, List[float]], xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in series.items():
        ax.loglog(xs[: len(ys)], ys, "o-", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(*, quick: bool, repeats: int, out: str, log=print) -> Dict[str, Any]:
    sde = VPSDE()
    rows: List[Dict[str, Any]] = []
    plots: List[str] = []

    def sample_cost(method: str, B: int, D: int, nfe: int) -> float:
        mean = torch.ones(D, dtype=torch.float32) * 0.5
        score = isotropic_score(mean, 0.2, sde)
        x_T = sde.prior_sample((B, D), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        fn = samplers.dpm_solver_pp_2m if method == "dpm++2M" else samplers.euler_maruyama
        ts = timesteps(sde, nfe, kind="logsnr")
        t, _ = median_time(lambda: fn(sde, score, x_T, ts, generator=torch.Generator().manual_seed(1)), repeats)
        return t

    sweeps = {
        "batch": ([64, 256, 1024, 4096] if quick else [64, 256, 1024, 4096, 16384, 65536], lambda v, m: sample_cost(m, v, 16, 20)),
        "dim": ([2, 16, 128] if quick else [2, 16, 128, 1024, 3072], lambda v, m: sample_cost(m, 256, v, 20)),
        "nfe": ([5, 10, 20, 50] if quick else [5, 10, 20, 50, 100, 200], lambda v, m: sample_cost(m, 1024, 16, v)),
    }
    for key, (vals, cost) in sweeps.items():
        series: Dict[str, List[float]] = {}
        for m in ("dpm++2M", "euler_maruyama"):
            series[m] = []
            for v in vals:
                t = cost(v, m)
                series[m].append(t)
                rows.append(dict(curve=f"sampling vs {key}", method=m, x=v, time=t))
        path = os.path.join(out, f"scaling_sampling_{key}.png")
        _plot(path, vals, series, key, "seconds (median)", f"sampling cost vs {key}")
        plots.append(path)
        log(f"  scaling sampling vs {key}: done")

    try:
        from sdesolve_gen.likelihood import log_likelihood
    except ImportError as e:  # pragma: no cover
        log(f"scaling likelihood: not available yet ({e})")
        return {"rows": rows, "plots": plots, "skipped": [str(e)]}
    dims = [2, 8, 32] if quick else [2, 8, 32, 128, 256]
    B = 32
    series = {"exact trace": [], "Hutchinson x1": []}
    for D in dims:
        score = isotropic_score(torch.zeros(D, dtype=torch.float64), 0.2, sde)
        x = torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.45
        for name, div in (("exact trace", "exact"), ("Hutchinson x1", "hutchinson")):
            # fixed-step rk4 with 20 steps: the same NFE for both, so the curve isolates divergence cost
            t, res = median_time(lambda: log_likelihood(sde, score, x, method="rk4", step_size=(sde.T - sde.eps) / 20,
                                                        divergence=div, generator=torch.Generator().manual_seed(0)), repeats)
            series[name].append(t)
            rows.append(dict(curve="likelihood vs dim", method=name, x=D, time=t, nfe=int(res.nfe)))
    path = os.path.join(out, "scaling_likelihood_dim.png")
    _plot(path, dims, series, "dimension", "seconds (median)", "likelihood: exact trace vs Hutchinson")
    plots.append(path)
    cross = next((D for D, te, th in zip(dims, series["exact trace"], series["Hutchinson x1"]) if te > 2 * th), None)
    log("  scaling likelihood: done")
    return {"rows": rows, "plots": plots, "skipped": [], "exact_vs_hutchinson_2x_crossover_dim": cross}

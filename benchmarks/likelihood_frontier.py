r"""Cost vs worst-sample error of every likelihood error control: where the per-sample goal sits.

For one mixture and SDE, B held-out points, exact divergence, exact prior, and a *reported*
tolerance ``tol`` (1e-5): each setting below is one :func:`~sdesolve_gen.log_likelihood` call whose
controller runs at ``scale * tol`` (the library's :data:`~sdesolve_gen.likelihood.SOLVER_TOL_FACTOR`
applies on top, as at the defaults). Errors are per sample against the analytic
:math:`\log p_\varepsilon(x)` and reported in units of ``tol``; cost is the batched calls (``nfe``)
and, for independent-step methods, the mean calls per sample (``n_evals``), both as ratios to the
batch-shared dopri5 solve at ``tol`` (torchdiffeq's default norm, the issue's "today").

Each setting family traces a curve in (cost, worst error); its slope on log-log axes is the
method's effective order :math:`p` (error :math:`\propto \mathrm{cost}^{-p}`). The issue's goal is
the box ``cost <= 1.3``, ``max error <= 10 x tol``; a family reaches it from its cheapest point
only if its curve passes through that box.

    python -m benchmarks.likelihood_frontier [--dim 16] [--sde VP,VE,sub-VP] [--batch 256] [--quick]

Writes ``likelihood_frontier_<dim>.json`` and ``likelihood_frontier_<dim>.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Dict, List, Tuple

import torch

from sdesolve_gen.likelihood import log_likelihood
from sdesolve_gen.sde import VESDE, VPSDE, SubVPSDE

from .problems import gmm

TOL = 1e-5
#: (family, keyword arguments, controller scales); the first batch point is the reference ("today")
FAMILIES: Tuple[Tuple[str, Dict[str, Any], Tuple[float, ...]], ...] = (
    ("batch dopri5 (torchdiffeq norm)", dict(error_control="batch", method="dopri5"), (1.0, 0.1, 0.01, 0.001)),
    ("per-sample norm, shared steps, dopri5", dict(method="dopri5"), (1.0, 0.3, 0.1)),
    ("per-sample norm, shared steps, dopri8 (default)", dict(method="dopri8"), (10.0, 3.0, 1.0)),
    ("independent steps, dopri5_ps", dict(method="dopri5_ps"), (16.0, 4.0, 1.0)),
)
SDES = {"VP": VPSDE, "VE": VESDE, "sub-VP": SubVPSDE}


def run_problem(dim: int, sde_name: str, batch: int, families=FAMILIES, log=print) -> List[Dict[str, Any]]:
    data = gmm(dim, seed=dim)
    sde = SDES[sde_name]()
    x = data.sample(batch, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = data.log_prob_t(x, torch.tensor(sde.eps, dtype=torch.float64), sde)
    rows: List[Dict[str, Any]] = []
    for family, kw, scales in families:
        for s in scales:
            res = log_likelihood(sde, data.score_fn(sde), x, rtol=s * TOL, atol=s * TOL, divergence="exact",
                                 prior=data.prior(sde), **kw)
            err = (res.log_prob - exact).abs() / TOL
            ev = res.extra.get("n_evals")
            q = torch.quantile(err, torch.tensor([0.5, 0.9, 0.99], dtype=err.dtype))
            rows.append(dict(problem=f"GMM{dim}-{sde_name}", dim=dim, batch=batch, family=family, scale=s,
                             nfe=int(res.nfe), evals_per_sample=float(ev.double().mean()) if ev is not None else float(res.nfe),
                             max_over_tol=float(err.max()), median_over_tol=float(q[0]), p90_over_tol=float(q[1]),
                             p99_over_tol=float(q[2]), frac_over_10=float((err > 10).double().mean()), wall=res.wall_time))
            r = rows[-1]
            log(f"  {r['problem']:12s} {family:48s} x{s:<6g} nfe {r['nfe']:4d} evals/sample {r['evals_per_sample']:6.1f}  "
                f"max {r['max_over_tol']:9.2f}  p99 {r['p99_over_tol']:8.2f}  median {r['median_over_tol']:7.3f} x tol  "
                f"({100 * r['frac_over_10']:.1f}% > 10 x tol)  {r['wall']:.0f} s", flush=True)
    base = rows[0]
    for r in rows:
        r["nfe_ratio"] = r["nfe"] / base["nfe"]
        r["evals_ratio"] = r["evals_per_sample"] / base["nfe"]
    return rows


def _families(rows: List[Dict[str, Any]]) -> List[str]:
    return list(dict.fromkeys(r["family"] for r in rows))


def _order(rows: List[Dict[str, Any]], cost: str) -> float:
    """Least-squares slope of -log(max error) vs log(cost) over a family's points."""
    lx = [math.log(r[cost]) for r in rows]
    ly = [-math.log(r["max_over_tol"]) for r in rows]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den > 0 else float("nan")


def summarise(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per problem and family: effective order, and the cost at 10 x tol interpolated on log-log axes."""
    out: Dict[str, Any] = {}
    for prob in sorted({r["problem"] for r in rows}):
        fam_out = {}
        for family in _families(rows):
            pts = sorted((r for r in rows if r["problem"] == prob and r["family"] == family), key=lambda r: r["evals_ratio"])
            if len(pts) < 2:
                continue
            cost = "evals_ratio"
            p = _order(pts, cost)
            ok = [r[cost] for r in pts if r["max_over_tol"] <= 10]
            fam_out[family] = dict(order=p, cheapest_measured_within_10tol=min(ok) if ok else None,
                                   in_goal_box=any(r[cost] <= 1.3 and r["max_over_tol"] <= 10 for r in pts))
        base = next(r for r in rows if r["problem"] == prob)
        # order needed to go from the reference point to the goal's corner at 1.3x cost
        fam_out["order_needed_from_reference"] = math.log(max(base["max_over_tol"], 10) / 10) / math.log(1.3)
        out[prob] = fam_out
    return out


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(probs), figsize=(5.2 * len(probs), 4.6), squeeze=False)
    for ax, prob in zip(axes[0], probs):
        for family, mk in zip(_families(rows), "osD^v<>"):
            pts = sorted((r for r in rows if r["problem"] == prob and r["family"] == family), key=lambda r: r["evals_ratio"])
            ax.loglog([r["evals_ratio"] for r in pts], [r["max_over_tol"] for r in pts], mk + "-", label=family)
            if family.startswith("independent"):
                ax.loglog([r["nfe_ratio"] for r in pts], [r["max_over_tol"] for r in pts], mk + ":", alpha=0.5,
                          label=family + " (batched calls)")
        ax.fill_between([0.5, 1.3], 1e-3, 10, color="tab:green", alpha=0.15, label="goal: <= 1.3x cost, <= 10 x tol")
        ax.axhline(10, color="tab:green", lw=0.8)
        ax.axvline(1.3, color="tab:green", lw=0.8)
        ax.set_xlim(0.6, 8)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([0.6, 1, 1.3, 2, 3, 5, 8])
        ax.set_ylim(1e-2, max(r["max_over_tol"] for r in rows) * 2)
        ax.set_xlabel("evaluations per sample / batch-shared dopri5 NFE at tol")
        ax.set_ylabel("worst sample |error| / tol")
        ax.set_title(f"{prob}, B = {rows[0]['batch']}, tol = {TOL:g}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("cost vs worst-sample error (exact divergence, exact prior; one setting per point)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--sde", default="VP,VE,sub-VP")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="d = 2, B = 32, two SDEs (a smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    dim, batch, sdes = (2, 32, ["VP", "VE"]) if a.quick else (a.dim, a.batch, a.sde.split(","))
    for s in sdes:
        if s not in SDES:
            ap.error(f"--sde: unknown {s!r}, expected some of {list(SDES)}")
    rows = [r for s in sdes for r in run_problem(dim, s, batch)]
    summary = summarise(rows)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"likelihood_frontier_{dim}" + ("_quick" if a.quick else ""))
    with open(stem + ".json", "w") as fh:
        json.dump({"tol": TOL, "rows": rows, "summary": summary}, fh, indent=1)
    plot(rows, stem + ".png")
    print(json.dumps(summary, indent=1))

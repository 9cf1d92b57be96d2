r"""Cost vs worst-sample error of every likelihood error control: where the per-sample target sits.

For one mixture and SDE, B samples of the mixture (seeded), exact divergence, exact prior, and a
*reported* tolerance ``tol`` (1e-5): each setting below is one :func:`~sdesolve_gen.log_likelihood`
call whose controller runs at ``scale * tol`` (the library's
:data:`~sdesolve_gen.likelihood.SOLVER_TOL_FACTOR` applies on top, as at the defaults). Errors are
per sample against the analytic :math:`\log p_\varepsilon(x)`, in units of ``tol``. Two costs, both
as ratios to the batch-shared dopri5 solve at ``tol`` (torchdiffeq's default norm, the reference):

* ``evals_ratio``: the mean number of score evaluations a sample takes part in (what the work
  costs when finished samples leave the batch; equal to the NFE for shared-step solves);
* ``nfe_ratio``: batched calls of the score (what a latency-bound accelerator pays).

Each family traces a curve in (cost, worst error); its slope on log-log axes is the family's
effective order :math:`p` (error :math:`\propto \mathrm{cost}^{-p}`; reported only where cost and
error are monotone in the scale). The target box is ``cost <= 1.3``, ``max error <= 10 x tol``.
Each row also records the size of the log-density increment :math:`|\delta|` (nats), which the
reference's norm scales its tolerance by.

    python -m benchmarks.likelihood_frontier [--dim 16] [--sde VP,VE,sub-VP] [--batch 256] [--jobs 2] [--quick]

Writes ``likelihood_frontier_<dim>.json`` and ``.png`` to ``--out`` (``--quick``: d = 2, B = 32,
VP and VE, files ``*_quick``; it overrides ``--dim``, ``--batch`` and ``--sde``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sdesolve_gen.likelihood import log_likelihood
from sdesolve_gen.sde import VESDE, VPSDE, SubVPSDE

from .metrics import loglog_slope
from .problems import gmm

TOL = 1e-5
Family = Tuple[str, Dict[str, Any], Tuple[float, ...]]
#: (family, keyword arguments, controller scales); the first family's first point is the reference
FAMILIES: Tuple[Family, ...] = (
    ("batch dopri5 (torchdiffeq norm)", dict(error_control="batch", method="dopri5"), (1.0, 0.1, 0.01, 0.001)),
    ("per-sample norm, shared steps, dopri5", dict(method="dopri5"), (1.0, 0.3, 0.1)),
    ("per-sample norm, shared steps, dopri8 (default)", dict(method="dopri8"), (10.0, 3.0, 1.0)),
    ("independent steps, dopri5_ps", dict(method="dopri5_ps"), (16.0, 4.0, 1.0)),
)
SDES = {"VP": VPSDE, "VE": VESDE, "sub-VP": SubVPSDE}
COSTS = ("evals_ratio", "nfe_ratio")


def run_problem(dim: int, sde_name: str, batch: int, families: Sequence[Family] = FAMILIES,
                log: Callable[..., None] = print) -> List[Dict[str, Any]]:
    """Solve every (family, scale) setting on ``gmm(dim, seed=dim)`` under one SDE.

    Args:
        dim: data dimension.
        sde_name: a key of :data:`SDES`.
        batch: number of samples (drawn with seed 5).
        families: ``(name, log_likelihood kwargs, scales)``; the first setting is the reference.
        log: progress printer.

    Returns:
        One dict per setting: ``problem, dim, batch, family, scale, nfe, evals_per_sample,
        max/median/p90/p99_over_tol, frac_over_10, delta_nats_median, delta_nats_max, wall,
        nfe_ratio, evals_ratio``.
    """
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
            dn = res.delta_log_prob.abs()
            rows.append(dict(problem=f"GMM{dim}-{sde_name}", dim=dim, batch=batch, family=family, scale=s,
                             nfe=int(res.nfe), evals_per_sample=float(ev.double().mean()) if ev is not None else float(res.nfe),
                             max_over_tol=float(err.max()), median_over_tol=float(q[0]), p90_over_tol=float(q[1]),
                             p99_over_tol=float(q[2]), frac_over_10=float((err > 10).double().mean()),
                             delta_nats_median=float(dn.median()), delta_nats_max=float(dn.max()), wall=res.wall_time))
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
    """Family names in the order they first appear in ``rows``."""
    return list(dict.fromkeys(r["family"] for r in rows))


def _order(pts: List[Dict[str, Any]], cost: str) -> float:
    """Least-squares slope of -log(max error) vs log(cost) over one family's points ordered by scale;
    NaN unless there are >= 2 points and cost and error are both monotone in the scale."""
    pts = sorted(pts, key=lambda r: -r["scale"])  # loosest first
    c = [r[cost] for r in pts]
    e = [max(r["max_over_tol"], 1e-300) for r in pts]
    if len(pts) < 2 or any(b < a for a, b in zip(c, c[1:])) or any(b > a for a, b in zip(e, e[1:])):
        return float("nan")
    return -loglog_slope(c, e)


def summarise(rows: List[Dict[str, Any]], box_cost: float = 1.3, box_err: float = 10.0) -> Dict[str, Any]:
    """Per problem and family, for each cost in :data:`COSTS`: the effective order, the cheapest
    *measured* setting with every sample within ``box_err`` x tol, and whether a setting lies in the box.

    Args:
        rows: output of :func:`run_problem` (any number of problems; each problem's first row is its
            reference, cost 1).
        box_cost, box_err: the target box.

    Returns:
        ``{problem: {"families": {family: {cost: {"order", "cheapest_within", "in_box"}}},
        "order_needed_from_reference": float}}``; ``order`` is ``None`` where :func:`_order` is NaN;
        the last entry is the slope that would take the reference (cost 1) to the box's corner.
    """
    out: Dict[str, Any] = {}
    for prob in dict.fromkeys(r["problem"] for r in rows):
        prows = [r for r in rows if r["problem"] == prob]
        fams: Dict[str, Any] = {}
        for family in _families(prows):
            pts = [r for r in prows if r["family"] == family]
            fams[family] = {}
            for cost in COSTS:
                ok = [r[cost] for r in pts if r["max_over_tol"] <= box_err]
                p = _order(pts, cost)
                fams[family][cost] = dict(order=p if math.isfinite(p) else None, cheapest_within=min(ok) if ok else None,
                                          in_box=any(r[cost] <= box_cost and r["max_over_tol"] <= box_err for r in pts))
        base = prows[0]
        need = math.log(max(base["max_over_tol"], box_err) / box_err) / math.log(box_cost)
        out[prob] = {"families": fams, "order_needed_from_reference": need}
    return out


def plot(rows: List[Dict[str, Any]], path: str, box_cost: float = 1.3, box_err: float = 10.0) -> None:
    """One panel per problem: worst-sample error vs evaluations per sample (solid) and, for
    independent-step families, vs batched calls (dotted, same colour); the target box shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    costs = [r[c] for r in rows for c in COSTS]
    errs = [max(r["max_over_tol"], 1e-300) for r in rows]
    xlim = (min(0.6, 0.9 * min(costs)), max(8.0, 1.1 * max(costs)))
    ylim = (min(1e-2, 0.5 * min(errs)), 2 * max(errs))
    fig, axes = plt.subplots(1, len(probs), figsize=(5.2 * len(probs), 5.4), squeeze=False)
    for ax, prob in zip(axes[0], probs):
        for family, mk in zip(_families(rows), itertools.cycle("osD^v<>")):
            pts = sorted((r for r in rows if r["problem"] == prob and r["family"] == family), key=lambda r: -r["scale"])
            (line,) = ax.loglog([r["evals_ratio"] for r in pts], [r["max_over_tol"] for r in pts], mk + "-", label=family)
            if any(r["evals_ratio"] != r["nfe_ratio"] for r in pts):
                ax.loglog([r["nfe_ratio"] for r in pts], [r["max_over_tol"] for r in pts], mk + ":", alpha=0.5,
                          color=line.get_color(), label=family + " (batched calls)")
        ax.fill_between([xlim[0], box_cost], ylim[0], box_err, color="tab:green", alpha=0.15,
                        label=f"target: <= {box_cost:g}x cost, <= {box_err:g} x tol")
        ax.axhline(box_err, color="tab:green", lw=0.8)
        ax.axvline(box_cost, color="tab:green", lw=0.8)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([v for v in (0.6, 1, 1.3, 2, 3, 5, 8) if xlim[0] <= v <= xlim[1]])
        ax.set_xlabel("cost / batch-shared dopri5 NFE at tol\n(solid: evaluations per sample; dotted: batched calls)")
        ax.set_ylabel("worst sample |error| / tol")
        ax.set_title(f"{prob}, B = {rows[0]['batch']}, tol = {TOL:g}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.suptitle("cost vs worst-sample error (exact divergence, exact prior; one setting per point)", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _one(args: Tuple[int, str, int]) -> List[Dict[str, Any]]:
    torch.set_num_threads(1)
    return run_problem(*args)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """The command line (see the module docstring); returns ``{"rows", "summary", "paths"}``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.likelihood_frontier", description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--sde", default="VP,VE,sub-VP", help=f"comma-separated subset of {list(SDES)}")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=1, help="run the SDEs in this many processes")
    ap.add_argument("--quick", action="store_true", help="d = 2, B = 32, VP and VE (overrides --dim/--batch/--sde)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args(argv)
    sdes = [s.strip() for s in a.sde.split(",") if s.strip()]
    for s in sdes:
        if s not in SDES:
            ap.error(f"--sde: unknown {s!r}, expected some of {list(SDES)}")
    if a.dim < 1 or a.batch < 2 or a.jobs < 1:
        ap.error("--dim >= 1, --batch >= 2 and --jobs >= 1 are required")
    dim, batch = (2, 32) if a.quick else (a.dim, a.batch)
    if a.quick:
        sdes = ["VP", "VE"]
    jobs = [(dim, s, batch) for s in sdes]
    if a.jobs > 1 and len(jobs) > 1:
        import multiprocessing

        with ProcessPoolExecutor(min(a.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            per = list(ex.map(_one, jobs))
    else:
        torch.set_num_threads(1)
        per = [run_problem(*j) for j in jobs]
    rows = [r for p in per for r in p]
    summary = summarise(rows)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"likelihood_frontier_{dim}" + ("_quick" if a.quick else ""))
    command = "python -m benchmarks.likelihood_frontier " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(stem + ".json", "w") as fh:
        json.dump({"tol": TOL, "command": command, "rows": rows, "summary": summary}, fh, indent=1)
    plot(rows, stem + ".png")
    return {"rows": rows, "summary": summary, "paths": (stem + ".json", stem + ".png")}


if __name__ == "__main__":
    print(json.dumps(main()["summary"], indent=1))

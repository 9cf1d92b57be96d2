"""Markdown + JSON report: goals with PASS/FAIL computed from the measured numbers, then tables."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: List[Dict[str, Any]], cols: List[str]) -> str:
    """A markdown table of ``rows`` restricted to ``cols``."""
    if not rows:
        return "_(no rows)_\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _verdict(p: Any) -> str:
    return "n/a (skipped)" if p is None else ("PASS" if p else "FAIL")


def write(results: Dict[str, Any], out: str) -> Dict[str, str]:
    """Write ``results.json`` and ``results.md`` to ``out``; return their paths."""
    os.makedirs(out, exist_ok=True)
    g = results["goals"]
    md = [f"# sdesolve_gen benchmarks ({results['mode']} mode)\n",
          f"Command: `{results['command']}`; date {results['date']}; torch {results['torch']}; "
          f"threads {results['threads']}; repeats {results['repeats']} (median).\n",
          "## Goals (computed from the numbers below)\n"]
    s = g.get("sampling", {})
    md.append(f"* Sampling goals (trajectory error; 10 NFE: ours <= 0.5x best peer, 20/50 NFE: <= 1x; adaptive "
              f"<= 1e-2 in <= 30 NFE; calibrated >= 2x better than the default grid): **{_verdict(s.get('passed'))}**")
    for p, v in s.get("per_problem", {}).items():
        verdict = _verdict(v["passed"]) if v.get("goal", True) else f"({_verdict(v['passed']).lower()}; reported, not a goal line)"
        if v["kind"] == "ratio":
            md.append(f"  * {p}: {v['ours']} {v['ours_err']:.3g} vs {v['peer']} {v['peer_err']:.3g} = "
                      f"{v['ratio']:.2f}x (need <= {v['need']}x) -> {verdict}")
        elif v["kind"] == "adaptive":
            md.append(f"  * {p}: {v['ours']} error {v['err']:.3g} in {v['nfe']} NFE -> {verdict}")
        else:
            md.append(f"  * {p}: {v['ours']} {v['err']:.3g} vs default grid {v['default_err']:.3g} = "
                      f"{v['gain']:.2f}x better -> {verdict}")
    e = g.get("em_overhead", {})
    md.append(f"* EM overhead of our sdeint <= 1.1x a bare loop: **{_verdict(e.get('passed'))}**")
    for p, v in e.get("per_problem", {}).items():
        md.append(f"  * score {p}: {v['ratio']:.3g}x -> {_verdict(v['passed'])}")
    lk = g.get("likelihood", {})
    md.append(f"* Likelihood >= 3x faster than score_sde RK45 at equal or lower error (measured): **{_verdict(lk.get('passed'))}**")
    for p, v in lk.get("per_problem", {}).items():
        md.append(f"  * {p}: best qualifying {v['method']} speedup {v['speedup']:.3g}x "
                  f"(err ours {_fmt(v['ours_err'])} vs RK45 {_fmt(v['rk45_err'])}) -> {_verdict(v['passed'])}")
    if results.get("skipped"):
        md.append("\n## Skipped\n")
        md += [f"* {x}" for x in results["skipped"]]
    sec = results["sections"]
    if "sampling" in sec:
        sm = sec["sampling"]
        md.append(f"\n## Sampling vs diffusers and k-diffusion (exact GMM score, n = {sm.get('n_samples')} samples)\n")
        md.append("err: mean per-sample RMSE of x(eps)/alpha(eps) against dopri5 (rtol=atol=1e-9) from the same x_T "
                  "(the ranking metric; empty for stochastic samplers); sw2: sliced W2 to exact samples, a distribution "
                  "check only (the 'exact samples (floor)' row is its Monte-Carlo floor); time: median seconds.\n")
        if sm.get("calibration"):
            md.append("Calibration cost (batched score calls on the calib_n calibration noise samples; dopri5 reference, "
                      "solved once per problem and shared by its grids, + search; seconds: the search):\n")
            md.append(table(sm["calibration"], ["problem", "method", "nfe", "steps", "calib_n", "max_evals", "nfe_reference", "nfe_search",
                                                "nfe_total", "evaluations", "seconds", "error_start", "error_calibrated"]))
        md += [f"* plot: `{os.path.basename(p)}`" for p in sm.get("plots", [])]
        md.append(table(sm["rows"], ["problem", "method", "nfe_budget", "nfe", "err", "sw2", "time"]))
    if "likelihood" in sec:
        md.append("\n## Likelihood vs score_sde RK45 (VP, rtol=atol=1e-5)\n")
        md.append("abs_err: mean |log p - exact log p_eps|. extrapolated_equal_error_speedup is NOT measured: RK45 time x "
                  "(err_rk45/err_ours)^2 probe runs.\n")
        md.append(table(sec["likelihood"]["rows"], ["problem", "batch", "method", "nfe", "abs_err", "time",
                                                   "speedup_vs_rk45", "extrapolated_equal_error_speedup"]))
    if "em_overhead" in sec:
        md.append("\n## Euler-Maruyama overhead (float32, reverse VP)\n")
        md.append(table(sec["em_overhead"]["rows"], ["score", "method", "batch", "steps", "time", "ratio_vs_bare", "out_std"]))
    if "pf_ode_nfe" in sec:
        md.append("\n## PF-ODE (dopri5) NFE and error vs the exact flow (diagonal Gaussian data)\n")
        md.append(table(sec["pf_ode_nfe"]["rows"], ["sde", "dim", "batch", "tol", "nfe", "rms_err", "time"]))
    if "scaling" in sec:
        md.append("\n## Scaling (median seconds)\n")
        md.append(table(sec["scaling"]["rows"], ["curve", "method", "x", "time"]))
        md.append(f"Exact trace first costs > 2x Hutchinson at D = {sec['scaling'].get('exact_vs_hutchinson_2x_crossover_dim')}.\n")
        md += [f"* plot: `{os.path.basename(p)}`" for p in sec["scaling"].get("plots", [])]
    for res in sec.values():  # sections that render themselves
        if isinstance(res, dict) and isinstance(res.get("markdown"), str):
            md.append(res["markdown"])
    paths = {"markdown": os.path.join(out, "results.md"), "json": os.path.join(out, "results.json")}
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(md) + "\n")
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    return paths


def md_to_rst(md: str) -> str:
    """Convert the report's restricted markdown (headings, bullets, pipe tables, code spans) to
    reStructuredText, for pasting into ``docs/benchmarks.rst``."""
    out: List[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].replace("`", "``")
        if not line.startswith("|"):
            line = line.replace("|", "\\|")  # a literal bar, not an RST substitution
        if line.startswith("# "):
            i += 1
            continue  # the page has its own title
        if line.startswith("## "):
            title = line[3:].strip()
            out += ["", title, "~" * len(title), ""]
        elif line.startswith("| "):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not lines[i].startswith("|---"):
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out += ["", ".. list-table::", "   :header-rows: 1", ""]
            for r in rows:
                out.append("   * - " + (r[0] or "\\ "))
                out += ["     - " + (c or "\\ ") for c in r[1:]]
            out.append("")
            continue
        elif line.startswith("  * "):
            if out and out[-1].startswith("* "):
                out.append("")
            out.append(line)
        else:
            if line.startswith("* ") and out and out[-1].startswith("  * "):
                out.append("")
            out.append(line)
        i += 1
    return "\n".join(out) + "\n"

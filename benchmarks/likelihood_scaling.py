r"""Exact-divergence cost per evaluation vs dimension D (64 .. 3072), and the crossover to Hutchinson.

Score: a 2-layer MLP ``D -> 256 -> D`` (tanh), batch B = 8, float32, one thread. For each D:
one score evaluation, one vector-Jacobian product (forward + one backward), the exact trace with
:class:`sdesolve_gen.divergence.DivergenceEngine` (torch.func path, default chunk), the same with
the previous default chunk (the working-set bound alone, without ``MIN_CHUNK_ROWS``), the exact
trace of the previous implementation (all D basis vectors in one ``is_grads_batched`` pass, as
on main before this change; skipped above 1024 where its D x B x D working set is the problem)
and Hutchinson with K = 1 and K = 32 Rademacher probes.

The exact trace needs D backward passes, each of which costs O(D) for this score, so its total
cost is inherently ~D^2; "linear in D" is judged on the cost per backward pass: the fitted
exponent of ``exact / one_vjp`` vs D should be ~1 (no superlinear overhead from the working
set). Both exponents (raw and per-VJP) are reported.

Two yardsticks for "one VJP" are reported. ``one_vjp`` is one ``autograd.grad`` call on the batch;
at small D it is mostly fixed per-call overhead (its own exponent is ~0.6), so ``exact / (D *
one_vjp)`` measures the speed-up over D separate calls as much as linearity. ``marginal_vjp`` =
``(hutch32 - hutch1) / 31`` is the cost of one more VJP inside a batched pass at the same D (the
engine's probe path, fixed overhead removed); ``exact / (D * marginal_vjp)`` near a constant
means the exact trace costs D batched VJPs and nothing that grows faster.

    python -m benchmarks.likelihood_scaling [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List

import torch

from sdesolve_gen.divergence import CHUNK_ELEMENTS, DivergenceEngine, default_chunk

from .metrics import loglog_slope


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _old_exact(f, x):
    """main's exact trace: every basis vector in one batched backward pass."""
    B, D = x.shape
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = f(xg)
        basis = torch.eye(D, dtype=x.dtype)[:, None, :].expand(-1, B, D)
        g = torch.autograd.grad(s, xg, basis, retain_graph=True, is_grads_batched=True)[0]
        return torch.diagonal(g, dim1=0, dim2=2).sum(-1)


def run(*, quick: bool = False, repeats: int = 3, out: str = "benchmarks/results", log=print) -> Dict[str, Any]:
    torch.manual_seed(0)
    dims = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024, 2048, 3072]
    B, H = 8, 256
    rows: List[Dict[str, Any]] = []
    for D in dims:
        net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, D))
        f = lambda x: net(x)  # noqa: E731
        x = torch.randn(B, D)
        eng = DivergenceEngine()
        eng(f, x)  # first call: the autograd path and the graph check
        p1 = torch.randint(0, 2, (1, B, D)).float() * 2 - 1
        p32 = torch.randint(0, 2, (32, B, D)).float() * 2 - 1

        def one_vjp():
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                s = f(xg)
                return torch.autograd.grad(s, xg, torch.ones_like(s))[0]

        r = dict(D=D, B=B,
                 score=_time(lambda: f(x), repeats),
                 one_vjp=_time(one_vjp, repeats),
                 exact=_time(lambda: eng(f, x), repeats),
                 hutch1=_time(lambda: eng(f, x, p1), repeats),
                 hutch32=_time(lambda: eng(f, x, p32), repeats))
        r["chunk"] = default_chunk(B, D)
        # the default before MIN_CHUNK_ROWS: the working-set bound alone (chunk * B * D <= CHUNK_ELEMENTS)
        r["chunk_elements_rule"] = max(1, min(D, CHUNK_ELEMENTS // (B * D)))
        eng_el = DivergenceEngine(chunk=r["chunk_elements_rule"])
        eng_el(f, x)
        r["exact_elements_rule"] = _time(lambda: eng_el(f, x), repeats)
        eng1 = DivergenceEngine(chunk=1)  # one basis vector per backward pass: D separate VJPs
        eng1(f, x)
        r["exact_chunk1"] = _time(lambda: eng1(f, x), max(1, repeats - 1))
        r["exact_old"] = _time(lambda: _old_exact(f, x), max(1, repeats - 1)) if D <= 1024 else None
        r["exact_over_D_vjp"] = r["exact"] / (D * r["one_vjp"])
        # None when timing noise makes the difference non-positive (then the row is left out of the fits)
        m = (r["hutch32"] - r["hutch1"]) / 31
        r["marginal_vjp"] = m if m > 0 else None
        r["exact_over_D_marginal_vjp"] = r["exact"] / (D * m) if m > 0 else None
        r["exact_per_vjp"] = r["exact"] / r["one_vjp"]
        r["elements_rule_over_default"] = r["exact_elements_rule"] / r["exact"]
        rows.append(r)
        log(f"  D={D:5d} exact {r['exact'] * 1e3:8.2f} ms (chunk {r['chunk']}; element rule alone, chunk "
            f"{r['chunk_elements_rule']}: {r['exact_elements_rule'] * 1e3:8.2f} ms)  chunk 1 {r['exact_chunk1'] * 1e3:8.2f} ms  "
            f"exact/(D vjp) {r['exact_over_D_vjp']:5.2f}  "
            f"exact/(D marginal vjp) {r['exact_over_D_marginal_vjp'] or float('nan'):5.2f}  "
            f"one vjp {r['one_vjp'] * 1e3:6.3f} ms  "
            f"hutch32 {r['hutch32'] * 1e3:7.2f} ms  old {r['exact_old'] * 1e3 if r['exact_old'] else float('nan'):8.2f} ms")
    ds = [r["D"] for r in rows]
    summary = {
        "exponent_exact": loglog_slope(ds, [r["exact"] for r in rows]),
        "exponent_exact_per_vjp": loglog_slope(ds, [r["exact_per_vjp"] for r in rows]),
        "exponent_exact_elements_rule": loglog_slope(ds, [r["exact_elements_rule"] for r in rows]),
        "exponent_exact_elements_rule_per_vjp": loglog_slope(ds, [r["exact_elements_rule"] / r["one_vjp"] for r in rows]),
        "exponent_one_vjp": loglog_slope(ds, [r["one_vjp"] for r in rows]),
        "exponent_exact_old": loglog_slope([r["D"] for r in rows if r["exact_old"]], [r["exact_old"] for r in rows if r["exact_old"]]),
    }
    # linearity of the per-VJP cost: max / min of exact / (D * one_vjp) over D (1.0 = perfectly linear)
    per = [r["exact"] / (r["D"] * r["one_vjp"]) for r in rows]
    summary["linearity_spread"] = max(per) / min(per)
    per_el = [r["exact_elements_rule"] / (r["D"] * r["one_vjp"]) for r in rows]
    summary["linearity_spread_elements_rule"] = max(per_el) / min(per_el)
    mrows = [r for r in rows if r["marginal_vjp"] is not None]
    per_m = [r["exact_over_D_marginal_vjp"] for r in mrows]
    summary["linearity_spread_marginal_vjp"] = max(per_m) / min(per_m) if len(per_m) > 1 else None
    summary["exponent_exact_per_marginal_vjp"] = (
        loglog_slope([r["D"] for r in mrows], [r["exact"] / r["marginal_vjp"] for r in mrows]) if len(mrows) > 1 else None)
    cross = [r["D"] for r in rows if r["exact"] >= r["hutch32"]]
    summary["crossover_D_vs_hutch32"] = cross[0] if cross else None
    os.makedirs(out, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        ax.loglog(ds, [r["exact"] for r in rows], "o-", label=f"exact (chunked torch.func), slope {summary['exponent_exact']:.2f}")
        ax.loglog(ds, [r["exact_elements_rule"] for r in rows], "d-.",
                  label=f"exact, element bound alone (previous default), slope {summary['exponent_exact_elements_rule']:.2f}")
        old = [(r["D"], r["exact_old"]) for r in rows if r["exact_old"]]
        ax.loglog([a for a, _ in old], [b for _, b in old], "s--", label=f"exact, one batched pass (main), slope {summary['exponent_exact_old']:.2f}")
        ax.loglog(ds, [r["D"] * r["one_vjp"] for r in rows], ":", color="k", label="D x one VJP call (linear in D per VJP)")
        spread = summary["linearity_spread_marginal_vjp"]
        ax.loglog([r["D"] for r in mrows], [r["D"] * r["marginal_vjp"] for r in mrows], "--", color="grey",
                  label="D x marginal VJP in a batched pass" + (f" (exact / this: spread {spread:.2f})" if spread else ""))
        ax.loglog(ds, [r["exact_chunk1"] for r in rows], "x-", label="exact, one VJP per pass (chunk=1)")
        ax.loglog(ds, [r["hutch32"] for r in rows], "^-", label="Hutchinson K=32")
        ax.loglog(ds, [r["hutch1"] for r in rows], "v-", label="Hutchinson K=1")
        ax.set_xlabel("D (dimensions per sample)")
        ax.set_ylabel("seconds per evaluation (B=8, 1 thread)")
        ax.set_title("Divergence cost per evaluation, MLP score D-256-D")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out, "likelihood_divergence_scaling.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        summary["plot"] = os.path.basename(path)
    except ImportError as e:  # pragma: no cover
        summary["plot"] = f"skipped: {e}"
    with open(os.path.join(out, "likelihood_scaling.json"), "w") as fh:
        json.dump({"rows": rows, "summary": summary}, fh, indent=1)
    return {"rows": rows, "summary": summary, "skipped": []}


def crossover(*, repeats: int = 3, out: str = "benchmarks/results", log=print) -> Dict[str, Any]:
    """Exact trace vs Hutchinson (K = 1, 4) per evaluation on the MLP above and the project's U-Net
    (``base=32, channel_mults=(1, 2)``, the digits example's), float64, B = 16, at several D:
    the ratio exact / K-probe time is what ``divergence="auto"`` trades against probe noise."""
    import sdesolve_gen as sg

    torch.manual_seed(0)
    rows: List[Dict[str, Any]] = []
    B = 16
    nets = [("mlp", D, None) for D in (16, 64, 256)] + [("unet", s * s, s) for s in (4, 8, 16)]
    for kind, D, side in nets:
        if kind == "mlp":
            net = torch.nn.Sequential(torch.nn.Linear(D, 256), torch.nn.Tanh(), torch.nn.Linear(256, D)).double()
            f = lambda x, net=net: net(x)  # noqa: E731
        else:
            unet = sg.UNet(1, base=32, channel_mults=(1, 2)).double().eval()
            tt = torch.full((B,), 0.5, dtype=torch.float64)
            f = lambda x, unet=unet, side=side: unet(x.reshape(B, 1, side, side), tt).reshape(B, -1)  # noqa: E731
        x = torch.randn(B, D, dtype=torch.float64)
        eng = DivergenceEngine()
        eng(f, x)
        p1 = torch.randint(0, 2, (1, B, D)).double() * 2 - 1
        p4 = torch.randint(0, 2, (4, B, D)).double() * 2 - 1
        r = dict(net=kind, D=D, B=B, exact=_time(lambda: eng(f, x), repeats), hutch1=_time(lambda: eng(f, x, p1), repeats),
                 hutch4=_time(lambda: eng(f, x, p4), repeats))
        r["exact_over_hutch1"] = r["exact"] / r["hutch1"]
        r["exact_over_hutch4"] = r["exact"] / r["hutch4"]
        rows.append(r)
        log(f"  {kind} D={D:4d} exact {r['exact'] * 1e3:9.2f} ms  K=1 {r['hutch1'] * 1e3:8.2f} ms  K=4 {r['hutch4'] * 1e3:8.2f} ms  "
            f"exact/K1 {r['exact_over_hutch1']:6.1f}")
        os.makedirs(out, exist_ok=True)  # written after every row: a stopped run keeps what it measured
        with open(os.path.join(out, "likelihood_crossover.json"), "w") as fh:
            json.dump({"rows": rows}, fh, indent=1)
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--crossover", action="store_true", help="only the exact-vs-Hutchinson table (MLP and U-Net)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.crossover:
        crossover(out=a.out)
        raise SystemExit(0)
    res = run(quick=a.quick, out=a.out)
    print(json.dumps(res["summary"], indent=1))

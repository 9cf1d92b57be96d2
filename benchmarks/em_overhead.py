r"""Euler-Maruyama overhead: raw ``torchsde.sdeint(method="euler")`` with its default Brownian
motion vs our :func:`~sdesolve_gen.sdeint` vs a bare hand-written loop

.. math:: x \leftarrow x + (g^2 s(x, t) - a(t) x) h + g\sqrt h\,z,

all on the reverse VP SDE, float32, the same step grid, with (a) the exact 5-component GMM score and
(b) the trivial score :math:`s = -x` (which exposes pure solver overhead)."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
import torchsde

from sdesolve_gen.reverse import ReverseSDE
from sdesolve_gen.sde import VPSDE

from .metrics import median_time
from .problems import gmm


def _bare(sde, score, x_T, ts, seed):
    t = ts.tolist()
    a = sde.drift_coef(ts).tolist()
    g2 = sde.diffusion2(ts).tolist()
    tt = [ts[i] for i in range(len(t))]
    gen = torch.Generator().manual_seed(seed)
    x = x_T
    for i in range(len(t) - 1):
        h = t[i] - t[i + 1]
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        x = x + (g2[i] * score(x, tt[i]) - a[i] * x) * h + math.sqrt(g2[i] * h) * z
    return x


def run(*, quick: bool, repeats: int, log=print) -> Dict[str, Any]:
    try:
        from sdesolve_gen.integrate import sdeint
    except ImportError as e:  # pragma: no cover
        log(f"em_overhead: not available yet ({e})")
        return {"rows": [], "skipped": [f"sdeint not available yet: {e}"]}
    B, steps = (2000, 200) if quick else (10000, 1000)
    sde = VPSDE()
    ts = torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64)
    data = gmm(2, k=5, seed=7)
    gmm_score = data.score_fn(sde)
    scores = {"GMM5": gmm_score, "-x": lambda x, t: -x}
    rows: List[Dict[str, Any]] = []
    x_T = sde.prior_sample((B, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for sname, score in scores.items():
        rsde = ReverseSDE(sde, score)
        us = rsde.solver_times(ts)
        dt = float(us[1] - us[0])
        cands = {
            "bare loop": lambda: _bare(sde, score, x_T, ts, 0),
            "ours sdeint(euler)": lambda: sdeint(rsde, x_T, ts[[0, -1]], dt=(sde.T - sde.eps) / steps, seed=0, save="final").x,
            "torchsde.sdeint(euler)": lambda: torchsde.sdeint(rsde, x_T, us[[0, -1]].to(torch.float32), method="euler", dt=dt)[-1],
        }
        res = {}
        for name, fn in cands.items():
            t, x = median_time(fn, repeats)
            res[name] = (t, x)
        for name, (t, x) in res.items():
            rows.append(dict(score=sname, method=name, batch=B, steps=steps, time=t,
                             ratio_vs_bare=t / res["bare loop"][0], finite=bool(torch.isfinite(x).all()),
                             out_std=float(x.std())))
        log(f"  em_overhead {sname}: done")
    return {"rows": rows, "skipped": []}


def goal(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    per = {r["score"]: dict(ratio=r["ratio_vs_bare"], passed=r["ratio_vs_bare"] <= 1.1)
           for r in rows if r["method"].startswith("ours")}
    return {"per_problem": per, "passed": all(v["passed"] for v in per.values()) if per else None}

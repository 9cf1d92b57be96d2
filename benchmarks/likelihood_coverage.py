r"""Coverage of Hutchinson's reported stderr, per sample, at several K and D (Rademacher default).

Target: the condition-number-100 mixtures of ``tests/test_likelihood_trust.py`` (:func:`benchmarks.problems.ill_conditioned`),
VP, 150 held-out points, ``rtol = atol = 1e-5``, exact prior. For each (D, K):
the fraction of samples with ``|mean_k l_k - l_exact| <= t_{K-1,0.975} * stderr`` (nominal 0.95,
binomial sd 0.018 at N = 150), the same with ``stderr / 2`` (a negative control: must fall well
below), and the RMS error of the estimate in nats.

    python -m benchmarks.likelihood_coverage [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Tuple

import torch

import sdesolve_gen as sg

from .problems import ill_conditioned


def coverage_row(h: Any, exact: torch.Tensor, **fields: Any) -> Dict[str, Any]:
    """``fields`` plus the coverage of ``h`` (a K-probe result, ``fields["K"]`` probes) against the
    exact log-likelihoods at the Student-t 95% level, the same with stderr / 2, and the RMS error."""
    from scipy.stats import t as student_t

    q = float(student_t.ppf(0.975, fields["K"] - 1))
    dev = (h.log_prob - exact).abs()
    return dict(fields, coverage=float((dev <= q * h.stderr).double().mean()),
                coverage_half_stderr=float((dev <= q * h.stderr / 2).double().mean()), rms_err=float(dev.pow(2).mean().sqrt()))


def exact_reference(sde: Any, D: int, n: int) -> Tuple[Any, torch.Tensor, Dict[str, Any], torch.Tensor]:
    """The D-dimensional target, its ``n`` points (seed 2), the solve options (``rtol = atol = 1e-5``,
    exact prior) and the exact-divergence log-likelihoods the estimators are compared with."""
    data = ill_conditioned(D, seed=D)
    x = data.sample(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(rtol=1e-5, atol=1e-5, prior=data.prior(sde))
    exact = sg.log_likelihood(sde, data.score_fn(sde), x, divergence="exact", **kw).log_prob
    return data, x, kw, exact


def run(dims=(4, 12, 32), ks=(4, 8, 32), n: int = 150, log=print) -> Dict[str, Any]:
    sde = sg.VPSDE()
    rows: List[Dict[str, Any]] = []
    for D in dims:
        data, x, kw, exact = exact_reference(sde, D, n)
        for K in ks:
            h = sg.log_likelihood(sde, data.score_fn(sde), x, divergence="hutchinson", n_probes=K,
                                  generator=torch.Generator().manual_seed(3), **kw)
            r = coverage_row(h, exact, D=D, K=K, n=n)
            rows.append(r)
            log(f"  D={D:3d} K={K:3d} coverage {r['coverage']:.3f}  (stderr/2: {r['coverage_half_stderr']:.3f})  RMS err {r['rms_err']:.3f} nats")
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = run()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "likelihood_coverage.json"), "w") as fh:
        json.dump(res, fh, indent=1)

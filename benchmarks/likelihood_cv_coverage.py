r"""Hutchinson with and without the Gaussian control variate: per-sample stderr coverage and RMS error.

Target: the condition-number-100 mixtures of :mod:`benchmarks.likelihood_coverage` (VP, 150
points, ``rtol = atol = 1e-5``, exact prior), the control variate built from each mixture's
exact covariance. For each (D, K) and estimator: the fraction of samples with
``|mean_k l_k - l_exact| <= t_{K-1,0.975} * stderr`` (nominal 0.95, binomial sd 0.018), the same
with ``stderr / 2`` (negative control), and the RMS error in nats; both estimators use the same
probes.

    python -m benchmarks.likelihood_cv_coverage [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List

import torch

import sdesolve_gen as sg
from sdesolve_gen.divergence import GaussianControlVariate

from .likelihood_coverage import coverage_row, exact_reference


def run(cases=((4, 8), (12, 4), (12, 32), (32, 8)), n: int = 150, log=print) -> Dict[str, Any]:
    sde = sg.VPSDE()
    rows: List[Dict[str, Any]] = []
    for D, K in cases:
        data, x, kw, exact = exact_reference(sde, D, n)
        cov = data.cov  # the mixture's covariance: the control variate's Gaussian fit
        for name, div in (("hutchinson", "hutchinson"), ("control variate", GaussianControlVariate(cov))):
            h = sg.log_likelihood(sde, data.score_fn(sde), x, divergence=div, n_probes=K, generator=torch.Generator().manual_seed(3), **kw)
            r = coverage_row(h, exact, D=D, K=K, n=n, estimator=name)
            rows.append(r)
            log(f"  D={D:3d} K={K:3d} {name:16s} coverage {r['coverage']:.3f} (stderr/2: {r['coverage_half_stderr']:.3f})  RMS err {r['rms_err']:.3f} nats")
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = run()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "likelihood_cv_coverage.json"), "w") as fh:
        json.dump(res, fh, indent=1)

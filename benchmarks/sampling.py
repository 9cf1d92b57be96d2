r"""Sampling vs k-diffusion on the SAME exact GMM score, the same initial noise, matched NFE.

For each problem (GMM dimension x {VP, VE}) and each NFE budget, every sampler starts from the same
:math:`x_T \sim \pi` (k-diffusion gets :math:`x_T/\alpha_T`, see :mod:`benchmarks.peers`) and its
output is scored by sliced W2 against exact data samples and by the mean exact log-density gap.
The "noise floor" row is SW2 between two independent exact samples of the same size.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.sde import VESDE, VPSDE

from .metrics import mean_log_density, median_time, sliced_w2
from .peers import K_DIFFUSION_HINT, KDenoiser, load_k_sampling
from .problems import gmm


#: Our samplers in the comparison, by registry name, with the grid each runs on.
OURS = (
    ("euler_maruyama", "edm"),
    ("ancestral", "edm"),
    ("heun", "edm"),
    ("dpm_solver1", "logsnr"),
    ("dpm_solver2", "logsnr"),
    ("dpm_solver3", "logsnr"),
    ("dpm_solver_pp_2m", "logsnr"),
)


def _ours(sde, score, x_T, nfe: int, gen_seed: int) -> Dict[str, Any]:
    """Our samplers with step counts from the registry so that NFE (incl. the final Tweedie denoise) <= nfe."""
    out = {}
    for name, kind in OURS:
        spec = SAMPLERS[name]
        ts = timesteps(sde, spec.steps_for(nfe - 1), kind=kind)

        def go(spec=spec, ts=ts):
            g = torch.Generator().manual_seed(gen_seed)
            sol = spec(sde, score, x_T, ts, generator=g, denoise=True)
            return sol.x, sol.nfe

        out[f"ours: {name}"] = go
    return out


def _peers(ks, sde, score, x_T, nfe: int, gen_seed: int):
    den = KDenoiser(sde, score)
    alpha_T = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
    eps_t = torch.tensor(sde.eps, dtype=torch.float64)
    s_min = float(sde.sigma(eps_t) / sde.alpha(eps_t))
    s_max = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64))) / alpha_T
    x0 = x_T / alpha_T

    def sig(n):
        return ks.get_sigmas_karras(n, s_min, s_max, rho=7.0).to(x_T.dtype)

    single, double = nfe, max(1, (nfe + 1) // 2)
    runs = {
        "k-diff: euler": lambda: ks.sample_euler(den, x0, sig(single), disable=True),
        "k-diff: heun": lambda: ks.sample_heun(den, x0, sig(double), disable=True),
        "k-diff: dpm_2": lambda: ks.sample_dpm_2(den, x0, sig(double), disable=True),
        "k-diff: lms": lambda: ks.sample_lms(den, x0, sig(single), disable=True),
        "k-diff: dpm++2M": lambda: ks.sample_dpmpp_2m(den, x0, sig(single), disable=True),
        "k-diff: dpm++SDE": lambda: ks.sample_dpmpp_sde(
            den, x0, sig(double), disable=True,
            noise_sampler=lambda s, sn: torch.randn(x0.shape, generator=gen, dtype=x0.dtype)),
        "k-diff: dpm_adaptive": lambda: ks.sample_dpm_adaptive(den, x0, s_min, s_max, rtol=0.05, atol=0.0078, disable=True),
    }
    gen = torch.Generator()

    def wrap(f):
        def go():
            gen.manual_seed(gen_seed)
            den.nfe = 0
            x = f()
            return x, den.nfe
        return go

    return {k: wrap(f) for k, f in runs.items()}


QUICK = {"dims": [2, 16], "nfes": [10, 20], "n": 2000}
FULL = {"dims": [2, 16, 64], "nfes": [10, 20, 50, 100], "n": 4000}


def run(*, quick: bool, repeats: int, log=print) -> Dict[str, Any]:
    """Run the sampling comparison (sizes from ``QUICK`` / ``FULL``); return a dict with ``rows``
    (list of dicts), ``skipped`` and ``n_samples``."""
    sizes = QUICK if quick else FULL
    dims, nfes, n = sizes["dims"], sizes["nfes"], sizes["n"]
    ks = load_k_sampling()
    skipped: List[str] = []
    if ks is None:
        skipped.append(K_DIFFUSION_HINT)
        log(K_DIFFUSION_HINT)
    rows: List[Dict[str, Any]] = []
    for dim in dims:
        data = gmm(dim, seed=dim)
        ref = data.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ref2 = data.sample(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        exact_logp = mean_log_density(data, ref2)
        floor = sliced_w2(ref, ref2)
        for sde_name, sde in (("VP", VPSDE()), ("VE", VESDE())):
            score = data.score_fn(sde)
            x_T = sde.prior_sample((n, dim), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            rows.append(dict(problem=f"GMM{dim}-{sde_name}", dim=dim, sde=sde_name, method="exact samples (floor)",
                             nfe_budget=0, nfe=0, sw2=floor, logp_gap=0.0, time=0.0))
            for nfe in nfes:
                cands = dict(_ours(sde, score, x_T, nfe, 4))
                if ks is not None:
                    cands.update(_peers(ks, sde, score, x_T, nfe, 4))
                for name, fn in cands.items():
                    if name.endswith("dpm_adaptive") and nfe != nfes[0]:
                        continue  # adaptive: one run, its own NFE
                    # one untimed warm-up only when a single timed run would otherwise carry first-call costs
                    t, res = median_time(fn, repeats, warmup=1 if repeats == 1 else 0)
                    x, used = res
                    if not bool(torch.isfinite(x).all()):
                        sw2, gap = math.inf, math.inf
                    else:
                        sw2 = sliced_w2(x, ref)
                        gap = mean_log_density(data, x) - exact_logp
                    rows.append(dict(problem=f"GMM{dim}-{sde_name}", dim=dim, sde=sde_name, method=name,
                                     nfe_budget=nfe, nfe=int(used), sw2=sw2, logp_gap=gap, time=t))
                log(f"  sampling GMM{dim}-{sde_name} NFE {nfe}: done")
    return {"rows": rows, "skipped": skipped, "n_samples": n}


def goal(rows: List[Dict[str, Any]], nfe: int = 10) -> Dict[str, Any]:
    """Per problem: our best SW2 at <= ``nfe`` NFE vs the best k-diffusion SW2 at <= ``nfe`` NFE."""
    per = {}
    for p in sorted({r["problem"] for r in rows}):
        sel = [r for r in rows if r["problem"] == p and r["nfe_budget"] == nfe and 0 < r["nfe"] <= nfe]
        ours = [r for r in sel if r["method"].startswith("ours")]
        peer = [r for r in sel if r["method"].startswith("k-diff")]
        if not ours or not peer:
            continue
        bo = min(ours, key=lambda r: r["sw2"])
        bp = min(peer, key=lambda r: r["sw2"])
        per[p] = dict(ours=bo["method"], ours_sw2=bo["sw2"], peer=bp["method"], peer_sw2=bp["sw2"],
                      passed=bo["sw2"] <= bp["sw2"])
    return {"per_problem": per, "passed": bool(per) and all(v["passed"] for v in per.values()) if per else None}

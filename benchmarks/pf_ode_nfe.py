r"""PF-ODE NFE needed by dopri5 at rtol = atol = 1e-3 / 1e-5 for VE / VP / sub-VP on Gaussian data,
and the error vs the exact flow.

For :math:`p_0 = \mathcal N(m, \mathrm{diag}(c))` the PF-ODE map is known in closed form,
:math:`x_t = \alpha_t m + \sqrt{(\alpha_t^2 c + \sigma_t^2)/(\alpha_T^2 c + \sigma_T^2)}\,(x_T - \alpha_T m)`
(componentwise), so the error is per trajectory: RMS of :math:`x_\varepsilon - x_\varepsilon^{exact}`.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from sdesolve_gen import samplers
from sdesolve_gen.sde import VESDE, VPSDE, SubVPSDE

from .metrics import median_time
from .problems import diag_gaussian


def exact_flow(data, sde, x_T: torch.Tensor) -> torch.Tensor:
    """Exact PF-ODE image at ``eps`` of ``x_T`` for diagonal-Gaussian data (see module docstring)."""
    T = torch.tensor(sde.T, dtype=torch.float64)
    e = torch.tensor(sde.eps, dtype=torch.float64)
    m, c = data.mean.reshape(-1), torch.diagonal(data.cov)
    aT, sT, ae, se = sde.alpha(T), sde.sigma(T), sde.alpha(e), sde.sigma(e)
    scale = torch.sqrt((ae**2 * c + se**2) / (aT**2 * c + sT**2))
    return ae * m + scale * (x_T - aT * m)


def run(*, quick: bool, repeats: int, log=print) -> Dict[str, Any]:
    dim = 8 if quick else 16
    B = 256 if quick else 2048
    data = diag_gaussian(dim, seed=3)
    rows: List[Dict[str, Any]] = []
    for name, sde in (("VE", VESDE()), ("VP", VPSDE()), ("sub-VP", SubVPSDE())):
        score = data.score_fn(sde)
        x_T = data.prior(sde).sample(B, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = exact_flow(data, sde, x_T)
        ts = torch.tensor([sde.T, sde.eps], dtype=torch.float64)
        for tol in (1e-3, 1e-5):
            t, sol = median_time(lambda: samplers.ode(sde, score, x_T, ts, rtol=tol, atol=tol), repeats)
            err = float(((sol.x - ref) ** 2).mean().sqrt())
            rows.append(dict(sde=name, dim=dim, batch=B, tol=tol, nfe=int(sol.nfe), rms_err=err, time=t))
        log(f"  pf_ode_nfe {name}: done")
    return {"rows": rows, "skipped": []}

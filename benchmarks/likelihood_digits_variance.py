r"""Per-probe variance of the digits likelihood's divergence integral: Rademacher Hutchinson, Hutch++,
the Gaussian control variate, and the linear drift's (non-)effect.

For a fixed probe :math:`\epsilon` the Hutchinson estimate of the score part of the log-density
increment is :math:`\epsilon^\top M\epsilon` with :math:`M = \int_\varepsilon^T -\tfrac12 g^2(t)\,J(x_t, t)\,dt`
along the probability-flow trajectory. Here :math:`J` is computed exactly (64 vector-Jacobian
products) at 16 Gauss-Legendre nodes in :math:`\log t` on :math:`[10^{-3}, 1]` for the first
``n_images`` held-out digits (the model and images of :mod:`benchmarks.likelihood_digits`), and:

* Rademacher variance :math:`2\|\mathrm{offdiag}\,\mathrm{sym}\,M\|_F^2` (closed form), also with
  :math:`M + aI` (the linear drift): identical, the diagonal does not enter;
* Gaussian-probe variance :math:`2\|\mathrm{sym}\,M\|_F^2`;
* the Gaussian control variate: Rademacher variance of :math:`M - M_C`,
  :math:`M_C = \int -\tfrac12 g^2 C_t\,dt`, :math:`C_t = -(\alpha_t^2\Sigma + \sigma_t^2 I)^{-1}`,
  :math:`\Sigma` the training split's covariance;
* Hutch++ with ``m = 3k`` products per evaluation (k sketch vectors :math:`Q = \mathrm{orth}(J^\top S)`
  at each node, :math:`\mathrm{tr}(Q^\top J Q)` exactly, Hutchinson with k projected Rademacher
  probes on the rest), its standard deviation simulated over ``draws`` sketches, against
  Rademacher Hutchinson with m probes.

All in bits/dim per image. ``python -m benchmarks.likelihood_digits_variance [--checkpoint-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from typing import Any, Dict

import numpy as np
import torch

import sdesolve_gen as sg
from sdesolve_gen.likelihood import _Flow

from .likelihood_digits import EPS, TO_BITS, _example_model, _images


def _rad_var(A: torch.Tensor) -> torch.Tensor:
    S = 0.5 * (A + A.transpose(-1, -2))
    off = S - torch.diag_embed(torch.diagonal(S, dim1=-2, dim2=-1))
    return 2 * off.pow(2).sum((-1, -2))


def run(*, n_images: int = 4, n_nodes: int = 16, draws: int = 300, ckpt_dir: str, train_steps: int = 800, log=print) -> Dict[str, Any]:
    from torch.func import vjp, vmap

    sde, model, _ = _example_model(ckpt_dir, train_steps, log)
    imgs = _images(n_images)
    x, train = imgs["x"], imgs["train"]
    B, D = x.shape[0], x[0].numel()
    u, w = np.polynomial.legendre.leggauss(n_nodes)
    lo, hi = math.log(EPS), math.log(float(sde.T))
    tn = np.exp(0.5 * (hi - lo) * u + 0.5 * (hi + lo))
    ts = torch.tensor(np.concatenate([[EPS], tn]), dtype=torch.float64)
    with torch.no_grad():
        xs = sg.odeint(_Flow(sde, model, EPS, float(sde.T), {}), x, ts, method="dopri5", rtol=1e-4, atol=1e-4).ys[1:]
    eye = torch.eye(D, dtype=torch.float64)
    Js, wts, Cs = [], [], []
    Sig = torch.cov(train.reshape(train.shape[0], D).T)
    for k in range(n_nodes):
        t = ts[k + 1]
        _, pull = vjp(lambda xf, t=t: model(xf.reshape(x.shape), t).reshape(B, D), xs[k].reshape(B, D))
        Js.append(vmap(pull)(eye[:, None, :].expand(D, B, D))[0].permute(1, 0, 2).detach())  # J[b, i, j] = ds_i/dx_j
        wts.append(-0.5 * float(sde.diffusion2(t)) * float(t) * 0.5 * (hi - lo) * w[k])
        a2, s2 = float(torch.exp(2 * sde.log_alpha(t))), float(sde.sigma2(t))
        Cs.append(-torch.linalg.inv(a2 * Sig + s2 * eye))
    J = torch.stack(Js, 1)  # (B, nodes, D, D)
    wt = torch.tensor(wts, dtype=torch.float64)
    M = (wt[None, :, None, None] * J).sum(1)
    MC = (wt[:, None, None] * torch.stack(Cs)).sum(0)
    sd = lambda v: (v.sqrt() * TO_BITS).tolist()  # noqa: E731
    res: Dict[str, Any] = {
        "rademacher_sd": sd(_rad_var(M)),
        "rademacher_sd_with_linear_drift": sd(_rad_var(M + 3.7 * eye)),
        "gaussian_probe_sd": sd(2 * (0.5 * (M + M.transpose(-1, -2))).pow(2).sum((-1, -2))),
        "control_variate_sd": sd(_rad_var(M - MC)),
        "top_eigenvalues_image0": torch.linalg.eigvalsh(0.5 * (M[0] + M[0].T)).abs().sort(descending=True).values[:8].tolist(),
        "hutchpp": [],
    }
    g = torch.Generator().manual_seed(0)
    exact = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)
    for k in (2, 4, 8, 16):
        est = []
        for _ in range(draws):
            S = (torch.randint(0, 2, (D, k), generator=g) * 2 - 1).double()
            G = (torch.randint(0, 2, (D, k), generator=g) * 2 - 1).double()
            Q, _ = torch.linalg.qr(J.transpose(-1, -2) @ S)
            t_q = torch.diagonal(Q.transpose(-1, -2) @ J @ Q, dim1=-2, dim2=-1).sum(-1)
            Gp = G - Q @ (Q.transpose(-1, -2) @ G)
            t_r = torch.diagonal(Gp.transpose(-1, -2) @ J @ Gp, dim1=-2, dim2=-1).sum(-1) / k
            est.append(((t_q + t_r) * wt).sum(1))
        E = torch.stack(est)
        res["hutchpp"].append(dict(m=3 * k, hutchpp_sd=(E.std(0) * TO_BITS).tolist(),
                                   hutchpp_mean_minus_exact=((E.mean(0) - exact) * TO_BITS).tolist(),
                                   rademacher_sd=[v / math.sqrt(3 * k) for v in res["rademacher_sd"]]))
    for key in ("rademacher_sd", "rademacher_sd_with_linear_drift", "gaussian_probe_sd", "control_variate_sd"):
        log(f"  {key:34s} " + " ".join(f"{v:.4f}" for v in res[key]))
    for h in res["hutchpp"]:
        log(f"  m={h['m']:3d}: Hutch++ sd " + " ".join(f"{v:.4f}" for v in h["hutchpp_sd"]) +
            "   Rademacher sd " + " ".join(f"{v:.4f}" for v in h["rademacher_sd"]))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint-dir", default=os.path.join(tempfile.gettempdir(), "sdesolve_gen_digits"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = run(ckpt_dir=a.checkpoint_dir)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "likelihood_digits_variance.json"), "w") as fh:
        json.dump(r, fh, indent=1)

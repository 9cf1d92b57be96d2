r"""The ``sdesolve-gen demo``: four samplers and the PF-ODE likelihood against exact answers.

The target is an embedded 2-D Gaussian mixture (:func:`demo_mixture`) under a VP SDE
(:math:`\beta_{\min}=0.1, \beta_{\max}=20`), so the score :math:`\nabla\log p_t` is exact and every
error is the sampler's own (discretisation + Monte-Carlo), never a network's. Every sampler starts
from the *exact prior* :math:`p_T` (``data.prior(sde)``), which removes the prior-mismatch bias, and
stops at :math:`t = \varepsilon = 10^{-3}`; the reference is the exact marginal
:math:`p_\varepsilon` (``data.marginal(eps, sde)``).

Errors reported per sampler (``N`` samples each):

* sliced :math:`W_2` (:func:`sliced_w2`, 64 fixed random directions) between the samples and
  the quantiles of 200 000 exact samples of :math:`p_\varepsilon`; the row ``exact (reference)``
  is the mean (and sd) of the same statistic over ``n_floor`` independent sets of ``N`` exact
  samples, i.e. the Monte-Carlo floor (a single set's value fluctuates by about that sd, so a
  sampler is only distinguishable from exact when it is clearly above the floor);
* :math:`\Delta\log p = \tfrac1N\sum_i \log p_\varepsilon(x_i) - \mathbb E_{p_\varepsilon}[\log p_\varepsilon]`
  (the second term from 200 000 exact samples), with its Monte-Carlo standard error.

Likelihood: :math:`\log p_\varepsilon(x)` by :func:`~sdesolve_gen.log_likelihood` (dopri5,
rtol = atol = 1e-5, exact divergence, exact prior) against the closed form
``data.log_prob_t(x, eps, sde)`` on a few exact data points.
"""

from __future__ import annotations

import math
import os
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, cast

import torch

from .analytic import GaussianMixture
from .correctors import predictor_corrector
from .integrate import odeint, sdeint, timesteps
from .likelihood import log_likelihood
from .reverse import ProbabilityFlowODE, ReverseSDE
from .samplers import dpm_solver, euler_maruyama, ode
from .sde import VPSDE, LinearSDE

Tensor = torch.Tensor

__all__ = ["demo_mixture", "sliced_w2", "SamplerRow", "LikelihoodRow", "DemoResult", "run_demo", "format_table"]


def demo_mixture() -> GaussianMixture:
    r"""The demo target: 4 anisotropic Gaussians in 2-D with unequal weights.

    Means :math:`(-2.5, -1), (2.5, -1), (0, 2.5), (0, -3)`, weights ``0.3, 0.3, 0.25, 0.15``,
    covariances with standard deviations 0.25-0.6 and correlations up to 0.5.
    """
    means = torch.tensor([[-2.5, -1.0], [2.5, -1.0], [0.0, 2.5], [0.0, -3.0]], dtype=torch.float64)
    covs = torch.tensor(
        [
            [[0.30, 0.12], [0.12, 0.20]],
            [[0.20, -0.10], [-0.10, 0.30]],
            [[0.36, 0.0], [0.0, 0.08]],
            [[0.0625, 0.0], [0.0, 0.0625]],
        ],
        dtype=torch.float64,
    )
    return GaussianMixture(means, covs, torch.tensor([0.3, 0.3, 0.25, 0.15], dtype=torch.float64))


def sliced_w2(x: Tensor, y: Tensor, *, n_proj: int = 64, generator: Optional[torch.Generator] = None) -> float:
    r"""Sliced 2-Wasserstein distance between the empirical measure of ``x`` and that of ``y``.

    .. math:: \mathrm{SW}_2(X, Y) = \Big(\frac1L\sum_{l=1}^L \frac1N\sum_{i=1}^N
              \big(\theta_l^\top x_{(i)} - Q_l\big(\tfrac{i - 1/2}{N}\big)\big)^2\Big)^{1/2},

    with :math:`\theta_l` uniform on the sphere, :math:`x_{(i)}` sorted along :math:`\theta_l` and
    :math:`Q_l` the empirical quantile function of :math:`\theta_l^\top y` (nearest rank). With
    ``len(y) == len(x)`` this is the exact sliced :math:`W_2` between the two samples; a large ``y``
    (e.g. 200 000 exact samples) makes it the distance of ``x`` to the true law plus a small
    quantile error.

    Args:
        x: shape ``(N, D)``; y: shape ``(M, D)`` with ``M >= N``.
        n_proj: number L of directions (>= 1).
        generator: for the directions.

    Returns:
        The distance as a float.
    """
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise TypeError("x and y must be tensors")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or y.shape[0] < x.shape[0]:
        raise ValueError(f"x must be (N, D) and y (M, D) with M >= N, got {tuple(x.shape)} and {tuple(y.shape)}")
    if isinstance(n_proj, bool) or not isinstance(n_proj, int) or n_proj < 1:
        raise ValueError(f"n_proj must be an int >= 1, got {n_proj!r}")
    theta = torch.randn(x.shape[1], n_proj, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return _sw2_to_quantiles(x, theta, _projected_quantiles(y, theta, x.shape[0]))


def _projected_quantiles(y: Tensor, theta: Tensor, n: int) -> Tensor:
    """Nearest-rank quantiles at (i + 1/2)/n of each projection of ``y``: shape ``(n, L)``."""
    m = y.shape[0]
    idx = ((torch.arange(n, dtype=torch.float64) + 0.5) * m / n).floor().long().clamp_(max=m - 1)
    y = y.to(torch.float64)
    # 8 directions at a time: sorting all (M, L) projections at once peaks at ~3 (M, L) buffers
    return torch.cat([torch.sort(y @ theta[:, j: j + 8], dim=0).values[idx] for j in range(0, theta.shape[1], 8)], dim=1)


def _sw2_to_quantiles(x: Tensor, theta: Tensor, q: Tensor) -> float:
    px = torch.sort(x.to(torch.float64) @ theta, dim=0).values
    return float(((px - q) ** 2).mean().sqrt())


@dataclass
class SamplerRow:
    """One row of the sampler table: name, score evaluations, seconds, errors vs truth."""

    sampler: str
    nfe: int
    wall_time: float
    sw2: float
    dlogp: float
    dlogp_se: float
    samples: Tensor = field(repr=False)
    sw2_sd: float = 0.0  # only for the reference row: sd of SW2 over independent exact sets


@dataclass
class LikelihoodRow:
    """PF-ODE vs exact :math:`\\log p_\\varepsilon` on the likelihood points (shape ``(M,)`` each)."""

    x: Tensor
    log_p_exact: Tensor
    log_p_ode: Tensor
    nfe: int
    wall_time: float

    @property
    def abs_err(self) -> Tensor:
        """:math:`|\\log p_{ODE} - \\log p_{exact}|`, shape ``(M,)``."""
        return (self.log_p_ode - self.log_p_exact).abs()


@dataclass
class DemoResult:
    """Everything :func:`run_demo` measured (tables, samples, trajectories, figure path)."""

    rows: List[SamplerRow]
    likelihood: LikelihoodRow
    sde: LinearSDE
    data: GaussianMixture
    reference: Tensor  # N exact samples of p_eps, independent of everything else
    traj_ts: Tensor
    sde_paths: Tensor
    ode_paths: Tensor
    out: Optional[str]
    wall_time: float
    settings: Dict[str, Any]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def run_demo(
    out: Optional[str] = "demo.png",
    *,
    seed: int = 0,
    n: int = 10_000,
    em_steps: int = 500,
    pc_steps: int = 250,
    dpm_steps: int = 10,
    n_likelihood: int = 8,
    n_paths: int = 12,
    n_floor: int = 8,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> DemoResult:
    r"""Run the demo (see the module docstring) and write its figure to ``out``.

    Samplers (all from the same exact-prior draw :math:`x_T`, shape ``(n, 2)``):

    * ``euler_maruyama``: reverse-SDE Euler-Maruyama, ``em_steps`` uniform steps;
    * ``predictor_corrector``: reverse-diffusion predictor + 1 Langevin corrector (snr 0.16),
      ``pc_steps`` uniform steps (2 evaluations a step);
    * ``ode``: adaptive PF-ODE (dopri5), ``rtol``/``atol``;
    * ``dpm_solver3``: singlestep DPM-Solver-3, ``dpm_steps`` steps uniform in log-SNR.

    Args:
        out: PNG path for the figure, or ``None`` for no figure.
        seed: seeds one ``torch.Generator`` used for everything.
        n: samples per sampler; em_steps, pc_steps, dpm_steps: grid sizes; n_likelihood: data points
            for the likelihood check; n_paths: trajectories drawn; n_floor: independent exact sets
            of size ``n`` whose SW2 mean and sd form the reference row. All positive ints.
        rtol, atol: PF-ODE tolerances (sampling and likelihood).
        progress: tqdm bars inside the samplers.
        log: callable for progress lines (e.g. ``print``), or ``None``.

    Returns:
        A :class:`DemoResult`.
    """
    for name, v in (("n", n), ("em_steps", em_steps), ("pc_steps", pc_steps), ("dpm_steps", dpm_steps),
                    ("n_likelihood", n_likelihood), ("n_paths", n_paths), ("n_floor", n_floor)):
        _positive_int(name, v)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if out is not None:
        out = os.fspath(out)
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise ValueError(f"out: directory {parent!r} does not exist")
    say = log or (lambda s: None)
    start = _time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    data = demo_mixture()
    score = data.score_fn(sde)
    p_eps = data.marginal(sde.eps, sde)
    x_T = data.prior(sde).sample(n, generator=g, dtype=torch.float64)
    reference = p_eps.sample(n, generator=g, dtype=torch.float64)
    big = p_eps.sample(200_000, generator=g, dtype=torch.float64)
    entropy_term = float(p_eps.log_prob(big).mean())
    theta = torch.randn(2, 64, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    quantiles = _projected_quantiles(big, theta, n)

    def errors(x: Tensor) -> tuple:
        lp = p_eps.log_prob(x)
        sw = _sw2_to_quantiles(x, theta, quantiles)
        return sw, float(lp.mean()) - entropy_term, float(lp.std() / math.sqrt(lp.numel()))

    runs = [
        ("euler_maruyama", lambda: euler_maruyama(sde, score, x_T, timesteps(sde, em_steps), generator=g, progress=progress)),
        ("predictor_corrector", lambda: predictor_corrector(sde, score, x_T, timesteps(sde, pc_steps), generator=g,
                                                        progress=progress, snr=0.16)),
        ("ode", lambda: ode(sde, score, x_T, timesteps(sde, 1), rtol=rtol, atol=atol)),
        ("dpm_solver3", lambda: dpm_solver(sde, score, x_T, timesteps(sde, dpm_steps, kind="logsnr"), order=3,
                                            progress=progress)),
    ]
    rows = []
    for name, fn in runs:
        say(f"sampling: {name}")
        sol = fn()
        sw, dl, se = errors(sol.x)
        rows.append(SamplerRow(name, sol.nfe, sol.wall_time, sw, dl, se, sol.x))
    sw, dl, se = errors(reference)
    floor = torch.tensor([sw] + [errors(p_eps.sample(n, generator=g, dtype=torch.float64))[0] for _ in range(n_floor - 1)])
    rows.append(SamplerRow("exact (reference)", 0, 0.0, float(floor.mean()), dl, se, reference, float(floor.std())))

    say("likelihood: PF-ODE vs exact")
    x_l = data.sample(n_likelihood, generator=g, dtype=torch.float64)
    res = log_likelihood(sde, score, x_l, rtol=rtol, atol=atol, prior=data.prior(sde))
    lik = LikelihoodRow(x_l, data.log_prob_t(x_l, sde.eps, sde), res.log_prob, res.nfe, res.wall_time)

    say("trajectories: reverse SDE and PF-ODE")
    traj_ts = timesteps(sde, 200)
    x_p = x_T[:n_paths]
    sde_paths = cast(Tensor, sdeint(ReverseSDE(sde, score), x_p, traj_ts, method="euler", generator=g).ys)
    ode_paths = cast(Tensor, odeint(ProbabilityFlowODE(sde, score), x_p, traj_ts, method="dopri5", rtol=rtol, atol=atol).ys)

    result = DemoResult(
        rows=rows, likelihood=lik, sde=sde, data=data, reference=reference, traj_ts=traj_ts,
        sde_paths=sde_paths, ode_paths=ode_paths, out=out, wall_time=0.0,
        settings=dict(seed=seed, n=n, em_steps=em_steps, pc_steps=pc_steps, dpm_steps=dpm_steps,
                      n_likelihood=n_likelihood, n_floor=n_floor, rtol=rtol, atol=atol),
    )
    if out is not None:
        say(f"figure: {out}")
        plot_demo(result, out)
    result.wall_time = _time.perf_counter() - start
    return result


def plot_demo(result: DemoResult, out: str) -> None:
    """Write the demo figure (2 x 3 panels) to ``out`` as a PNG.

    Panels: four sampler scatters over the exact density :math:`p_\\varepsilon`, a fan of
    reverse-SDE vs PF-ODE trajectories (first coordinate against t), and PF-ODE vs exact
    :math:`\\log p_\\varepsilon` on the likelihood points.
    """
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    from . import plotting

    plt = plotting._pyplot()
    p_eps = result.data.marginal(result.sde.eps, result.sde)
    ref = result.reference
    lo, hi = ref.min(0).values - 1.0, ref.max(0).values + 1.0
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    for ax, row, color in zip(axes.ravel()[:4], result.rows[:4], ("C0", "C2", "C1", "C3")):
        plotting.scatter_vs_density(
            ax, row.samples, p_eps, extent=extent, color=color,
            title=f"{row.sampler}: NFE {row.nfe}, SW2 {row.sw2:.3f}",
        )
    plotting.trajectory_fan(axes[1, 1], result.sde_paths, result.ode_paths, ts=result.traj_ts,
                            title="reverse SDE (EM) vs PF-ODE paths, x[0]")
    lik = result.likelihood
    ax = axes[1, 2]
    e, o = lik.log_p_exact.numpy(), lik.log_p_ode.numpy()
    ax.scatter(e, o, color="C1", zorder=3, label="PF-ODE (dopri5)")
    span = [min(e.min(), o.min()) - 0.3, max(e.max(), o.max()) + 0.3]
    ax.plot(span, span, color="k", lw=0.8, label="y = x (exact)")
    ax.set_xlabel("exact log p_eps(x)")
    ax.set_ylabel("PF-ODE log p_eps(x)")
    ax.set_title(f"likelihood: max |err| {float(lik.abs_err.max()):.1e} nats, NFE {lik.nfe}")
    ax.legend(loc="best", fontsize="small")
    fig.suptitle("sdesolve-gen demo: 2-D Gaussian mixture, VP SDE, exact score, exact prior; contours = exact p_eps")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def format_table(result: DemoResult) -> str:
    """The printed tables: samplers (NFE, wall time, SW2, Delta log p) and likelihood errors."""
    lines = [
        f"{'sampler':<20}{'NFE':>6}{'wall s':>9}{'SW2 vs exact':>14}{'dlogp +- se':>20}",
    ]
    for r in result.rows:
        sw = f"{r.sw2:.4f}" if not r.sw2_sd else f"{r.sw2:.3f}+-{r.sw2_sd:.3f}"
        lines.append(f"{r.sampler:<20}{r.nfe:>6}{r.wall_time:>9.2f}{sw:>14}{r.dlogp:>+12.4f} +- {r.dlogp_se:.4f}")
    lik = result.likelihood
    err = lik.abs_err
    lines += [
        "",
        f"likelihood (PF-ODE dopri5 rtol={result.settings['rtol']:g}, exact divergence, exact prior) on "
        f"{err.numel()} points: NFE {lik.nfe}, wall {lik.wall_time:.2f} s",
        f"  |log p_ODE - log p_exact|: mean {float(err.mean()):.2e}, max {float(err.max()):.2e} nats"
        f"  (log p_exact in [{float(lik.log_p_exact.min()):.2f}, {float(lik.log_p_exact.max()):.2f}])",
        "",
        "SW2: sliced W2 to the quantiles of 200k exact samples; 'exact (reference)' row: mean +- sd over",
        f"  {result.settings['n_floor']} independent exact sets of N={result.settings['n']} (the Monte-Carlo floor);",
        "dlogp: mean exact log p_eps of the samples minus its exact expectation (0 for a perfect sampler).",
    ]
    if result.out:
        lines.append(f"figure: {result.out}   total wall time {result.wall_time:.1f} s")
    return "\n".join(lines)

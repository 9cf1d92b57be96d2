r"""The ``sdesolve-gen demo``: four samplers and the PF-ODE likelihood against exact answers.

The target is an embedded 2-D Gaussian mixture (:func:`demo_mixture`) under a VP SDE
(:math:`\beta_{\min}=0.1, \beta_{\max}=20`), so the score :math:`\nabla\log p_t` is exact and every
error is the sampler's own (discretisation + Monte-Carlo), never a network's. Every sampler starts
from the *exact prior* :math:`p_T` (``data.prior(sde)``), which removes the prior-mismatch bias, and
stops at :math:`t = \varepsilon = 10^{-3}`; the reference is the exact marginal
:math:`p_\varepsilon` (``data.marginal(eps, sde)``).

Errors reported per sampler (``N`` samples each):

* sliced :math:`W_2` (:func:`sliced_w2`, 64 fixed random directions) between the samples and
  one fixed set of ``N`` independent exact samples of :math:`p_\varepsilon` (the two-sample
  statistic). The first row, ``exact sampler (MC floor)``, is *the same statistic* for
  ``n_floor`` further independent sets of ``N`` exact samples (mean and sd): what a perfect
  sampler scores at this ``N``. A sampler within about 2 sd of that floor cannot be told apart
  from exact sampling by SW2 at this ``N``; a value *below* the floor mean is not "better than
  exact", only within the Monte-Carlo noise;
* trajectory error (deterministic samplers only): :func:`~sdesolve_gen.samplers.trajectory_rmse`
  of the samples against dopri5 at rtol = atol = 1e-9 from the same :math:`x_T` (first
  ``n_traj`` samples), in units of :math:`x/\alpha(\varepsilon)`: the discretisation error alone,
  free of Monte-Carlo noise, so it separates samplers that SW2 cannot;
* :math:`\Delta\log p = \tfrac1N\sum_i \log p_\varepsilon(x_i) - \mathbb E_{p_\varepsilon}[\log p_\varepsilon]`
  (the second term from 200 000 exact samples), with its Monte-Carlo standard error.

Likelihood: :math:`\log p_\varepsilon(x)` by :func:`~sdesolve_gen.log_likelihood` (its default
dopri8, rtol = atol = 1e-5, exact divergence, exact prior) against the closed form
``data.log_prob_t(x, eps, sde)`` on a few exact data points.
"""

from __future__ import annotations

import math
import os
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, cast

import torch

from .analytic import GaussianMixture
from .correctors import predictor_corrector
from .integrate import odeint, sdeint, timesteps
from .likelihood import log_likelihood
from .reverse import ProbabilityFlowODE, ReverseSDE
from .samplers import SAMPLERS, dpm_solver, euler_maruyama, ode, trajectory_rmse
from .sde import VPSDE, LinearSDE

Tensor = torch.Tensor

__all__ = ["demo_mixture", "sliced_w2", "SampleErrors", "SamplerRow", "LikelihoodRow", "ErrorCurve", "DemoResult",
           "run_demo", "format_table", "plot_demo", "CURVE_SAMPLERS", "CURVE_NFES", "FLOOR_NAME"]

#: Deterministic registered samplers drawn on the trajectory-error-vs-NFE panel.
CURVE_SAMPLERS = ("dpm_solver_pp_2m", "unipc_bh2_3", "deis3", "dpm_solver3", "heun")
#: Score-evaluation budgets of that panel (each sampler takes the most steps that fit).
CURVE_NFES = (6, 10, 15, 20, 30, 50)
#: Name of the Monte-Carlo-floor row of the sampler table.
FLOOR_NAME = "exact sampler (MC floor)"


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


class SampleErrors(NamedTuple):
    """Errors of one set of samples against the truth (see the module docstring)."""

    sw2: float  #: two-sample sliced W2 to the fixed exact reference set
    dlogp: float  #: mean exact log p_eps of the samples minus its exact expectation
    dlogp_se: float  #: Monte-Carlo standard error of ``dlogp``


@dataclass
class SamplerRow:
    """One row of the sampler table: name, score evaluations, seconds, errors vs truth.

    For the floor row (:data:`FLOOR_NAME`) ``sw2`` is the mean and ``sw2_sd`` the sd over the
    ``n_floor`` exact sets; ``traj_err`` is ``None`` for stochastic samplers and the floor.
    """

    sampler: str
    nfe: int
    wall_time: float
    sw2: float
    dlogp: float
    dlogp_se: float
    samples: Tensor = field(repr=False)
    sw2_sd: float = 0.0  # only for the floor row: sd of SW2 over independent exact sets
    traj_err: Optional[float] = None  # deterministic samplers: trajectory_rmse vs dopri5 1e-9
    stochastic: bool = False


@dataclass
class ErrorCurve:
    """Trajectory error against NFE for one registered sampler (the figure's last panel)."""

    sampler: str
    nfe: List[int]
    traj_err: List[float]


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

    rows: List[SamplerRow]  # rows[0] is the Monte-Carlo floor, then the samplers
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
    curves: List[ErrorCurve] = field(default_factory=list)

    @property
    def floor(self) -> SamplerRow:
        """The Monte-Carlo floor row (exact samples scored like a sampler)."""
        return self.rows[0]

    @property
    def samplers(self) -> List[SamplerRow]:
        """The sampler rows (without the floor)."""
        return self.rows[1:]


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
    n_traj: int = 2000,
    curve_samplers: Sequence[str] = CURVE_SAMPLERS,
    curve_nfes: Sequence[int] = CURVE_NFES,
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

    Then the trajectory error of each of ``curve_samplers`` (registered names in
    :data:`~sdesolve_gen.samplers.SAMPLERS`, deterministic) at each budget of ``curve_nfes``,
    on the first ``n_traj`` starting points, each on its registered default grid.

    Args:
        out: PNG path for the figure, or ``None`` for no figure.
        seed: seeds one ``torch.Generator`` used for everything.
        n: samples per sampler; em_steps, pc_steps, dpm_steps: grid sizes; n_likelihood: data points
            for the likelihood check; n_paths: trajectories drawn; n_floor: independent exact sets
            of size ``n`` whose SW2 mean and sd form the floor row; n_traj: starting points of the
            trajectory errors (capped at ``n``). All positive ints.
        curve_samplers, curve_nfes: the error-vs-NFE panel (may be empty).
        rtol, atol: PF-ODE tolerances (sampling and likelihood).
        progress: tqdm bars inside the samplers.
        log: callable for progress lines (e.g. ``print``), or ``None``.

    Returns:
        A :class:`DemoResult`.
    """
    for name, v in (("n", n), ("em_steps", em_steps), ("pc_steps", pc_steps), ("dpm_steps", dpm_steps),
                    ("n_likelihood", n_likelihood), ("n_paths", n_paths), ("n_floor", n_floor), ("n_traj", n_traj)):
        _positive_int(name, v)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    for name in curve_samplers:
        if name not in SAMPLERS:
            raise ValueError(f"curve_samplers: unknown sampler {name!r} (see sdesolve_gen.samplers.SAMPLERS)")
        if SAMPLERS[name].stochastic or SAMPLERS[name].adaptive:
            raise ValueError(f"curve_samplers: {name!r} is stochastic or adaptive; the panel needs fixed-grid ODE samplers")
    for b in curve_nfes:
        _positive_int("curve_nfes entries", b)
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
    quantiles = _projected_quantiles(reference, theta, n)  # M = N: the exact two-sample SW2

    def errors(x: Tensor) -> SampleErrors:
        lp = p_eps.log_prob(x)
        sw = _sw2_to_quantiles(x, theta, quantiles)
        return SampleErrors(sw, float(lp.mean()) - entropy_term, float(lp.std() / math.sqrt(lp.numel())))

    # the floor: exact samples scored exactly like a sampler's
    floor_sets = [p_eps.sample(n, generator=g, dtype=torch.float64) for _ in range(n_floor)]
    floor_err = [errors(x) for x in floor_sets]
    sw_floor = torch.tensor([e.sw2 for e in floor_err], dtype=torch.float64)
    rows = [SamplerRow(FLOOR_NAME, 0, 0.0, float(sw_floor.mean()), floor_err[0].dlogp, floor_err[0].dlogp_se,
                       floor_sets[0], float(sw_floor.std()) if n_floor > 1 else 0.0)]

    m = min(n_traj, n)
    alpha_eps = float(sde.alpha(sde.eps))
    say(f"tight reference: PF-ODE dopri5 rtol=atol=1e-9 from the first {m} starting points")
    tight = ode(sde, score, x_T[:m], timesteps(sde, 1), rtol=1e-9, atol=1e-9).x

    runs = [
        ("euler_maruyama", True,
         lambda: euler_maruyama(sde, score, x_T, timesteps(sde, em_steps), generator=g, progress=progress)),
        ("predictor_corrector", True,
         lambda: predictor_corrector(sde, score, x_T, timesteps(sde, pc_steps), generator=g, progress=progress, snr=0.16)),
        ("ode", False, lambda: ode(sde, score, x_T, timesteps(sde, 1), rtol=rtol, atol=atol)),
        ("dpm_solver3", False, lambda: dpm_solver(sde, score, x_T, timesteps(sde, dpm_steps, kind="logsnr"), order=3,
                                                   progress=progress)),
    ]
    for name, stochastic, fn in runs:
        say(f"sampling: {name}")
        sol = fn()
        e = errors(sol.x)
        traj = None if stochastic else trajectory_rmse(sol.x[:m], tight, alpha_eps)
        rows.append(SamplerRow(name, sol.nfe, sol.wall_time, e.sw2, e.dlogp, e.dlogp_se, sol.x,
                               traj_err=traj, stochastic=stochastic))

    curves: List[ErrorCurve] = []
    for name in curve_samplers:
        say(f"trajectory error vs NFE: {name}")
        spec = SAMPLERS[name]
        curve = ErrorCurve(name, [], [])
        for budget in curve_nfes:
            try:
                steps = spec.steps_for(budget)
            except ValueError:  # one step costs more than this budget
                continue
            sol = spec(sde, score, x_T[:m], spec.timesteps(sde, steps))
            curve.nfe.append(int(sol.nfe))
            curve.traj_err.append(trajectory_rmse(sol.x, tight, alpha_eps))
        curves.append(curve)

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
                      n_likelihood=n_likelihood, n_floor=n_floor, n_traj=m, rtol=rtol, atol=atol),
        curves=curves,
    )
    if out is not None:
        say(f"figure: {out}")
        plot_demo(result, out)
    result.wall_time = _time.perf_counter() - start
    return result


def plot_demo(result: DemoResult, out: str) -> None:
    """Write the demo figure (2 x 4 panels) to ``out`` as a PNG.

    Top row: the four samplers' samples over the exact density :math:`p_\\varepsilon`, titled
    with NFE, SW2 and the floor. Bottom row: reverse-SDE vs PF-ODE trajectories (first coordinate
    against t); PF-ODE vs exact :math:`\\log p_\\varepsilon` on the likelihood points; and
    (two panels wide) the trajectory error against NFE of :data:`CURVE_SAMPLERS`, log-log.
    Every panel has a title and labelled axes.
    """
    import matplotlib
    import matplotlib.ticker

    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    from . import plotting

    plt = plotting._pyplot()
    p_eps = result.data.marginal(result.sde.eps, result.sde)
    ref = result.reference
    lo, hi = ref.min(0).values - 1.0, ref.max(0).values + 1.0
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    fl = result.floor
    fig = plt.figure(figsize=(20, 10))
    grid = fig.add_gridspec(2, 4)
    for k, (row, color) in enumerate(zip(result.samplers[:4], ("C0", "C2", "C1", "C3"))):
        ax = fig.add_subplot(grid[0, k])
        traj = f", traj err {row.traj_err:.1e}" if row.traj_err is not None else ""
        plotting.scatter_vs_density(
            ax, row.samples, p_eps, extent=extent, color=color,
            title=f"{row.sampler}: NFE {row.nfe}\nSW2 {row.sw2:.3f} (floor {fl.sw2:.3f} +- {fl.sw2_sd:.3f}){traj}",
        )
    plotting.trajectory_fan(fig.add_subplot(grid[1, 0]), result.sde_paths, result.ode_paths, ts=result.traj_ts,
                            title="12 paths from the same x_T: reverse SDE (EM) vs PF-ODE")
    lik = result.likelihood
    ax = fig.add_subplot(grid[1, 1])
    e, o = lik.log_p_exact.numpy(), lik.log_p_ode.numpy()
    ax.scatter(e, o, color="C1", zorder=3, label="PF-ODE (dopri5)")
    span = [min(e.min(), o.min()) - 0.3, max(e.max(), o.max()) + 0.3]
    ax.plot(span, span, color="k", lw=0.8, label="y = x (exact)")
    ax.set_xlabel("exact log p_eps(x) [nats]")
    ax.set_ylabel("PF-ODE log p_eps(x) [nats]")
    ax.set_title(f"likelihood on {e.size} data points: max |err| {float(lik.abs_err.max()):.1e} nats, NFE {lik.nfe}")
    ax.legend(loc="best", fontsize="small")
    ax = fig.add_subplot(grid[1, 2:])
    for k, c in enumerate(result.curves):
        if c.nfe:
            ax.loglog(c.nfe, c.traj_err, marker="o", color=f"C{k}", label=c.sampler)
    ax.set_xlabel("NFE (score evaluations)")
    ax.set_ylabel("trajectory error: mean RMS (x - x_ref) / alpha(eps)")
    ax.set_title(f"deterministic samplers vs dopri5 (rtol=atol=1e-9) from the same x_T "
                 f"({result.settings['n_traj']} points); lower is better")
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([b for b in (5, 10, 20, 50, 100) if any(c.nfe and min(c.nfe) <= b <= max(c.nfe) for c in result.curves)])
    if any(c.nfe for c in result.curves):
        ax.legend(loc="best", fontsize="small")
    fig.suptitle("sdesolve-gen demo: 2-D Gaussian mixture, VP SDE, exact score, exact prior; grey contours = exact "
                 "p_eps. SW2 at or below the floor = indistinguishable from exact sampling at this N")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def format_table(result: DemoResult) -> str:
    """The printed tables: samplers (NFE, wall time, SW2 against the floor, trajectory error,
    Delta log p) and likelihood errors, with one line on how to read them."""
    fl = result.floor
    n, k = result.settings["n"], result.settings["n_floor"]
    lines = [
        f"{'sampler':<25}{'NFE':>5}{'wall s':>8}{'SW2':>15}{'traj err':>10}{'dlogp +- se':>20}",
    ]
    for r in result.rows:
        sw = f"{r.sw2:.3f}+-{r.sw2_sd:.3f}" if r is fl else f"{r.sw2:.4f}"
        tr = "-" if r.traj_err is None else f"{r.traj_err:.1e}"
        nfe = "-" if r is fl else str(r.nfe)
        wall = "-" if r is fl else f"{r.wall_time:.2f}"
        lines.append(f"{r.sampler:<25}{nfe:>5}{wall:>8}{sw:>15}{tr:>10}{r.dlogp:>+12.4f} +- {r.dlogp_se:.4f}")
    lik = result.likelihood
    err = lik.abs_err
    lines += [
        "",
        f"How to read: the first row is what PERFECT sampling scores (N={n} fresh exact samples, mean +- sd",
        f"  over {k} sets, scored exactly like the samplers). SW2 within ~2 sd of it = indistinguishable from",
        "  exact at this N (below it is noise, not 'better than exact'); traj err and dlogp separate samplers.",
        "",
        "SW2: sliced W2 (64 directions) between the samples and one fixed set of N independent exact samples.",
        "traj err: mean per-sample RMS of (x - x_ref)/alpha(eps), x_ref = dopri5 rtol=atol=1e-9 from the same",
        f"  x_T (first {result.settings['n_traj']} points); deterministic samplers only (0 for a perfect solver).",
        "dlogp: mean exact log p_eps of the samples minus its exact expectation (0 for a perfect sampler).",
        "",
        f"likelihood (PF-ODE dopri8 rtol={result.settings['rtol']:g}, exact divergence, exact prior) on "
        f"{err.numel()} points: NFE {lik.nfe}, wall {lik.wall_time:.2f} s",
        f"  |log p_ODE - log p_exact|: mean {float(err.mean()):.2e}, max {float(err.max()):.2e} nats"
        f"  (log p_exact in [{float(lik.log_p_exact.min()):.2f}, {float(lik.log_p_exact.max()):.2f}])",
    ]
    if result.curves:
        lines += ["", "trajectory error vs NFE (figure, bottom right):"]
        for c in result.curves:
            lines.append(f"  {c.sampler:<22}" + "  ".join(f"{b:>3}: {e:.1e}" for b, e in zip(c.nfe, c.traj_err)))
    if result.out:
        lines.append(f"figure: {result.out}   total wall time {result.wall_time:.1f} s")
    return "\n".join(lines)

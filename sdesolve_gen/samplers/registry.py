r"""The sampler registry: one record of facts per sampler, read by the CLI, benchmarks, examples and tests.

Each :class:`SamplerSpec` states what a sampler *is*: its one name, whether it is stochastic,
its declared convergence order (ODE samplers: order of the error of :math:`x(\varepsilon)` in the
step size; SDE samplers: weak order, and strong order where it is known), how many score
evaluations it makes per step and over the whole solve, its default time grid, and whether it
supports ``denoise``. Everything that used to be worked out by hand (``nfe - 1``, ``nfe // 2``,
``(nfe - 1) // 3``) is :meth:`SamplerSpec.nfe` / :meth:`SamplerSpec.steps_for` instead, and the
order tests run over :data:`SAMPLERS`, so a sampler registered here is tested against its
declared order without further code.

Adding a sampler: write the function with the common signature (see
:mod:`sdesolve_gen.samplers._run`) and add one :class:`SamplerSpec` line to :data:`SAMPLERS`.

The registry is an immutable mapping built once in this module (no decorators, no global
mutation); build your own :class:`Registry` to extend it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from ..integrate import timesteps
from ..sde import LinearSDE
from ..solution import Solution
from .adaptive_exp import dpm_solver_adaptive, dpm_solver_adaptive_multistep
from .langevin import annealed_langevin, predictor_corrector
from .multistep import deis, dpm_solver_pp_2s, dpm_solver_pp_3m, ipndm, unipc
from .ode import dpm_solver, dpm_solver_pp_2m, heun, ode
from .sde import adaptive_sde, ancestral, euler_maruyama, reverse_diffusion
from .stochastic import dpm_solver_pp_2m_sde, edm_sde, sa_solver

Tensor = torch.Tensor

__all__ = ["SamplerSpec", "Registry", "SAMPLERS", "get_sampler"]


@dataclass(frozen=True)
class SamplerSpec:
    """The facts about one sampler.

    Attributes:
        name: the one spelling used everywhere (CLI, benchmarks, docs, tests).
        fn: the sampler function (common signature, returns a :class:`~sdesolve_gen.Solution`).
        stochastic: draws noise at every step (SDE sampler) or not (ODE sampler).
        order: declared order: ODE samplers the global order of :math:`x(\\varepsilon)` in the step
            size; SDE samplers the weak order. ``None`` where no order applies (Langevin chains).
        strong_order: SDE samplers: strong order on additive noise where known, else ``None``.
        nfe_per_step: score evaluations per grid step; ``None`` for adaptive samplers.
        nfe_extra: evaluations added over the whole solve (may be negative: Heun's final Euler step).
        grid: default grid kind for :func:`~sdesolve_gen.timesteps` (``"uniform"``, ``"logsnr"``, ``"edm"``).
        adaptive: chooses its own steps (only the ends of ``ts`` are used).
        denoise: supports ``denoise=True`` (a final Tweedie step, one more evaluation).
        kwargs: keyword arguments the registered name fixes (e.g. ``order=3``); the counts above
            hold for these and the function's other defaults.
        summary: one line for tables and ``--help``.
    """

    name: str
    fn: Callable[..., Solution]
    stochastic: bool
    order: Optional[float]
    nfe_per_step: Optional[int]
    grid: str = "uniform"
    strong_order: Optional[float] = None
    nfe_extra: int = 0
    adaptive: bool = False
    denoise: bool = True
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def nfe(self, n_steps: int, *, denoise: bool = False) -> int:
        """Score evaluations of a solve with ``n_steps`` grid steps (``denoise`` adds one)."""
        if self.nfe_per_step is None:
            raise ValueError(f"sampler {self.name!r} is adaptive: its NFE is not known before the solve")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
        return self.nfe_per_step * n_steps + self.nfe_extra + int(bool(denoise))

    def steps_for(self, nfe: int) -> int:
        """The largest number of grid steps whose solve costs at most ``nfe`` evaluations.

        Raises:
            ValueError: if the sampler is adaptive or even one step costs more than ``nfe``.
        """
        if self.nfe_per_step is None:
            raise ValueError(f"sampler {self.name!r} is adaptive: choose its tolerance, not its NFE")
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise TypeError(f"nfe must be an int, got {type(nfe).__name__}")
        n = (nfe - self.nfe_extra) // self.nfe_per_step
        if n < 1:
            raise ValueError(f"nfe={nfe} is below one step of {self.name!r} ({self.nfe(1)} evaluations)")
        return n

    def timesteps(self, sde: LinearSDE, n_steps: int, **kwargs: Any) -> Tensor:
        """The sampler's default grid of ``n_steps`` steps (adaptive samplers: the two end points)."""
        return timesteps(sde, 1 if self.adaptive else n_steps, kind=self.grid, **kwargs)

    def __call__(self, sde: LinearSDE, score_fn: Any, x_T: Tensor, ts: Tensor, **kwargs: Any) -> Solution:
        """Run the sampler with the registered keyword arguments (explicit ones win)."""
        if kwargs.get("denoise") and not self.denoise:
            raise ValueError(f"sampler {self.name!r} does not support denoise=True")
        sol = self.fn(sde, score_fn, x_T, ts, **{**self.kwargs, **kwargs})
        sol.method = self.name
        return sol


class Registry(Mapping[str, SamplerSpec]):
    """An immutable name -> :class:`SamplerSpec` mapping with a helpful error for unknown names."""

    def __init__(self, specs: Sequence[SamplerSpec]) -> None:
        table = {}
        for spec in specs:
            if spec.name in table:
                raise ValueError(f"duplicate sampler name {spec.name!r}")
            table[spec.name] = spec
        self._table = MappingProxyType(table)

    def __getitem__(self, name: str) -> SamplerSpec:
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(f"unknown sampler {name!r}; known: {', '.join(self._table)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def select(self, *, stochastic: Optional[bool] = None, adaptive: Optional[bool] = None) -> "list[SamplerSpec]":
        """The specs with the given properties, in registration order."""
        return [
            s for s in self._table.values()
            if (stochastic is None or s.stochastic == stochastic) and (adaptive is None or s.adaptive == adaptive)
        ]


#: Every registered sampler.
SAMPLERS = Registry([
    SamplerSpec("euler_maruyama", euler_maruyama, stochastic=True, order=1, strong_order=1, nfe_per_step=1,
                summary="Euler-Maruyama on the reverse-time SDE"),
    SamplerSpec("reverse_diffusion", reverse_diffusion, stochastic=True, order=1, nfe_per_step=1,
                summary="reverse-diffusion predictor (Song et al. 2021)"),
    SamplerSpec("ancestral", ancestral, stochastic=True, order=1, nfe_per_step=1,
                summary="ancestral sampling: DDPM (VP) / SMLD (VE)"),
    SamplerSpec("predictor_corrector", predictor_corrector, stochastic=True, order=1, nfe_per_step=2,
                summary="reverse-diffusion predictor + one Langevin corrector step"),
    SamplerSpec("annealed_langevin", annealed_langevin, stochastic=True, order=None, nfe_per_step=10, nfe_extra=10,
                summary="annealed Langevin dynamics (NCSN), 10 steps per noise level"),
    SamplerSpec("adaptive_sde", adaptive_sde, stochastic=True, order=1, nfe_per_step=None, adaptive=True,
                summary="adaptive EM / improved-Euler pair (Jolicoeur-Martineau et al. 2021)"),
    SamplerSpec("ode", ode, stochastic=False, order=5, nfe_per_step=None, adaptive=True,
                summary="probability-flow ODE with torchdiffeq's dopri5"),
    SamplerSpec("heun", heun, stochastic=False, order=2, nfe_per_step=2, nfe_extra=-1, grid="edm",
                summary="Heun in EDM variables, final step Euler (Karras et al. 2022)"),
    SamplerSpec("dpm_solver1", dpm_solver, stochastic=False, order=1, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 1}), summary="DPM-Solver-1 (= DDIM)"),
    SamplerSpec("dpm_solver2", dpm_solver, stochastic=False, order=2, nfe_per_step=2, grid="logsnr",
                kwargs=MappingProxyType({"order": 2}), summary="singlestep DPM-Solver-2"),
    SamplerSpec("dpm_solver3", dpm_solver, stochastic=False, order=3, nfe_per_step=3, grid="logsnr",
                kwargs=MappingProxyType({"order": 3}), summary="singlestep DPM-Solver-3"),
    SamplerSpec("dpm_solver_pp_2m", dpm_solver_pp_2m, stochastic=False, order=2, nfe_per_step=1, grid="logsnr",
                summary="multistep DPM-Solver++(2M)"),
    # Declared orders are the global orders measured with the default warm-up (test_sampler_family):
    # The published DPM-Solver++(3M) weights its second difference by half the exact quadratic
    # integral's weight: measured global order 2; with exact_quadratic=True it is order 3.
    SamplerSpec("dpm_solver_pp_3m", dpm_solver_pp_3m, stochastic=False, order=2, nfe_per_step=1, grid="logsnr",
                summary="multistep DPM-Solver++(3M) as published/diffusers (measured global order 2)"),
    SamplerSpec("dpm_solver_pp_3m_exact", dpm_solver_pp_3m, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"exact_quadratic": True}), summary="DPM-Solver++(3M), quadratic interpolant integrated exactly"),
    SamplerSpec("dpm_solver_pp_2s", dpm_solver_pp_2s, stochastic=False, order=2, nfe_per_step=2, grid="logsnr",
                summary="singlestep DPM-Solver++(2S), midpoint in log-SNR"),
    SamplerSpec("unipc_bh1_1", unipc, stochastic=False, order=2, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 1, "variant": "bh1"}), summary="UniPC-1, B(h)=h (DDIM + UniC)"),
    SamplerSpec("unipc_bh1_2", unipc, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 2, "variant": "bh1"}), summary="UniPC-2, B(h)=h"),
    SamplerSpec("unipc_bh1_3", unipc, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 3, "variant": "bh1"}), summary="UniPC-3, B(h)=h"),
    SamplerSpec("unipc_bh2_1", unipc, stochastic=False, order=2, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 1, "variant": "bh2"}), summary="UniPC-1, B(h)=e^h-1"),
    SamplerSpec("unipc_bh2_2", unipc, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 2, "variant": "bh2"}), summary="UniPC-2, B(h)=e^h-1"),
    SamplerSpec("unipc_bh2_3", unipc, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 3, "variant": "bh2"}), summary="UniPC-3, B(h)=e^h-1"),
    SamplerSpec("dpm_solver_pp_3m_unic", unipc, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 3, "predictor": "dpmpp"}), summary="DPM-Solver++(3M) predictor + UniC-3 corrector"),
    SamplerSpec("deis2", deis, stochastic=False, order=2, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 2}), summary="DEIS-tAB2 (Lagrange eps in log-SNR)"),
    SamplerSpec("deis3", deis, stochastic=False, order=3, nfe_per_step=1, grid="logsnr",
                kwargs=MappingProxyType({"order": 3}), summary="DEIS-tAB3 (Lagrange eps in log-SNR)"),
    # iPNDM's fixed Adams-Bashforth weights assume equal rho-steps: order 2 on smoothly varying grids
    SamplerSpec("ipndm", ipndm, stochastic=False, order=2, nfe_per_step=1, grid="edm",
                kwargs=MappingProxyType({"order": 4}), summary="iPNDM-4 (DDIM in sigma/alpha, fixed AB4 weights on eps)"),
    SamplerSpec("dpm_solver_adaptive", dpm_solver_adaptive, stochastic=False, order=3, nfe_per_step=None, adaptive=True,
                grid="logsnr", summary="adaptive DPM-Solver++-23 in log-SNR, per-sample error control"),
    SamplerSpec("dpm_solver_adaptive_ms", dpm_solver_adaptive_multistep, stochastic=False, order=3, nfe_per_step=None,
                adaptive=True, grid="logsnr",
                summary="adaptive exponential multistep PECE in log-SNR (2M predictor, quadratic corrector), 1 NFE per step"),
    # Stochastic few-step samplers: declared weak order 1 (what is guaranteed; not measured here).
    SamplerSpec("dpm_solver_pp_2m_sde", dpm_solver_pp_2m_sde, stochastic=True, order=1, nfe_per_step=1, grid="logsnr",
                summary="DPM-Solver++(2M) SDE (midpoint, eta=1)"),
    SamplerSpec("edm_sde", edm_sde, stochastic=True, order=1, nfe_per_step=2, nfe_extra=-1, grid="edm",
                summary="EDM stochastic sampler (S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1)"),
    SamplerSpec("sa_solver", sa_solver, stochastic=True, order=1, nfe_per_step=1, grid="logsnr",
                summary="SA-Solver stochastic Adams predictor (order 2, tau=1)"),
])


def get_sampler(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` registered as ``name`` (``KeyError`` listing the known names otherwise)."""
    return SAMPLERS[name]

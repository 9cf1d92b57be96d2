r"""Samplers: small functions with one signature, and the registry that records their facts.

Every sampler is called as::

    sol = sampler(sde, score_fn, x_T, ts, *, generator=None, denoise=False, progress=False, ...)

and returns a :class:`~sdesolve_gen.Solution` (samples in ``sol.x``, score evaluations in
``sol.nfe``). :data:`~sdesolve_gen.samplers.registry.SAMPLERS` maps each sampler's one name to a :class:`SamplerSpec` (order,
evaluations per step, default grid, stochastic or not)::

    spec = sg.samplers.SAMPLERS["dpm_solver_pp_2m"]
    ts = spec.timesteps(sde, spec.steps_for(nfe=20))     # 20 evaluations, on its log-SNR grid
    sol = spec(sde, score_fn, x_T, ts)

Modules: :mod:`~sdesolve_gen.samplers.sde` (reverse-SDE samplers),
:mod:`~sdesolve_gen.samplers.ode` (probability-flow ODE samplers),
:mod:`~sdesolve_gen.samplers.langevin` (Langevin correctors, predictor-corrector),
:mod:`~sdesolve_gen.samplers.inpaint` (inpainting), :mod:`~sdesolve_gen.samplers.multistep`
(DPM-Solver++(3M)/(2S), UniPC, DEIS), :mod:`~sdesolve_gen.samplers.stochastic` (DPM-Solver++(2M) SDE,
EDM, SA-Solver), :mod:`~sdesolve_gen.samplers.adaptive_exp` (adaptive DPM-Solver++-12/23),
:mod:`~sdesolve_gen.samplers.calibrate` (calibrated grids), :mod:`~sdesolve_gen.samplers.registry`.
"""

from ._run import Run, tweedie_denoise, tweedie_x0
from .adaptive_exp import dpm_solver_adaptive, dpm_solver_adaptive_multistep
from .calibrate import CalibratedGrid, calibrate_timesteps, trajectory_rmse
from .inpaint import INPAINT_SAMPLERS, inpaint
from .langevin import annealed_langevin, corrector_alpha, langevin_step, predictor_corrector
from .multistep import deis, dpm_solver_pp_2s, dpm_solver_pp_3m, ipndm, unipc
from .ode import dpm_solver, dpm_solver_pp_2m, heun, ode
from .registry import SAMPLERS, Registry, SamplerSpec, get_sampler
from .sde import adaptive_sde, ancestral, euler_maruyama, reverse_diffusion
from .stochastic import dpm_solver_pp_2m_sde, edm_sde, sa_solver

__all__ = [
    "SAMPLERS",
    "SamplerSpec",
    "Registry",
    "get_sampler",
    "Run",
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "adaptive_sde",
    "ode",
    "heun",
    "dpm_solver",
    "dpm_solver_pp_2m",
    "predictor_corrector",
    "annealed_langevin",
    "langevin_step",
    "corrector_alpha",
    "inpaint",
    "INPAINT_SAMPLERS",
    "tweedie_x0",
    "tweedie_denoise",
    "dpm_solver_pp_3m",
    "dpm_solver_pp_2s",
    "unipc",
    "deis",
    "ipndm",
    "dpm_solver_adaptive",
    "dpm_solver_adaptive_multistep",
    "dpm_solver_pp_2m_sde",
    "edm_sde",
    "sa_solver",
    "calibrate_timesteps",
    "CalibratedGrid",
    "trajectory_rmse",
]

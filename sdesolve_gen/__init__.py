"""sdesolve_gen: score-based generative modelling on real differential-equation solvers.

Forward SDEs are torchsde SDEs, reverse-time SDEs are torchsde SDEs, probability-flow ODEs are
torchdiffeq functions; the library adds schedules, exact analytic oracles, score
parameterisations, samplers, likelihoods and training on top.
"""

from . import analytic
from ._checks import NonFiniteError
from .integrate import GridBrownian, odeint, sdeint, timesteps
from .parameterisation import PARAMETERISATIONS, ScoreModel, convert, from_score, to_score
from .result import SolveInfo
from .reverse import ProbabilityFlowODE, ReverseSDE
from .sde import EDMSDE, CosineVPSDE, LinearSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "analytic",
    "NonFiniteError",
    "LinearSDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "CosineVPSDE",
    "EDMSDE",
    "SolveInfo",
    "ReverseSDE",
    "sdeint",
    "odeint",
    "timesteps",
    "GridBrownian",
    "ProbabilityFlowODE",
    "PARAMETERISATIONS",
    "ScoreModel",
    "to_score",
    "from_score",
    "convert",
]

"""sdesolve_gen: score-based generative modelling on real differential-equation solvers.

Forward SDEs are torchsde SDEs, reverse-time SDEs are torchsde SDEs, probability-flow ODEs are
torchdiffeq functions; the library adds schedules, exact analytic oracles, score
parameterisations, samplers, likelihoods and training on top.
"""

from . import analytic, correctors, data, discrete, guidance, losses, nets, plotting, pretrained, samplers, train
from ._checks import NonFiniteError
from ._version import __version__
from .analytic import analytic_classifier, analytic_conditional_score, gaussian_conditional
from .bpd import bits_per_dim, dequantize
from .correctors import annealed_langevin, predictor_corrector
from .discrete import DiscreteVPSDE
from .guidance import classifier_free_guidance, classifier_guidance, label_guidance
from .integrate import GridBrownian, odeint, sdeint, timesteps
from .likelihood import (
    LikelihoodBound,
    LikelihoodResult,
    dataset_log_likelihood,
    decode,
    encode,
    interpolate,
    log_likelihood,
    log_likelihood_bound,
)
from .losses import dsm_loss, implicit_score_matching_loss, sliced_score_matching_loss
from .nets import MLPScoreNet, UNet
from .parameterisation import PARAMETERISATIONS, ScoreModel, convert, from_score, to_score
from .pretrained import DenoiserScore, TimestepModelScore
from .reverse import ProbabilityFlowODE, ReverseSDE
from .samplers import (
    SAMPLERS,
    SamplerSpec,
    adaptive_sde,
    ancestral,
    dpm_solver,
    dpm_solver_pp_2m,
    euler_maruyama,
    heun,
    inpaint,
    ode,
    reverse_diffusion,
)
from .sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, LinearSDE, SubVPSDE
from .solution import Solution
from .train import EMA, Trainer, load_checkpoint

__all__ = [
    "__version__",
    "data",
    "losses",
    "nets",
    "train",
    "dsm_loss",
    "sliced_score_matching_loss",
    "implicit_score_matching_loss",
    "MLPScoreNet",
    "UNet",
    "Trainer",
    "EMA",
    "load_checkpoint",
    "guidance",
    "classifier_guidance",
    "classifier_free_guidance",
    "label_guidance",
    "analytic_classifier",
    "analytic_conditional_score",
    "inpaint",
    "gaussian_conditional",
    "analytic",
    "plotting",
    "samplers",
    "correctors",
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "ode",
    "heun",
    "dpm_solver",
    "dpm_solver_pp_2m",
    "adaptive_sde",
    "predictor_corrector",
    "annealed_langevin",
    "NonFiniteError",
    "LinearSDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "CosineVPSDE",
    "EDMSDE",
    "DiscreteVPSDE",
    "discrete",
    "pretrained",
    "TimestepModelScore",
    "DenoiserScore",
    "Solution",
    "SAMPLERS",
    "SamplerSpec",
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
    "log_likelihood",
    "log_likelihood_bound",
    "LikelihoodResult",
    "LikelihoodBound",
    "dataset_log_likelihood",
    "bits_per_dim",
    "dequantize",
    "encode",
    "decode",
    "interpolate",
]

"""Langevin correctors and predictor-corrector sampling (re-exported from :mod:`sdesolve_gen.samplers.langevin`)."""

from .samplers.langevin import PREDICTORS, annealed_langevin, langevin_step, predictor_corrector

__all__ = ["langevin_step", "annealed_langevin", "predictor_corrector", "PREDICTORS"]

r"""Langevin correctors, annealed Langevin dynamics and predictor-corrector sampling.

Langevin dynamics :math:`x \leftarrow x + \epsilon\, s(x) + \sqrt{2\epsilon}\, z` leaves
:math:`p` invariant as :math:`\epsilon \to 0`; at a fixed time t it *corrects* samples towards
:math:`p_t`. Predictor-corrector sampling (Song et al. 2021) alternates corrector steps at
:math:`t_i` with a predictor step :math:`t_i \to t_{i+1}`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Union

import torch

from .._checks import check_int, check_positive
from ..reverse import ScoreFn
from ..sde import LinearSDE
from ..solution import Solution
from ._run import Callback, Run
from .sde import ancestral_step, em_step, reverse_diffusion_step

Tensor = torch.Tensor
StepFn = Callable[[Run, Tensor, int], Tensor]

__all__ = ["langevin_step", "annealed_langevin", "predictor_corrector", "corrector_alpha", "PREDICTORS"]


def langevin_step(run: Run, x: Tensor, i: int, snr: float, alpha_i: float = 1.0) -> Tensor:
    r"""One Langevin corrector step at grid time :math:`t_i` with score_sde's SNR rule.

    .. math::

        \epsilon = 2\alpha_i\Big(\frac{r\,\overline{\|z\|}}{\overline{\|s(x, t_i)\|}}\Big)^2,\qquad
        x \leftarrow x + \epsilon\, s + \sqrt{2\epsilon}\, z,

    with :math:`\overline{\|\cdot\|}` the batch mean of per-sample norms and :math:`r` = ``snr``,
    as in score_sde. (Per-sample norms are not used: in low dimension a sample sitting at a mode
    has a near-zero score and would get an unbounded step.) The step therefore depends on the
    batch through these two averages.

    Args:
        run: the sampler's run state.
        x: current state ``(B, *shape)``.
        i: grid index of the current time.
        snr: target signal-to-noise ratio r (score_sde: 0.16 for VE; smaller, e.g. 0.01, for VP).
        alpha_i: score_sde's :math:`\alpha_i` (``1 - beta_i`` for VP-type chains, 1 for VE).
    """
    s = run.score(x, i)
    z = run.noise(x)
    s_norm = float(s.flatten(1).norm(dim=1).mean())
    z_norm = float(z.flatten(1).norm(dim=1).mean())
    step = 2.0 * alpha_i * (snr * z_norm / max(s_norm, 1e-30)) ** 2
    return x + step * s + math.sqrt(2.0 * step) * z


def corrector_alpha(run: Run, i: int) -> float:
    r"""score_sde's :math:`\alpha_i` of the Langevin corrector at grid time :math:`t_i`.

    score_sde uses the discrete DDPM chain's :math:`\alpha_i = 1 - \beta_i` for VP / sub-VP and 1
    for VE. On a general grid the same quantity is the squared signal ratio of the step
    :math:`t_{i+1} \to t_i`,

    .. math:: \alpha_i = \Big(\frac{\alpha(t_i)}{\alpha(t_{i+1})}\Big)^2
              = \exp\Big(-\int_{t_{i+1}}^{t_i}\beta\Big) \approx 1 - \beta(t_i)\,\Delta t,

    which is < 1 for VP (0.67 at the first step of a 50-step VP grid, where
    :math:`1 - \beta_i = 0.6`) and exactly 1 for VE.
    """
    return (run.alpha[i] / run.alpha[i + 1]) ** 2


def annealed_langevin(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    n_steps_each: int = 10, step_lr: float = 2e-5,
) -> Solution:
    r"""Annealed Langevin dynamics of NCSN (Song & Ermon 2019), on the grid's noise levels.

    For each level :math:`\sigma_i = \sigma(t_i)` (largest first), ``n_steps_each`` steps of

    .. math:: x \leftarrow x + \tfrac{a_i}{2}\, s(x, t_i) + \sqrt{a_i}\, z,\qquad a_i = \mathrm{lr}\,\sigma_i^2/\sigma_L^2,

    with :math:`\sigma_L` the smallest level. NFE = ``n_steps_each * len(ts)``.
    """
    check_int("n_steps_each", n_steps_each, 1)
    step_lr = check_positive("step_lr", step_lr)
    run = Run("annealed_langevin", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    x = run.x_T
    sig_L2 = run.sigma[-1] ** 2
    if step_lr >= 2.0 * sig_L2:
        # at the top level the score's Lipschitz constant is ~1/sigma_1^2, so the chain is
        # unstable once a_1/sigma_1^2 = step_lr/sigma_L^2 reaches 2
        raise ValueError(f"step_lr must be < 2 sigma_L^2 = {2 * sig_L2:.3g} for a stable chain, got {step_lr}")
    levels = range(len(run.t))
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="annealed_langevin", leave=False)
    for i in levels:
        a_i = step_lr * run.sigma[i] ** 2 / sig_L2
        for _ in range(n_steps_each):
            x = x + 0.5 * a_i * run.score(x, i) + math.sqrt(a_i) * run.noise(x)
        if i + 1 < len(run.t):
            run.done(i, x)
    return run.finish(x, n_steps_each=n_steps_each, step_lr=step_lr)


#: Predictor steps by name, ``step(run, x, i) -> x_next`` (shared with inpainting).
PREDICTORS = {
    "euler_maruyama": em_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}


def predictor_corrector(
    sde: LinearSDE, score_fn: ScoreFn, x_T: Tensor, ts: Tensor, *, generator: Optional[torch.Generator] = None,
    denoise: bool = False, progress: bool = False, model_kwargs: Optional[Mapping[str, Any]] = None,
    callback: Optional[Callback] = None, differentiable: bool = False, check_finite: str = "end",
    predictor: Union[str, StepFn, None] = "reverse_diffusion",
    corrector: Optional[str] = "langevin", snr: float = 0.16, n_corrector_steps: int = 1,
) -> Solution:
    r"""Predictor-corrector sampling (Song et al. 2021, Algorithm 1-3).

    At each grid time :math:`t_i`: ``n_corrector_steps`` Langevin steps at :math:`t_i`
    (:func:`langevin_step`, SNR rule, :math:`\alpha_i` from :func:`corrector_alpha`: 1 for VE,
    :math:`\approx 1-\beta_i` for VP), then one predictor step to :math:`t_{i+1}`.

    Args:
        predictor: ``"reverse_diffusion"`` (default), ``"euler_maruyama"``, ``"ancestral"``,
            ``None`` (corrector only) or a callable ``step(run, x, i) -> x_next``.
        corrector: ``"langevin"`` or ``None`` (predictor only).
        snr: corrector signal-to-noise ratio.
        n_corrector_steps: corrector steps per time.
    """
    if isinstance(predictor, str):
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, None or a callable, got {predictor!r}")
        pred: Optional[StepFn] = PREDICTORS[predictor]
    elif predictor is None or callable(predictor):
        pred = predictor
    else:
        raise TypeError(f"predictor must be a name, None or a callable, got {type(predictor).__name__}")
    if corrector not in ("langevin", None):
        raise ValueError(f"corrector must be 'langevin' or None, got {corrector!r}")
    if pred is None and corrector is None:
        raise ValueError("predictor and corrector cannot both be None")
    snr = check_positive("snr", snr)
    check_int("n_corrector_steps", n_corrector_steps, 0)
    run = Run("predictor_corrector", sde, score_fn, x_T, ts, generator, model_kwargs=model_kwargs, callback=callback, differentiable=differentiable, check_finite=check_finite, denoise=denoise)
    x = run.x_T
    for i in run.steps(progress):
        if corrector is not None:
            alpha_i = corrector_alpha(run, i)
            for _ in range(n_corrector_steps):
                x = langevin_step(run, x, i, snr, alpha_i)
        if pred is not None:
            x = pred(run, x, i)
        run.done(i, x)
    name = getattr(predictor, "__name__", str(predictor))
    sol = run.finish(x, predictor=name, corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps)
    sol.method = f"pc[{name}+{corrector}]"
    return sol

r"""Conditional generation: classifier guidance, classifier-free guidance, inpainting.

**Bayes for scores.** For a label :math:`y`, :math:`p_t(x\mid y) \propto p_t(x)\,p_t(y\mid x)`, so

.. math::

    \nabla_x\log p_t(x\mid y) = \nabla_x\log p_t(x) + \nabla_x\log p_t(y\mid x).

*Classifier guidance* (Dhariwal & Nichol 2021) scales the classifier term by ``scale`` :math:`w`:
:math:`s_w(x,t) = s(x,t) + w\,\nabla_x\log p_t(y\mid x)`. With the exact noise-conditional classifier,
:math:`w=1` is the exact conditional score, :math:`w=0` the unconditional one, and :math:`w>1`
gives the score of the sharpened density :math:`\propto p_t(x)\,p_t(y\mid x)^w`. For :math:`w \ne 0, 1`
these tilted densities at different t are not the marginals of one forward process, so the
reverse SDE does not sample the tilted data distribution :math:`p_0(x)\,p_0(y\mid x)^w` exactly;
it is a heuristic that trades diversity for label fidelity.

*Classifier-free guidance* (Ho & Salimans 2021) uses a conditional and an unconditional score,
:math:`s = (1+w)\,s(x\mid y) - w\,s(x)`, which with exact scores equals classifier guidance at
scale :math:`1+w`. The other common convention (Imagen, ``diffusers``'s ``guidance_scale``) writes
:math:`\gamma = 1+w`: :math:`s = s(x) + \gamma\,(s(x\mid y) - s(x))`; ``gamma=1`` is then plain conditional.

*Inpainting by replacement* (Song et al. 2021, appendix I.2) runs the unconditional reverse
sampler and, after every step to time :math:`t`, overwrites the known coordinates with a fresh
forward-noised copy :math:`\alpha_t x_{\rm known} + \sigma_t z`. The result is exact only when
the known and unknown blocks are independent; with correlated blocks it is biased (see
:doc:`/guidance` for measured numbers, and :func:`~sdesolve_gen.analytic.gaussian_conditional`
for the exact oracle). The sampler lives in :mod:`sdesolve_gen.samplers.inpaint` and the exact
oracles (:func:`~sdesolve_gen.analytic.analytic_classifier`,
:func:`~sdesolve_gen.analytic.analytic_conditional_score`) in :mod:`sdesolve_gen.analytic`; both
are re-exported here.

Every returned score is a plain ``score_fn(x, t)`` callable: it plugs into every sampler,
:class:`~sdesolve_gen.reverse.ReverseSDE` and :class:`~sdesolve_gen.reverse.ProbabilityFlowODE`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import torch

from ._checks import check_label, check_same_shape, label_for_batch
from .analytic import analytic_classifier, analytic_conditional_score, gaussian_conditional
from .reverse import ScoreFn
from .samplers.inpaint import INPAINT_SAMPLERS, inpaint

Tensor = torch.Tensor
Label = Union[int, Tensor]
LogProbYFn = Callable[[Tensor, Tensor, Tensor], Tensor]
CondScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "classifier_guidance",
    "classifier_free_guidance",
    "label_guidance",
    "analytic_classifier",
    "analytic_conditional_score",
    "gaussian_conditional",
    "inpaint",
    "INPAINT_SAMPLERS",
]


# ---------------------------------------------------------------------------------- checks


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


# ---------------------------------------------------------------------------------- guidance


def classifier_guidance(score_fn: ScoreFn, log_prob_y_fn: LogProbYFn, y: Label, scale: float = 1.0) -> ScoreFn:
    r"""Classifier guidance: :math:`s_w(x, t) = s(x, t) + w\,\nabla_x \log p_t(y \mid x)`.

    The classifier gradient is taken by autograd. If ``x`` requires grad (e.g. a likelihood's
    exact divergence differentiates the score), the graph is kept (``create_graph=True``) so the
    Jacobian of the guided score is exact; otherwise the gradient is detached so a sampler's
    state never accumulates a graph over steps.

    Args:
        score_fn: unconditional score ``(x, t) -> (B, *shape)``.
        log_prob_y_fn: noise-conditional classifier ``(x, t, y) -> log p_t(y | x)``, shape ``(B,)``;
            ``t`` is a float64 0-d or ``(B,)`` tensor, ``y`` an int64 tensor ``()`` or ``(B,)``.
        y: the requested label, an int or an integer tensor of shape ``(B,)``.
        scale: guidance weight :math:`w` (finite real; 1 = Bayes, 0 = unconditional, < 0 pushes
            away from ``y``).

    Returns:
        A score function ``(x, t) -> (B, *shape)``.

    Raises:
        TypeError: on a non-callable function or a non-number ``scale``.
        ValueError: on a non-finite ``scale`` or a bad ``y``.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    if not callable(log_prob_y_fn):
        raise TypeError(f"log_prob_y_fn must be callable as log_prob_y_fn(x, t, y), got {type(log_prob_y_fn).__name__}")
    w = _check_scale(scale)
    y = check_label(y)

    def guided(x: Tensor, t: Any) -> Tensor:
        s = score_fn(x, t)
        if w == 0.0:
            return s
        return s + w * _classifier_grad(log_prob_y_fn, x, t, label_for_batch(y, x.shape[0]))

    return guided


def _classifier_grad(log_prob_y_fn: LogProbYFn, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    r""":math:`\nabla_x \log p_t(y \mid x)`, shape of ``x``; keeps the graph iff ``x`` requires grad."""
    keep = x.requires_grad and torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if keep else x.detach().requires_grad_(True)
        lp = log_prob_y_fn(xg, t, y)
        if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            raise ValueError(f"log_prob_y_fn must return shape (B,) = ({x.shape[0]},), got {got}")
        (grad,) = torch.autograd.grad(lp.sum(), xg, create_graph=keep)
    return grad if keep else grad.detach()


def classifier_free_guidance(cond_score_fn: CondScoreFn, uncond_score_fn: ScoreFn, y: Label, scale: float) -> ScoreFn:
    r"""Classifier-free guidance: :math:`s = (1+w)\,s(x, t \mid y) - w\,s(x, t)`.

    Convention (Ho & Salimans 2021): ``scale`` is :math:`w`; ``0`` gives the conditional score
    and, for exact scores, :math:`w` equals classifier guidance at scale :math:`1+w` since
    :math:`s(x\mid y) - s(x) = \nabla_x\log p_t(y\mid x)`. With the other common convention
    :math:`\gamma` (``guidance_scale`` in Imagen/``diffusers``, :math:`s = s(x) + \gamma(s(x\mid y) - s(x))`),
    pass ``scale = gamma - 1``.

    Args:
        cond_score_fn: ``(x, t, y) -> (B, *shape)``, the conditional score.
        uncond_score_fn: ``(x, t) -> (B, *shape)``, the unconditional score (for a single
            network, the same net with the null label).
        y: the requested label, an int or an integer tensor of shape ``(B,)``.
        scale: :math:`w`, a finite real number.

    Returns:
        A score function ``(x, t) -> (B, *shape)``. Two score evaluations per call (one if
        ``scale == 0``).
    """
    if not callable(cond_score_fn):
        raise TypeError(f"cond_score_fn must be callable as cond_score_fn(x, t, y), got {type(cond_score_fn).__name__}")
    if not callable(uncond_score_fn):
        raise TypeError(f"uncond_score_fn must be callable as uncond_score_fn(x, t), got {type(uncond_score_fn).__name__}")
    w = _check_scale(scale)
    y = check_label(y)

    def guided(x: Tensor, t: Any) -> Tensor:
        s_c = check_same_shape("s(x, t | y)", cond_score_fn(x, t, label_for_batch(y, x.shape[0])), tuple(x.shape),
                               "cond_score_fn")
        if w == 0.0:
            return s_c
        s_u = check_same_shape("s(x, t)", uncond_score_fn(x, t), tuple(x.shape), "uncond_score_fn")
        return (1.0 + w) * s_c - w * s_u

    return guided


def label_guidance(model: Callable[..., Tensor], y: Label, scale: float, *, null_label: int, num_classes: int,
                   label_kwarg: str = "y") -> ScoreFn:
    r"""Classifier-free guidance for ONE network trained with label dropout (a null label).

    With ``model(x, t, **{label_kwarg: labels})`` the conditional score,
    :math:`s = (1+w)\,s(x, t \mid y) - w\,s(x, t \mid \varnothing)`, the same convention as
    :func:`classifier_free_guidance` (``scale`` :math:`= w`, ``0`` = plain conditional). Both
    branches run in one forward pass on the doubled batch ``(2B, *shape)`` (as diffusers
    does), so a sampler's ``nfe`` counts one call per step while the network sees ``2B``
    samples; with ``scale == 0`` only the conditional half is evaluated.

    Args:
        model: a conditional score model, e.g. ``ScoreModel(UNet(num_classes=K), sde)``.
        y: the class, an int or an integer tensor ``(B,)`` in ``[0, num_classes)``.
        scale: :math:`w`, a finite real number.
        null_label: the label the model was trained on when the class was dropped (an int >= ``num_classes``).
        num_classes: number of real classes ``K`` (labels ``0 .. K-1``).
        label_kwarg: the keyword the model takes its labels by.

    Returns:
        A score function ``(x, t) -> (B, *shape)``.

    Raises:
        TypeError, ValueError: on a non-callable ``model``, a bad ``scale``, or labels of the
            wrong type, shape or range (named).
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, {label_kwarg}=labels), got {type(model).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < num_classes:
        raise ValueError(f"null_label must be an int >= num_classes = {num_classes} (the Trainer's null label, an "
                         f"embedding index outside the real classes), got {null_label!r}")
    if not isinstance(label_kwarg, str) or not label_kwarg.isidentifier():
        raise ValueError(f"label_kwarg must be an argument name, got {label_kwarg!r}")
    w = _check_scale(scale)
    y = check_label(y, num_classes)

    def guided(x: Tensor, t: Any) -> Tensor:
        B = x.shape[0]
        labels = label_for_batch(y, B).to(x.device).expand(B)
        if w == 0.0:
            return model(x, t, **{label_kwarg: labels})
        both = torch.cat([labels, torch.full_like(labels, null_label)])
        tt = t.expand(B).repeat(2) if t.dim() == 1 else t
        s = model(torch.cat([x, x]), tt, **{label_kwarg: both})
        return (1.0 + w) * s[:B] - w * s[B:]

    return guided


# ---------------------------------------------------------------------------------- analytic oracles

r"""Score-matching losses: denoising (any linear SDE, any weighting), sliced and implicit.

Denoising score matching (Vincent 2011; Song et al. 2021). With :math:`x_t = \alpha_t x_0 +
\sigma_t\epsilon`, the conditional score is :math:`\nabla\log p_t(x_t\mid x_0) = -\epsilon/\sigma_t`,
and

.. math::

    \mathcal L(\theta) = \mathbb E_{t}\,\lambda(t)\,\mathbb E_{x_0,\epsilon}
    \big\|s_\theta(x_t, t) + \epsilon/\sigma_t\big\|^2

is minimised by the marginal score. Its minimum is not zero: for Gaussian data
:math:`\mathcal N(\mu, \Sigma)` the per-time value at the optimum is
:math:`D/\sigma_t^2 - \mathrm{tr}\,C_t^{-1}` with :math:`C_t = \alpha_t^2\Sigma + \sigma_t^2 I`
(:func:`dsm_optimum_gaussian`). Weightings :math:`\lambda(t)`:

* ``"sigma2"``: :math:`\sigma_t^2` (the seeds' default; equals the DDPM ``eps`` MSE);
* ``"g2"``: :math:`g(t)^2`, the likelihood weighting: :math:`\tfrac{T}{2}\,\mathbb E_t[g^2\|\cdot\|^2]`
  bounds :math:`\mathrm{KL}(p_0\|p_\theta)` up to the prior term (Song et al. 2021b);
* ``"edm"``: Karras et al.'s :math:`\lambda = (\bar\sigma^2 + \sigma_d^2)/(\bar\sigma\sigma_d)^2` on
  the denoiser error, :math:`\bar\sigma = \sigma/\alpha`, which on the score error is
  :math:`\alpha^2\bar\sigma^2(\bar\sigma^2 + \sigma_d^2)/\sigma_d^2`;
* ``"none"`` or a callable ``t -> lambda(t)``.

Importance sampling for ``"g2"``. Since :math:`g^2/\sigma^2 = -\tfrac{d}{dt}\log\mathrm{SNR}(t)`
for every linear SDE, sampling :math:`t` with density :math:`p(t) \propto g^2/\sigma^2` is an
inverse-CDF draw in log-SNR: :math:`\log\mathrm{SNR}(t) = \log\mathrm{SNR}(\epsilon) - u\,Z`,
:math:`u\sim U(0,1)`, :math:`Z = \log\mathrm{SNR}(\epsilon) - \log\mathrm{SNR}(T)`. The unbiased
integrand is then :math:`\tfrac{Z}{T-\epsilon}\,\sigma_t^2\|s_\theta + \epsilon/\sigma_t\|^2`, an
O(1) quantity instead of one that blows up as :math:`t \to \epsilon` (the variance reduction).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch

from ._checks import (
    check_batch,
    check_bool,
    check_coefficient,
    check_int,
    check_positive,
    check_real,
    check_same_shape,
    host_values,
)
from .sde import LinearSDE, expand_to

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
Weighting = Union[str, Callable[[Tensor], Tensor]]

__all__ = [
    "dsm_loss",
    "loss_weight",
    "sample_time",
    "dsm_optimum_gaussian",
    "sliced_score_matching_loss",
    "implicit_score_matching_loss",
]

WEIGHTINGS = ("sigma2", "g2", "edm", "none")


def loss_weight(sde: LinearSDE, t: Tensor, kind: Weighting = "sigma2", *, sigma_data: float = 0.5) -> Tensor:
    r""":math:`\lambda(t)` of the score-error loss for ``kind`` (see the module doc), float64 like ``t``."""
    t = t.to(torch.float64)
    if callable(kind):
        lam = kind(t)
        if isinstance(lam, (int, float)) and not isinstance(lam, bool):
            return torch.full_like(t, float(lam))
        if isinstance(lam, torch.Tensor) and lam.dim() == 0:
            return lam.to(torch.float64).expand(t.shape)
        return check_same_shape("lambda(t)", lam, tuple(t.shape), "weighting").to(torch.float64)
    if kind == "sigma2":
        return sde.sigma2(t)
    if kind == "g2":
        return sde.diffusion2(t)
    if kind == "none":
        return torch.ones_like(t)
    if kind == "edm":
        a2 = torch.exp(2 * sde.log_alpha(t))
        sbar2 = sde.sigma2(t) / a2
        return a2 * sbar2 * (sbar2 + sigma_data**2) / sigma_data**2
    raise ValueError(f"weighting (kind) must be one of {WEIGHTINGS} or a callable t -> lambda(t), got {kind!r}")


def sample_time(
    sde: LinearSDE, n: int, *, importance: bool = False, eps: Optional[float] = None,
    generator: Optional[torch.Generator] = None, device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    r"""Draw ``n`` training times in ``[eps, T]``: uniform, or with density ``∝ g^2/sigma^2``.

    Returns:
        float64 tensor of shape ``(n,)``.
    """
    n = check_int("n", n, 0)
    eps = sde.eps if eps is None else check_real("eps", eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device if generator is not None else None)
    if not importance:
        t = eps + u * (sde.T - eps)
    else:
        ls_e = float(sde.log_snr(eps))
        ls_T = float(sde.log_snr(sde.T))
        t = sde.t_of_lambda(0.5 * (ls_e - u.cpu() * (ls_e - ls_T)))
    return t.to(device) if device is not None else t


def dsm_loss(
    score_model: ScoreFn,
    sde: LinearSDE,
    x0: Tensor,
    *,
    weighting: Weighting = "sigma2",
    importance_sampling: bool = False,
    generator: Optional[torch.Generator] = None,
    eps: Optional[float] = None,
    t: Optional[Tensor] = None,
    sigma_data: float = 0.5,
    reduce: bool = True,
    model_kwargs: Optional[Dict[str, Any]] = None,
) -> Tensor:
    r"""Denoising score-matching loss :math:`\lambda(t)\,\|s_\theta(x_t,t) + \epsilon/\sigma_t\|^2`.

    Any parameterisation trains through this one loss: wrap the network with
    :class:`~sdesolve_gen.ScoreModel` (for ``eps`` networks and :math:`\lambda = \sigma^2` it is
    exactly the DDPM loss :math:`\|\hat\epsilon_\theta - \epsilon\|^2`).

    Args:
        score_model: ``(x_t, t) -> score`` with ``t`` of shape ``(B,)``.
        sde: the forward SDE.
        x0: clean data ``(B, *shape)``.
        weighting: ``"sigma2"``, ``"g2"``, ``"edm"``, ``"none"`` or a callable.
        importance_sampling: with ``weighting="g2"``, draw t from :math:`p(t)\propto g^2/\sigma^2`
            (:func:`sample_time`) and reweight; the expectation is unchanged.
        generator: randomness for t and the noise; it must live on ``x0``'s device (the draws
            are made there: ``torch.Generator(device=x0.device)``).
        eps: smallest training time (default ``sde.eps``).
        t: optional fixed times ``(B,)`` (then ``importance_sampling`` must be False).
        sigma_data: data std for the EDM weighting.
        reduce: return the batch mean (default) or the per-sample losses ``(B,)``.
        model_kwargs: extra keyword arguments of every call, ``score_model(x_t, t, **model_kwargs)``
            (e.g. ``{"y": labels}`` for a class-conditional network).

    Returns:
        scalar loss, or ``(B,)`` per-sample losses.

    Raises:
        TypeError: if ``generator`` is not a ``torch.Generator`` or ``model_kwargs`` not a dict.
        ValueError: if ``generator`` is on another device than ``x0`` (checked before any draw).
    """
    x0 = check_batch("x0", x0)
    check_bool("reduce", reduce)
    check_bool("importance_sampling", importance_sampling)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device != x0.device:
            raise ValueError(f"generator is on device {generator.device} but x0 is on {x0.device}; "
                             f"create it on x0's device: torch.Generator(device=x0.device)")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments, got {type(model_kwargs).__name__}")
    if importance_sampling and weighting != "g2":
        raise ValueError("importance_sampling is defined for weighting='g2' (the likelihood weighting)")
    B = x0.shape[0]
    eps_t = sde.eps if eps is None else check_real("eps", eps)
    check_positive("sigma_data", sigma_data)
    if t is None:
        t = sample_time(sde, B, importance=importance_sampling, eps=eps_t, generator=generator, device=x0.device)
    else:
        if importance_sampling:
            raise ValueError("pass t or importance_sampling, not both")
        t = sde.time(t, batch=B).to(x0.device).expand(B)
        check_coefficient("sigma(t) at the given t", torch.sqrt(sde.sigma2(t)))
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    alpha = expand_to(torch.exp(sde.log_alpha(t)), x0)
    sigma = expand_to(torch.sqrt(sde.sigma2(t)), x0)
    x_t = alpha * x0 + sigma * noise
    s = score_model(x_t, t, **model_kwargs) if model_kwargs else score_model(x_t, t)
    if s.shape != x0.shape:
        raise ValueError(f"score_model returned shape {tuple(s.shape)}, expected {tuple(x0.shape)}")
    sq = (sigma * s + noise).flatten(1).pow(2).sum(1)  # sigma^2 ||s + eps/sigma||^2
    if importance_sampling:
        Z = float(sde.log_snr(eps_t)) - float(sde.log_snr(sde.T))
        per = (Z / (sde.T - eps_t)) * sq
    else:
        lam_t = loss_weight(sde, t, weighting, sigma_data=sigma_data)
        if callable(weighting):  # a user weighting must be a finite lambda(t) >= 0 (checked where it costs no sync)
            v = host_values(lam_t)
            if v is not None and not bool((torch.isfinite(v) & (v >= 0)).all()):
                raise ValueError("weighting returned a lambda(t) that is negative or not finite; it must be finite and >= 0")
        lam = lam_t.to(sq) / sde.sigma2(t).to(sq)
        per = lam * sq
    return per.mean() if reduce else per


def dsm_optimum_gaussian(sde: LinearSDE, cov: Tensor, *, weighting: Weighting = "sigma2", eps: Optional[float] = None) -> float:
    r"""Irreducible DSM loss for Gaussian data :math:`\mathcal N(\mu, \Sigma)` at the exact score.

    .. math::

        \mathcal L^\star = \frac{1}{T-\epsilon}\int_\epsilon^T \lambda(t)\Big(\frac{D}{\sigma_t^2}
        - \sum_j \frac{1}{\alpha_t^2\lambda_j + \sigma_t^2}\Big)dt,

    with :math:`\lambda_j` the eigenvalues of :math:`\Sigma` (scipy quadrature, rtol 1e-10).
    """
    lam = torch.linalg.eigvalsh(torch.as_tensor(cov, dtype=torch.float64))
    D = lam.numel()
    eps = sde.eps if eps is None else float(eps)

    def integrand(u: float) -> float:
        t = torch.tensor(u, dtype=torch.float64)
        a2, s2 = float(torch.exp(2 * sde.log_alpha(t))), float(sde.sigma2(t))
        w = float(loss_weight(sde, t, weighting))
        return w * (D / s2 - float((1.0 / (a2 * lam + s2)).sum()))

    from scipy import integrate  # optional dependency (extra 'oracle'): only this oracle needs it

    val, _ = integrate.quad(integrand, eps, sde.T, epsrel=1e-10, limit=200)
    return val / (sde.T - eps)


def sliced_score_matching_loss(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduced: bool = True,
    generator: Optional[torch.Generator] = None,
    reduce: bool = True,
) -> Tensor:
    r"""Sliced score matching (Song et al. 2019) for a score ``s(x)`` of data ``x``.

    .. math::

        \mathcal L = \mathbb E_{x,v}\Big[v^\top\nabla_x\big(v^\top s(x)\big) + \tfrac12 (v^\top s(x))^2\Big],

    or, variance-reduced (SSM-VR), with :math:`\tfrac12\|s(x)\|^2` in place of
    :math:`\tfrac12(v^\top s)^2` (equal in expectation for :math:`\mathbb E[vv^\top] = I`). Up to a
    constant it is the Fisher divergence :math:`\tfrac12\mathbb E\|s - \nabla\log p\|^2`.

    Args:
        score_fn: ``x -> s(x)`` (same shape), differentiable.
        x: data ``(B, *shape)``.
        n_projections: projections per sample (averaged).
        projection: ``"rademacher"`` or ``"gaussian"``.
    """
    x = check_batch("x", x)
    check_int("n_projections", n_projections, 1)
    if projection not in ("rademacher", "gaussian"):
        raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {projection!r}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = check_same_shape("s(x)", score_fn(x), tuple(x.shape), "score_fn")
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for _ in range(n_projections):
            v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if projection == "rademacher":
                v = torch.sign(v)
            vs = (v * s).flatten(1).sum(1)
            (grad,) = torch.autograd.grad(vs.sum(), x, create_graph=True)
            term1 = (v * grad).flatten(1).sum(1)
            term2 = 0.5 * s.flatten(1).pow(2).sum(1) if variance_reduced else 0.5 * vs**2
            total = total + term1 + term2
        per = total / n_projections
    return per.mean() if reduce else per


def implicit_score_matching_loss(score_fn: Callable[[Tensor], Tensor], x: Tensor, *, reduce: bool = True) -> Tensor:
    r"""Hyvärinen's implicit score matching with the exact trace (for low dimension D).

    .. math:: \mathcal L = \mathbb E_x\Big[\tfrac12\|s(x)\|^2 + \mathrm{tr}\,\nabla_x s(x)\Big]
              = \tfrac12\mathbb E\|s - \nabla\log p\|^2 - \tfrac12\mathbb E\|\nabla\log p\|^2 .

    Costs D backward passes.
    """
    x = check_batch("x", x).detach().requires_grad_(True)
    with torch.enable_grad():
        s = check_same_shape("s(x)", score_fn(x), tuple(x.shape), "score_fn")
        sf = s.flatten(1)
        D = sf.shape[1]
        tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for j in range(D):
            (g,) = torch.autograd.grad(sf[:, j].sum(), x, create_graph=True)
            tr = tr + g.flatten(1)[:, j]
        per = 0.5 * sf.pow(2).sum(1) + tr
    return per.mean() if reduce else per


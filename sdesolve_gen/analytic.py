r"""Exact oracles: Gaussian and Gaussian-mixture data under any linear SDE.

For data :math:`x_0 \sim \sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)` and a linear SDE with
:math:`p_t(x\mid x_0) = \mathcal N(\alpha_t x_0, \sigma_t^2 I)`, the marginal at time t is again a
mixture,

.. math::

    p_t(x) = \sum_k w_k\,\mathcal N\big(x;\ \alpha_t\mu_k,\ \alpha_t^2\Sigma_k + \sigma_t^2 I\big),

with exact score

.. math::

    \nabla_x \log p_t(x) = -\sum_k r_k(x)\,\big(\alpha_t^2\Sigma_k + \sigma_t^2 I\big)^{-1}(x - \alpha_t\mu_k),
    \qquad r_k(x) = \frac{w_k\,\mathcal N_k(x)}{\sum_j w_j\,\mathcal N_j(x)} .

Every covariance is diagonalised once, :math:`\Sigma_k = U_k\,\mathrm{diag}(\lambda_k)\,U_k^\top`
(float64), so :math:`\alpha_t^2\Sigma_k + \sigma_t^2 I = U_k\,\mathrm{diag}(\alpha_t^2\lambda_k +
\sigma_t^2)\,U_k^\top` for every t at once: log-determinants and solves are exact and cheap even
when each sample has its own time. Mixture sums use ``logsumexp``.

The score is built from differentiable torch operations, so autograd through it (the exact
divergence of a probability-flow ODE) gives the true Jacobian.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._checks import TimeLike, as_time64, check_batch, check_label, check_tensor, label_for_batch
from .sde import LinearSDE

Tensor = torch.Tensor
ArrayLike = Union[Tensor, np.ndarray, Sequence]

__all__ = ["GaussianMixture", "Gaussian", "analytic_classifier", "analytic_conditional_score", "gaussian_conditional"]


def _as_f64(name: str, value: ArrayLike) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def _symmetric_pd_eigh(name: str, cov: Tensor) -> Tuple[Tensor, Tensor]:
    """Eigen-decomposition of a stack of covariances ``(K, D, D)``, refusing asymmetric or not
    positive-definite ones (the message names ``name``)."""
    asym = (cov - cov.transpose(1, 2)).abs().amax()
    if float(asym) > 1e-10 * max(1.0, float(cov.abs().amax())):
        raise ValueError(f"{name} must be symmetric; max |C - C^T| = {float(asym):.3g}")
    lam, U = torch.linalg.eigh(cov)
    if bool((lam <= 0).any()):
        k = int(lam.min(dim=1).values.argmin())
        raise ValueError(f"{name} must be positive definite; component {k} has eigenvalue {float(lam[k].min()):.3g}")
    return lam, U


class GaussianMixture:
    r"""A mixture of Gaussians :math:`\sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)` with exact
    marginals, log densities and scores under any :class:`~sdesolve_gen.sde.LinearSDE`.

    Args:
        means: shape ``(K, D)``.
        covs: shape ``(K, D, D)``, each symmetric positive definite.
        weights: shape ``(K,)``, non-negative, summing to 1 (default: uniform).
        event_shape: shape of one sample, e.g. ``(1, 8, 8)``; default ``(D,)``. Its product must
            be ``D``; samples and inputs are ``(B, *event_shape)``.

    Raises:
        ValueError: on mismatched dimensions, non-PD or non-symmetric covariances, or weights that
            are negative or do not sum to 1.
    """

    def __init__(
        self,
        means: ArrayLike,
        covs: ArrayLike,
        weights: Optional[ArrayLike] = None,
        *,
        event_shape: Optional[Sequence[int]] = None,
    ) -> None:
        mu = _as_f64("means", means)
        cov = _as_f64("covs", covs)
        if mu.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        K, D = mu.shape
        if cov.dim() != 3 or cov.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D) = ({K}, {D}, {D}) to match means, got {tuple(cov.shape)}")
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        else:
            w = _as_f64("weights", weights)
            if w.shape != (K,):
                raise ValueError(f"weights must have shape (K,) = ({K},) to match means, got {tuple(w.shape)}")
            if bool((w < 0).any()):
                raise ValueError("weights must be non-negative")
            if abs(float(w.sum()) - 1.0) > 1e-6:
                raise ValueError(f"weights must sum to 1, got sum {float(w.sum())}")
        lam, U = _symmetric_pd_eigh("covs", cov)
        if event_shape is None:
            event_shape = (D,)
        event_shape = tuple(int(s) for s in event_shape)
        if math.prod(event_shape) != D:
            raise ValueError(f"event_shape {event_shape} has {math.prod(event_shape)} elements, but the means have D={D}")
        self.means, self.covs, self.weights = mu, cov, w / w.sum()
        self.event_shape: Tuple[int, ...] = event_shape
        self._lam, self._U = lam, U
        self._log_w = torch.log(self.weights)

    # ------------------------------------------------------------------ basic properties

    @property
    def dim(self) -> int:
        """Data dimension ``D``."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self.means.shape[0]

    @property
    def mean(self) -> Tensor:
        r"""Overall mean :math:`\sum_k w_k\mu_k`, shape ``(D,)`` (float64)."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        r"""Overall covariance :math:`\sum_k w_k(\Sigma_k + \mu_k\mu_k^\top) - \bar\mu\bar\mu^\top`, ``(D, D)``."""
        m = self.mean
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, event_shape={self.event_shape})"

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> Tensor:
        """Draw ``n`` exact samples, shape ``(n, *event_shape)``.

        Args:
            n: number of samples (> 0).
            generator: optional CPU ``torch.Generator`` (sampling is done in float64 on CPU and
                then moved, so results do not depend on the device).
            dtype: result dtype (default ``torch.get_default_dtype()``).
            device: result device.
        """
        return self.sample_with_labels(n, generator=generator, dtype=dtype, device=device)[0]

    def sample_with_labels(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Like :meth:`sample`, and the component index of each sample: ``(x, labels)``, labels ``(n,)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self._U * torch.sqrt(self._lam)[:, None, :]  # (K, D, D): U diag(sqrt lam)
        x = self.means[labels] + torch.einsum("nij,nj->ni", scale[labels], z)
        x = x.to(dtype=dtype or torch.get_default_dtype(), device=device).reshape(n, *self.event_shape)
        return x, labels.to(device)

    # ------------------------------------------------------------------ exact marginals

    def marginal(self, t: TimeLike, sde: LinearSDE) -> "GaussianMixture":
        r"""The exact marginal :math:`p_t` as a new mixture (scalar ``t`` only).

        ``data.marginal(sde.T, sde)`` is the *exact prior*: sampling the reverse SDE from it
        removes the bias of the standard prior.
        """
        tt = sde.time(t)
        if tt.dim() != 0:
            raise ValueError("t must be a scalar for marginal(); use log_prob_t/score for per-sample times")
        a = float(torch.exp(sde.log_alpha(tt)))
        s2 = float(sde.sigma2(tt))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            a * self.means, a * a * self.covs + s2 * eye, self.weights, event_shape=self.event_shape
        )

    def prior(self, sde: LinearSDE) -> "GaussianMixture":
        """The exact marginal at ``sde.T`` (the "exact prior")."""
        return self.marginal(sde.T, sde)

    def _flat(self, x: Tensor) -> Tensor:
        x = check_tensor("x", x)
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise ValueError(f"x must have shape (B, *{self.event_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _coeffs(self, x: Tensor, t: Optional[Tensor], sde: Optional[LinearSDE]) -> Tuple[Tensor, Tensor]:
        """alpha and sigma^2 as ``(B, 1, 1)`` or scalar tensors in x's dtype (t float64)."""
        if t is None:
            one = torch.ones((), dtype=x.dtype, device=x.device)
            return one, torch.zeros((), dtype=x.dtype, device=x.device)
        assert sde is not None
        a = torch.exp(sde.log_alpha(t)).to(x)
        s2 = sde.sigma2(t).to(x)
        if t.dim() == 1:
            a, s2 = a[:, None, None], s2[:, None, None]
        return a, s2

    def _components(self, xf: Tensor, a: Tensor, s2: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-component log N_k, the whitened residual and the eigenbasis.

        Returns:
            ``log_wN`` ``(B, K)``: :math:`\\log w_k + \\log\\mathcal N_k(x)`; ``y_over`` ``(B, K, D)``:
            :math:`\\Lambda_t^{-1} U_k^\\top (x - \\alpha\\mu_k)`; ``U`` ``(K, D, D)``.
        """
        mu = self.means.to(xf)
        U = self._U.to(xf)
        lam_t = a * a * self._lam.to(xf) + s2  # (K, D) or (B, K, D)
        diff = xf[:, None, :] - a * mu  # (B, K, D)  (a is scalar or (B,1,1))
        y = torch.einsum("bki,kij->bkj", diff, U)
        quad = (y * y / lam_t).sum(-1)
        logdet = torch.log(lam_t).sum(-1)
        log_n = -0.5 * (self.dim * math.log(2.0 * math.pi) + logdet + quad)
        return self._log_w.to(xf) + log_n, y / lam_t, U

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log density of the data distribution, shape ``(B,)`` (nats)."""
        xf = self._flat(x)
        a, s2 = self._coeffs(xf, None, None)
        return torch.logsumexp(self._components(xf, a, s2)[0], dim=1)

    def log_prob_t(self, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
        r"""Exact :math:`\log p_t(x)` under ``sde``.

        Args:
            x: shape ``(B, *event_shape)``.
            t: float, 0-d or ``(B,)`` times in ``[0, T]``.
            sde: a linear SDE.

        Returns:
            shape ``(B,)``, in nats.
        """
        xf = self._flat(x)
        tt = sde.time(t, batch=xf.shape[0])
        a, s2 = self._coeffs(xf, tt, sde)
        return torch.logsumexp(self._components(xf, a, s2)[0], dim=1)

    def log_responsibilities(self, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
        r""":math:`\log r_k(x) = \log p_t(y{=}k \mid x)`, the exact component posterior, shape ``(B, K)``."""
        xf = self._flat(x)
        tt = sde.time(t, batch=xf.shape[0])
        a, s2 = self._coeffs(xf, tt, sde)
        log_wn = self._components(xf, a, s2)[0]
        return log_wn - torch.logsumexp(log_wn, dim=1, keepdim=True)

    def _score(self, xf: Tensor, tt: Tensor, sde: LinearSDE) -> Tensor:
        a, s2 = self._coeffs(xf, tt, sde)
        log_wn, y_over, U = self._components(xf, a, s2)
        r = torch.softmax(log_wn, dim=1)  # (B, K)
        per_k = torch.einsum("kij,bkj->bki", U, y_over)  # (B, K, D) = Cov_t^{-1}(x - a mu_k)
        return -(r[:, :, None] * per_k).sum(1)

    def score(self, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
        r"""Exact score :math:`\nabla_x\log p_t(x)`, same shape as ``x``.

        Args:
            x: shape ``(B, *event_shape)``.
            t: float, 0-d or ``(B,)`` times in ``[0, T]``.
            sde: a linear SDE.
        """
        xf = self._flat(x)
        tt = sde.time(t, batch=xf.shape[0])
        return self._score(xf, tt, sde).reshape(x.shape)

    def score_fn(self, sde: LinearSDE) -> Callable[[Tensor, TimeLike], Tensor]:
        r"""A score function ``(x, t) -> score`` for ``sde``, the signature samplers expect.

        The closure skips the ``[0, T]`` range check (solvers may probe a time a rounding error
        outside it) but still checks shapes; the result is differentiable in ``x``.
        """

        def score(x: Tensor, t: TimeLike) -> Tensor:
            xf = self._flat(x)
            tt = as_time64(t)
            if tt.dim() > 1 or (tt.dim() == 1 and tt.shape[0] not in (1, xf.shape[0])):
                raise ValueError(f"t must be a scalar or have shape (B,) = ({xf.shape[0]},), got {tuple(tt.shape)}")
            return self._score(xf, tt, sde).reshape(x.shape)

        return score


class Gaussian(GaussianMixture):
    r"""A single Gaussian :math:`\mathcal N(\mu, \Sigma)` (a one-component mixture).

    Args:
        mean: shape ``(D,)``.
        cov: shape ``(D, D)``, symmetric positive definite.
        event_shape: optional shape of one sample (product ``D``).
    """

    def __init__(self, mean: ArrayLike, cov: ArrayLike, *, event_shape: Optional[Sequence[int]] = None) -> None:
        m = _as_f64("mean", mean)
        c = _as_f64("cov", cov)
        if m.dim() != 1:
            raise ValueError(f"mean must have shape (D,), got {tuple(m.shape)}")
        if c.shape != (m.shape[0], m.shape[0]):
            raise ValueError(f"cov must have shape (D, D) = ({m.shape[0]}, {m.shape[0]}), got {tuple(c.shape)}")
        _symmetric_pd_eigh("cov", c[None])
        super().__init__(m[None], c[None], None, event_shape=event_shape)


# ---------------------------------------------------------------------------------- conditional oracles

Label = Union[int, Tensor]
LogProbYFn = Callable[[Tensor, Tensor, Label], Tensor]
CondScoreFn = Callable[[Tensor, Tensor, Label], Tensor]


def _check_oracle_args(data: object, sde: object) -> None:
    if not isinstance(data, GaussianMixture):
        raise TypeError(f"data must be an analytic GaussianMixture, got {type(data).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")


def analytic_classifier(data: GaussianMixture, sde: LinearSDE) -> LogProbYFn:
    r"""The exact noise-conditional classifier of a mixture's component label.

    .. math::

        \log p_t(y{=}k \mid x) = \log\frac{w_k\,\mathcal N(x;\alpha_t\mu_k, \alpha_t^2\Sigma_k + \sigma_t^2 I)}
        {\sum_j w_j\,\mathcal N(x;\alpha_t\mu_j, \alpha_t^2\Sigma_j + \sigma_t^2 I)},

    i.e. ``data.log_responsibilities(x, t, sde)[:, k]``.

    Returns:
        ``log_prob_y_fn(x, t, y) -> (B,)``, differentiable in ``x``; ``y`` an int or ``(B,)``
        integer tensor in ``[0, K)``.
    """
    _check_oracle_args(data, sde)
    K = data.n_components

    def log_prob_y(x: Tensor, t: Tensor, y: Label) -> Tensor:
        yt = label_for_batch(check_label(y, K), x.shape[0]).to(x.device)
        log_r = data.log_responsibilities(x, as_time64(t).clamp(0.0, sde.T), sde)  # (B, K)
        if yt.dim() == 0:
            return log_r[:, yt]
        return log_r.gather(1, yt[:, None])[:, 0]

    return log_prob_y


def analytic_conditional_score(data: GaussianMixture, sde: LinearSDE) -> CondScoreFn:
    r"""The exact conditional score of a mixture given its component label.

    Component :math:`k` alone is the Gaussian :math:`\mathcal N(\mu_k, \Sigma_k)`, so
    :math:`\nabla_x\log p_t(x\mid y{=}k) = -(\alpha_t^2\Sigma_k + \sigma_t^2 I)^{-1}(x - \alpha_t\mu_k)`,
    computed by a one-component :class:`~sdesolve_gen.analytic.GaussianMixture`.

    Returns:
        ``cond_score_fn(x, t, y) -> (B, *event_shape)`` with ``y`` an int or ``(B,)`` integer tensor.
    """
    _check_oracle_args(data, sde)
    K = data.n_components
    parts = [
        GaussianMixture(data.means[k : k + 1], data.covs[k : k + 1], event_shape=data.event_shape).score_fn(sde)
        for k in range(K)
    ]

    def cond_score(x: Tensor, t: Tensor, y: Label) -> Tensor:
        yt = label_for_batch(check_label(y, K), x.shape[0])
        if yt.dim() == 0:
            return parts[int(yt)](x, t)
        out = torch.zeros_like(x)
        for k in torch.unique(yt).tolist():
            sel = (yt == k).to(x.device)
            tk = t[sel.cpu()] if isinstance(t, Tensor) and t.dim() == 1 and t.shape[0] == x.shape[0] else t
            out = out.index_put((sel.nonzero()[:, 0],), parts[k](x[sel], tk))
        return out

    return cond_score


def gaussian_conditional(mean: Tensor, cov: Tensor, mask: Tensor, x_known: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Exact conditional of a Gaussian :math:`\mathcal N(\mu, \Sigma)` given the known coordinates.

    With known block :math:`k` and unknown block :math:`u`,

    .. math::

        x_u \mid x_k \sim \mathcal N\big(\mu_u + \Sigma_{uk}\Sigma_{kk}^{-1}(x_k - \mu_k),\
        \Sigma_{uu} - \Sigma_{uk}\Sigma_{kk}^{-1}\Sigma_{ku}\big).

    Args:
        mean: ``(D,)``.
        cov: ``(D, D)``.
        mask: ``(D,)`` bool, True where known.
        x_known: ``(B, D)`` (unknown entries ignored).

    Returns:
        ``(cond_mean (B, D_u), cond_cov (D_u, D_u))`` in float64, over the unknown coordinates in order.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    D = mean.shape[0]
    mask = torch.as_tensor(mask).to(torch.bool).reshape(-1)
    if mask.shape != (D,):
        raise ValueError(f"mask must have shape (D,) = ({D},), got {tuple(mask.shape)}")
    if cov.shape != (D, D):
        raise ValueError(f"cov must have shape (D, D) = ({D}, {D}), got {tuple(cov.shape)}")
    x_known = check_batch("x_known", x_known).reshape(x_known.shape[0], -1).to(torch.float64)
    if x_known.shape[1] != D:
        raise ValueError(f"x_known must have D={D} coordinates per sample, got {x_known.shape[1]}")
    k, u = mask, ~mask
    S_kk, S_uk, S_uu = cov[k][:, k], cov[u][:, k], cov[u][:, u]
    gain = torch.linalg.solve(S_kk, S_uk.T).T  # (D_u, D_k) = S_uk S_kk^{-1}
    cond_mean = mean[u] + (x_known[:, k] - mean[k]) @ gain.T
    return cond_mean, S_uu - gain @ S_uk.T

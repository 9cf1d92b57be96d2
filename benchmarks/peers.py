r"""Peer implementations: k-diffusion's samplers (loaded without its heavy package deps) and a
re-implementation of score_sde_pytorch's likelihood path (scipy RK45 + one Hutchinson probe).

k-diffusion
-----------
Install with ``pip install --no-deps k-diffusion`` (0.1.1.post1). ``import k_diffusion`` pulls in
skimage, PIL, torchvision, safetensors, ... through its package ``__init__``; ``sampling.py`` itself
needs only scipy, torch, torchdiffeq, torchsde, tqdm and ``utils.append_dims``. :func:`load_k_sampling`
therefore loads ``k_diffusion/sampling.py`` by file path as a module of a synthetic package whose
``utils`` submodule provides only ``append_dims`` (same definition: append trailing singleton dims).

Denoiser mapping (VE/EDM parameterisation)
------------------------------------------
k-diffusion integrates :math:`x_{\tilde\sigma} = x_0 + \tilde\sigma n` with a denoiser
:math:`D(x, \tilde\sigma) \approx \mathbb E[x_0\mid x_{\tilde\sigma}]`. A linear SDE has
:math:`x_t = \alpha_t x_0 + \sigma_t n`, so :math:`x_t/\alpha_t = x_0 + (\sigma_t/\alpha_t) n`:

.. math:: \tilde\sigma = \sigma_t/\alpha_t = e^{-\lambda_t},\qquad x_{VE} = x_t/\alpha_t,

and Tweedie's formula gives :math:`D(x_{VE}, \tilde\sigma) = (x_t + \sigma_t^2 s(x_t, t))/\alpha_t`
with :math:`x_t = \alpha_t x_{VE}` and :math:`t = \lambda^{-1}(-\log\tilde\sigma)`. For VE
:math:`\alpha = 1` and this is :math:`x + \tilde\sigma^2 s`. The initial state maps the same way
(:math:`x_{VE} = x_T/\alpha_T`), so both libraries start from the SAME noise.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
import types
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from sdesolve_gen.integrate import t_of_lambda

K_DIFFUSION_HINT = "k-diffusion not installed: run `pip install --no-deps k-diffusion` to enable this comparison"


def load_k_sampling() -> Optional[types.ModuleType]:
    """Return k-diffusion's ``sampling`` module, or ``None`` if k-diffusion is not installed.

    Tries ``import k_diffusion.sampling`` first; if the package import fails on a missing heavy
    dependency, loads ``sampling.py`` by path with a minimal ``utils`` shim (see module docstring).
    """
    try:
        import k_diffusion.sampling as ks  # type: ignore

        return ks
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    import os

    path = os.path.join(list(spec.submodule_search_locations)[0], "sampling.py")
    if not os.path.exists(path):
        return None
    pkg_name = "_kdiff_shim"
    if pkg_name + ".sampling" in sys.modules:
        return sys.modules[pkg_name + ".sampling"]
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []  # type: ignore[attr-defined]
    utils = types.ModuleType(pkg_name + ".utils")

    def append_dims(x: Tensor, target_dims: int) -> Tensor:
        n = target_dims - x.ndim
        if n < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
        return x[(...,) + (None,) * n]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules[pkg_name] = pkg
    sys.modules[pkg_name + ".utils"] = utils
    mspec = importlib.util.spec_from_file_location(pkg_name + ".sampling", path)
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[pkg_name + ".sampling"] = mod
    mspec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class KDenoiser(torch.nn.Module):
    r"""The exact score of a linear SDE as a k-diffusion denoiser :math:`D(x_{VE}, \tilde\sigma)`.

    ``forward(x, sigma)`` with ``x`` of shape ``(B, *shape)`` and ``sigma`` of shape ``(B,)`` returns
    :math:`(\alpha_t x + \sigma_t^2 s(\alpha_t x, t))/\alpha_t`, shape of ``x``, where
    :math:`t = \lambda^{-1}(-\log\tilde\sigma)`. ``nfe`` counts calls.
    """

    def __init__(self, sde: Any, score_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.sde, self.score_fn, self.nfe = sde, score_fn, 0
        self._cache: dict = {}

    def time_of(self, sigma_ve: Tensor) -> Tensor:
        """Physical time of a VE noise level (bisection, cached per distinct value)."""
        key = float(sigma_ve)
        if key not in self._cache:
            lam = torch.tensor(-math.log(key), dtype=torch.float64)
            self._cache[key] = t_of_lambda(self.sde, lam).clamp(0.0, self.sde.T)
        return self._cache[key]

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.nfe += 1
        t = self.time_of(sigma.reshape(-1)[0])
        alpha = float(self.sde.alpha(t))
        sig2 = float(self.sde.sigma(t)) ** 2
        xt = alpha * x
        return (xt + sig2 * self.score_fn(xt, t)) / alpha


def rk45_log_likelihood(
    sde: Any, score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, *, eps: float, rtol: float = 1e-5,
    atol: float = 1e-5, seed: int = 0,
) -> dict:
    r"""score_sde_pytorch's likelihood path, re-implemented from its description.

    One Rademacher probe :math:`\epsilon` (Hutchinson), the augmented PF-ODE
    :math:`\dot x = v = f - \tfrac12 g^2 s`, :math:`\dot\ell = \epsilon^\top \partial_x v\,\epsilon`
    on :math:`[\varepsilon, T]`, solved by ``scipy.integrate.solve_ivp(method="RK45")`` on a flat
    float64 numpy state; every right-hand-side call converts numpy -> torch and back, as score_sde
    does. :math:`\log p_\varepsilon(x) = \log\pi(x_T) + \ell(T)` with the SDE's standard prior.

    Returns:
        dict with ``log_prob`` (Tensor ``(B,)``), ``nfe`` (int), ``wall_time`` (s).
    """
    from scipy import integrate

    shape = x.shape
    n = x.numel()
    g = torch.Generator().manual_seed(seed)
    probe = (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(x.dtype)
    nfe = [0]

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nfe[0] += 1
        xt = torch.from_numpy(state[:n]).reshape(shape).to(x.dtype).requires_grad_(True)
        tt = torch.tensor(t, dtype=torch.float64)
        with torch.enable_grad():
            v = sde.drift(xt, tt) - 0.5 * sde.g2(tt).to(x.dtype) * score_fn(xt, tt)
            (gv,) = torch.autograd.grad((v * probe).sum(), xt)
        div = (gv * probe).reshape(shape[0], -1).sum(1)
        return np.concatenate([v.detach().reshape(-1).numpy(), div.detach().numpy()])

    t0 = time.perf_counter()
    init = np.concatenate([x.detach().reshape(-1).to(torch.float64).numpy(), np.zeros(shape[0])])
    sol = integrate.solve_ivp(rhs, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zT = torch.from_numpy(sol.y[:n, -1]).reshape(shape).to(x.dtype)
    delta = torch.from_numpy(sol.y[n:, -1]).to(x.dtype)
    logp = sde.prior_log_prob(zT) + delta
    return {"log_prob": logp, "nfe": nfe[0], "wall_time": time.perf_counter() - t0}

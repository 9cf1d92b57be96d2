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
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

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
            self._cache[key] = self.sde.t_of_lambda(lam).clamp(0.0, self.sde.T)
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


# --------------------------------------------------------------------------------------- diffusers

DIFFUSERS_HINT = "diffusers not installed: run `pip install diffusers` to enable the diffusers peers"


def load_diffusers() -> Optional[types.ModuleType]:
    """Return the ``diffusers`` module, or ``None`` if it is not installed."""
    try:
        import diffusers  # type: ignore

        return diffusers
    except ImportError:
        return None


def diffusers_scheduler(sde: Any, cls_name: str, n_steps: int, **config: Any) -> Any:
    r"""A diffusers scheduler whose discrete process is our SDE, with ``n_steps`` inference steps.

    diffusers' schedulers are discrete VP processes with :math:`\bar\alpha_k` (``alphas_cumprod``) on
    1000 training timesteps. We give them ``trained_betas`` such that
    :math:`\bar\alpha_k = \alpha_{vp}(t_k)^2`, :math:`t_k = \varepsilon + k(T - \varepsilon)/999` (timestep
    999 is :math:`T`, timestep 0 is :math:`\varepsilon`), where :math:`\alpha_{vp} = \alpha/\sqrt{\alpha^2+\sigma^2}`
    is the VP process with the same log-SNR (for VP it is :math:`\alpha`; for VE
    :math:`1/\sqrt{1+\sigma^2}`). ``prediction_type="epsilon"``, ``final_sigmas_type="sigma_min"``
    (the last step ends at :math:`\varepsilon`), other options from ``config``.
    """
    import diffusers  # type: ignore

    k = torch.arange(1000, dtype=torch.float64)
    t = sde.eps + k * (sde.T - sde.eps) / 999
    a2 = torch.exp(2 * sde.log_alpha(t))
    acp = a2 / (a2 + sde.sigma2(t))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    betas = (1 - acp / prev).clamp(min=0.0).numpy()
    cfg = dict(trained_betas=betas, prediction_type="epsilon")
    if cls_name not in ("DDIMScheduler", "DEISMultistepScheduler"):  # DEIS always ends at timestep 0's sigma
        cfg["final_sigmas_type"] = "sigma_min"
    cfg.update(config)
    sch = getattr(diffusers, cls_name)(**cfg)
    sch.set_timesteps(n_steps)
    return sch


def diffusers_sample(sde: Any, score_fn: Callable[[Tensor, Tensor], Tensor], sch: Any, x_T: Tensor,
                     dtype: torch.dtype = torch.float32) -> Tuple[Tensor, int, Tensor]:
    r"""Run a configured diffusers scheduler from our :math:`x_T`; return ``(x(eps), nfe, times)``.

    State mapping: the VP-equivalent state is :math:`x/c(t)`, :math:`c = \sqrt{\alpha^2+\sigma^2}`
    (1 for VP). The model is evaluated at the continuous time of the scheduler's noise level
    :math:`\tilde\sigma_k` = ``sch.sigmas[k]`` (:math:`t = \lambda^{-1}(-\log\tilde\sigma_k)`), so each
    evaluation is the exact :math:`\hat\epsilon = -\sigma_t s(x_t, t)` at the noise level the
    scheduler's update assumes (timesteps rounded by diffusers do not matter). With Karras sigmas
    diffusers appends the last sigma twice (a final step of size 0, which would cost one NFE and
    divide by zero); the loop stops before it, so ask for one more inference step than the NFE
    budget (:func:`diffusers_steps_for`). The loop runs in
    ``dtype`` (float32 by default); ``times`` are the times visited, for running our samplers on
    the same grid.
    """
    sig = sch.sigmas.to(torch.float64)
    lam = -torch.log(sig.clamp(min=1e-30))
    times = sde.t_of_lambda(lam).clamp(max=sde.T)
    times[0] = min(float(times[0]), sde.T)

    def c_of(t: Tensor) -> float:
        return float(torch.sqrt(torch.exp(2 * sde.log_alpha(t)) + sde.sigma2(t)))

    x = (x_T.to(torch.float64) / c_of(times[0])).to(dtype)
    nfe = 0
    for k, ts in enumerate(sch.timesteps):
        if float(sig[k + 1]) == float(sig[k]):
            break  # degenerate zero-length final step (see above)
        t = times[k]
        c, sigma = c_of(t), float(torch.sqrt(sde.sigma2(t)))
        xt = x.to(torch.float64) * c
        eps = (-sigma * score_fn(xt, t)).to(dtype)
        nfe += 1
        x = sch.step(eps, ts, x).prev_sample
    times = times[: nfe + 1]
    return x.to(torch.float64) * c_of(times[-1]), nfe, times


def diffusers_steps_for(nfe: int, config: dict) -> int:
    """Inference steps giving ``nfe`` evaluations (Karras grids: one more, the last being degenerate)."""
    return nfe + 1 if config.get("use_karras_sigmas") else nfe

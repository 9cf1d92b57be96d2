"""Sampler configurations shared by the sampler tests and the bias measurement script."""

import torch

import sdesolve_gen as sg
from sdesolve_gen import correctors as C
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps

F64 = torch.float64


def target():
    """An anisotropic 2-D, 3-component mixture (one thin component: a hard target)."""
    return sg.analytic.GaussianMixture(
        torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.6, -0.25], [-0.25, 0.4]], [[0.1, 0.0], [0.0, 0.5]]]),
        torch.tensor([0.3, 0.5, 0.2]),
    )


_VP_REFERENCE = {}


def vp_reference():
    """``(sde, data, x_T, ref)``: VP, :func:`target`, 1000 prior draws (seed 0) and their dopri5
    (rtol = atol = 1e-9) probability-flow solutions at eps; computed once per process."""
    if "vp" not in _VP_REFERENCE:
        sde, data = sg.VPSDE(), target()
        x_T = data.prior(sde).sample(1000, generator=torch.Generator().manual_seed(0), dtype=F64)
        ref = S.ode(sde, data.score_fn(sde), x_T, timesteps(sde, 1), rtol=1e-9, atol=1e-9).x
        _VP_REFERENCE["vp"] = (sde, data, x_T, ref)
    return _VP_REFERENCE["vp"]


VP, VE = sg.VPSDE(), sg.VESDE(sigma_min=0.01, sigma_max=20.0)

# name -> (sde, sampler, grid, kwargs)
CONFIGS = {
    "euler_maruyama": (VP, S.euler_maruyama, lambda s: timesteps(s, 200), {}),
    "reverse_diffusion": (VP, S.reverse_diffusion, lambda s: timesteps(s, 200), {}),
    "ancestral_vp": (VP, S.ancestral, lambda s: timesteps(s, 200), {}),
    "ancestral_ve": (VE, S.ancestral, lambda s: timesteps(s, 200), {}),
    "pc_ve": (VE, C.predictor_corrector, lambda s: timesteps(s, 100), {"snr": 0.16}),
    "ode": (VP, S.ode, lambda s: timesteps(s, 1), {"rtol": 1e-5, "atol": 1e-5}),
    "heun": (VP, S.heun, lambda s: timesteps(s, 20, kind="edm"), {}),
    "dpm_solver2": (VP, S.dpm_solver, lambda s: timesteps(s, 20, kind="logsnr"), {"order": 2}),
    "dpm_solver3": (VP, S.dpm_solver, lambda s: timesteps(s, 10, kind="logsnr"), {"order": 3}),
    "dpm_solver_pp_2m": (VE, S.dpm_solver_pp_2m, lambda s: timesteps(s, 20, kind="logsnr"), {}),
    "adaptive_sde": (VP, S.adaptive_sde, lambda s: timesteps(s, 1), {"rtol": 1e-2, "atol": 1e-2}),
    "dpm_solver_pp_3m": (VP, S.dpm_solver_pp_3m, lambda s: timesteps(s, 10, kind="logsnr"), {}),
    "unipc_bh2_3": (VE, S.unipc, lambda s: timesteps(s, 10, kind="logsnr"), {"order": 3}),
    "deis3": (VP, S.deis, lambda s: timesteps(s, 10, kind="logsnr"), {}),
    "dpm_solver_adaptive": (VP, S.dpm_solver_adaptive, lambda s: timesteps(s, 1), {}),
    "dpm_solver_pp_2m_sde": (VP, S.dpm_solver_pp_2m_sde, lambda s: timesteps(s, 50, kind="logsnr"), {}),
    "edm_sde": (VP, S.edm_sde, lambda s: timesteps(s, 30, kind="edm"), {}),
    "sa_solver": (VE, S.sa_solver, lambda s: timesteps(s, 50, kind="logsnr"), {}),
    "annealed_langevin": (VE, C.annealed_langevin, lambda s: timesteps(s, 50), {"n_steps_each": 10, "step_lr": 1e-4}),
}


def run(name, score_sde_data, n, seed):
    """Sample ``n`` points with config ``name`` from the exact prior of ``score_sde_data``."""
    sde, fn, grid, kw = CONFIGS[name]
    data = score_sde_data
    x_T = target().prior(sde).sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return fn(sde, data.score_fn(sde), x_T, grid(sde), generator=torch.Generator().manual_seed(seed + 1), **kw)


def stats(data, sde, x):
    """(mean error (D,), variance error (D,), occupancy error (K,))."""
    labels = data.log_responsibilities(x, sde.eps, sde).argmax(1)
    occ = torch.bincount(labels, minlength=data.n_components).to(F64) / x.shape[0]
    ref = data.marginal(sde.eps, sde)
    return x.mean(0) - ref.mean, x.var(0) - torch.diagonal(ref.cov), occ - _ref_occupancy(data, sde)


_OCC = {}


def _ref_occupancy(data, sde):
    """Exact-sample occupancy of the argmax labelling at eps (computed once, 400k samples)."""
    key = (id(data), repr(sde))
    if key not in _OCC:
        x = data.marginal(sde.eps, sde).sample(400_000, generator=torch.Generator().manual_seed(99), dtype=F64)
        labels = data.log_responsibilities(x, sde.eps, sde).argmax(1)
        _OCC[key] = torch.bincount(labels, minlength=data.n_components).to(F64) / x.shape[0]
    return _OCC[key]


# Discretisation-bias budgets, measured by tests/_measure_sampler_bias.py (200k samples per
# config: 10 seeded chunks of 20k from the exact prior). Each entry is |measured bias| + 2 SE of
# the measurement, for (mean per coordinate, variance per coordinate, occupancy per component).
BIAS = {
    "euler_maruyama": ([0.0092, 0.0077], [0.0267, 0.0144], [0.0027, 0.0025, 0.0027]),
    "reverse_diffusion": ([0.0132, 0.0077], [0.0232, 0.0146], [0.0029, 0.0036, 0.0022]),
    "ancestral_vp": ([0.0075, 0.0128], [0.0563, 0.05], [0.0022, 0.0044, 0.0041]),
    "ancestral_ve": ([0.0151, 0.0162], [0.0589, 0.0561], [0.0035, 0.007, 0.0051]),
    "pc_ve": ([0.009, 0.0147], [0.0185, 0.031], [0.0023, 0.0043, 0.004]),
    "ode": ([0.017, 0.0071], [0.0274, 0.0111], [0.0041, 0.0053, 0.0028]),
    "heun": ([0.0175, 0.008], [0.122, 0.0921], [0.0035, 0.0047, 0.0028]),
    "dpm_solver2": ([0.0173, 0.0058], [0.0622, 0.0465], [0.0038, 0.005, 0.0028]),
    "dpm_solver3": ([0.0167, 0.006], [0.0356, 0.0147], [0.004, 0.0052, 0.0028]),
    "dpm_solver_pp_2m": ([0.0191, 0.0095], [0.0412, 0.0285], [0.0045, 0.0064, 0.0035]),
    "adaptive_sde": ([0.0086, 0.0063], [0.023, 0.0129], [0.0024, 0.0032, 0.0031]),
    "dpm_solver_pp_3m": ([0.0228, 0.0135], [0.0922, 0.0818], [0.0038, 0.0061, 0.0039]),
    "unipc_bh2_3": ([0.0163, 0.0087], [0.1273, 0.0697], [0.0027, 0.0045, 0.0034]),
    "deis3": ([0.0281, 0.0226], [0.0935, 0.0692], [0.0084, 0.0106, 0.0038]),
    "dpm_solver_adaptive": ([0.0193, 0.0112], [0.0522, 0.0316], [0.0051, 0.0064, 0.0029]),
    "dpm_solver_pp_2m_sde": ([0.0082, 0.007], [0.0325, 0.0301], [0.0025, 0.0033, 0.0033]),
    "edm_sde": ([0.0145, 0.0066], [0.1437, 0.0954], [0.0043, 0.0027, 0.0036]),
    "sa_solver": ([0.0115, 0.0097], [0.0315, 0.0226], [0.0032, 0.0033, 0.004]),
    "annealed_langevin": ([0.0184, 0.0112], [0.0181, 0.0412], [0.0054, 0.0044, 0.003]),
}

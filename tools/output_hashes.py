"""Fixed-seed output hashes of every sampler, ``sdeint``, ``odeint`` and the likelihood.

Run before and after a refactor that must not change behaviour and compare the two outputs::

    OMP_NUM_THREADS=1 python tools/output_hashes.py > before.txt
    ... refactor ...
    OMP_NUM_THREADS=1 python tools/output_hashes.py | diff before.txt -

``python tools/output_hashes.py OUT.pt`` also saves the outputs, to measure a difference that a
deliberate numerical change (not a refactor) makes.

Each line is ``name sha256(float64 bytes of the output)[:16]``. The script accepts both the old
tuple returns and result objects (``.x``/``.ys``) so it can be run on either side of a change.
"""

from __future__ import annotations

import hashlib

import torch

import sdesolve_gen as sg

torch.set_num_threads(1)
F64 = torch.float64


def _tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    for name in ("ys", "x"):
        v = getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(type(out))


def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to(F64).contiguous().numpy().tobytes()).hexdigest()[:16]


def main(save: str = "") -> None:
    """Print the hashes; with ``save``, also ``torch.save`` the outputs there (to measure differences)."""
    outputs = {}
    data = sg.analytic.GaussianMixture(
        torch.tensor([[-2.0, 0.5], [1.5, 1.0]], dtype=F64),
        torch.stack([0.3 * torch.eye(2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)]),
        torch.tensor([0.4, 0.6], dtype=F64),
    )
    vp, ve = sg.VPSDE(), sg.VESDE(sigma_min=0.01, sigma_max=20.0)
    rows = {}
    for sde_name, sde in (("vp", vp), ("ve", ve)):
        score = data.score_fn(sde)
        x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)

        def gen():
            return torch.Generator().manual_seed(1)

        ts = sg.timesteps(sde, 12, kind="logsnr")
        calls = {
            "euler_maruyama": lambda: sg.euler_maruyama(sde, score, x_T, ts, generator=gen()),
            "reverse_diffusion": lambda: sg.reverse_diffusion(sde, score, x_T, ts, generator=gen()),
            "ancestral": lambda: sg.ancestral(sde, score, x_T, ts, generator=gen()),
            "ancestral_denoise": lambda: sg.ancestral(sde, score, x_T, ts, generator=gen(), denoise=True),
            "pc": lambda: sg.predictor_corrector(sde, score, x_T, ts, generator=gen(), snr=0.16),
            "annealed_langevin": lambda: sg.annealed_langevin(sde, score, x_T, ts, generator=gen(), n_steps_each=2),
            "ode_dopri5": lambda: sg.ode(sde, score, x_T, ts, rtol=1e-5, atol=1e-5),
            "ode_rk4": lambda: sg.ode(sde, score, x_T, ts, method="rk4"),
            "heun": lambda: sg.heun(sde, score, x_T, ts),
            "dpm_solver1": lambda: sg.dpm_solver(sde, score, x_T, ts, order=1),
            "dpm_solver2": lambda: sg.dpm_solver(sde, score, x_T, ts, order=2),
            "dpm_solver3": lambda: sg.dpm_solver(sde, score, x_T, ts, order=3),
            "dpm_solver_pp_2m": lambda: sg.dpm_solver_pp_2m(sde, score, x_T, ts),
            "adaptive_sde": lambda: sg.adaptive_sde(sde, score, x_T, ts, generator=gen()),
            "sdeint_euler": lambda: sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, method="euler", generator=gen()),
            "sdeint_euler_dt": lambda: sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts[[0, 5, -1]], dt=0.05, generator=gen()),
            "sdeint_milstein": lambda: sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, method="milstein", generator=gen()),
            "sdeint_srk": lambda: sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, method="srk", seed=3),
            "sdeint_forward": lambda: sg.sdeint(sde, data.sample(64, generator=gen(), dtype=F64), torch.flip(ts, [0]), seed=4),
            "odeint_dopri5": lambda: sg.odeint(sg.ProbabilityFlowODE(sde, score), x_T, ts[[0, -1]], rtol=1e-6, atol=1e-6),
            "odeint_rk4": lambda: sg.odeint(sg.ProbabilityFlowODE(sde, score), x_T, ts, method="rk4"),
        }
        mask = torch.tensor([True, False]).expand(8, 2)
        x_known = data.sample(8, generator=gen(), dtype=F64)
        calls["inpaint"] = lambda: sg.inpaint(sde, score, x_known, mask, ts, generator=gen())
        for name, fn in calls.items():
            out = _tensor(fn())
            rows[f"{sde_name}.{name}"] = _hash(out)
            outputs[f"{sde_name}.{name}"] = out.detach().clone()
        x = data.sample(16, generator=gen(), dtype=F64)
        for div in ("exact", "hutchinson"):
            probes = {"n_probes": 2} if div == "hutchinson" else {}  # (exact refuses Hutchinson options; it ignored them)
            res = sg.log_likelihood(sde, score, x, divergence=div, generator=gen(), rtol=1e-5, atol=1e-5, **probes)
            rows[f"{sde_name}.log_likelihood_{div}"] = _hash(res.log_prob)
            outputs[f"{sde_name}.log_likelihood_{div}"] = res.log_prob.detach().clone()
    for k, v in rows.items():
        print(k, v)
    if save:
        torch.save(outputs, save)


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "")

"""Value tests for :func:`sdesolve_gen.generate.generate`'s option wiring.

Bug class guarded: an option of ``generate`` accepted but not passed on to the sampler
(``denoise``, per-seed ``model_kwargs``, ``noise``, ``dtype``, ``png_fn``), or a batch cut at the
wrong seed. Oracle: the documented per-seed definition: the sample of seed ``s`` is the
registered sampler run alone on ``x_T = sde.prior_sample(generator=SeedStreams([s], method))``
with the same streams, grid and keyword arguments, written here by hand one seed at a time.
"""

from __future__ import annotations

import torch

import sdesolve_gen as sg
from sdesolve_gen.generate import generate, load_samples
from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.seeds import SeedStreams

SEEDS = list(range(3, 10))  # 7 seeds in batches of 3: 3 + 3 + 1


def _score(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A per-sample conditioned score -c x (a Gaussian of variance 1/c), c of shape (B,)."""
    return -x * c[:, None]


def _c(seeds: torch.Tensor) -> torch.Tensor:
    return 1.0 + seeds.double() / 10.0


def _one_seed(sde, s: int, *, denoise: bool, method: str, c=None, steps: int = 5) -> torch.Tensor:
    spec = SAMPLERS["euler_maruyama"]
    streams = SeedStreams([s], method=method)
    x_T = sde.prior_sample((1, 2), generator=streams, dtype=torch.float64)
    c = _c(torch.tensor([s])) if c is None else c
    return spec(sde, _score, x_T, spec.timesteps(sde, steps), generator=streams, denoise=denoise,
                model_kwargs={"c": c}).x[0]


def test_generate_forwards_denoise_model_kwargs_noise_and_dtype(tmp_path):
    """generate(denoise=True, model_kwargs=callable of the batch's seeds, noise='generator',
    dtype=float64, batch_size=3) writes for every seed the sample of the hand-run single-seed
    sampler with those options (VP SDE, T = 0.9, eps = 0.05). Controls: without denoise, with one shared c,
    or with the philox streams the single-seed oracle differs by far more than the tolerance."""
    sde = sg.VPSDE(T=0.9, eps=0.05)  # a large eps: the final Tweedie step is visible
    shown = []
    generate(sde, _score, "euler_maruyama", f"{SEEDS[0]}-{SEEDS[-1]}", tmp_path, batch_size=3, shape=(2,), steps=5,
             denoise=True, model_kwargs=lambda s: {"c": _c(s)}, dtype=torch.float64, noise="generator", png=True,
             png_fn=lambda x, path: (shown.append(x.clone()), path.write_bytes(b"png")), progress=False)
    x, seeds = load_samples(tmp_path)
    assert seeds.tolist() == SEEDS and x.dtype == torch.float64 and x.shape == (7, 2)
    want = torch.stack([_one_seed(sde, s, denoise=True, method="generator") for s in SEEDS])
    tol = 1e-12  # float64 elementwise arithmetic; batch and single runs round alike
    assert float((x - want).abs().max()) <= tol
    for other in (torch.stack([_one_seed(sde, s, denoise=False, method="generator") for s in SEEDS]),
                  torch.stack([_one_seed(sde, s, denoise=True, method="generator", c=_c(torch.tensor([SEEDS[0]])))
                               for s in SEEDS]),
                  torch.stack([_one_seed(sde, s, denoise=True, method="philox") for s in SEEDS])):
        assert float((x - other).abs().max()) > 1e-3
    # png_fn got each batch's samples, in batch order
    assert [len(v) for v in shown] == [3, 3, 1]
    assert torch.equal(torch.cat(shown), x)
    assert len(list(tmp_path.glob("*.png"))) == 3

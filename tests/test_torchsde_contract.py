"""The contract with torchsde's internals (see ``sdesolve_gen/_torchsde_contract.py``).

On a uniform grid whose step is exact in binary (dt = 1/8), ``torchsde.sdeint`` itself lands
exactly on every step, so our exact-grid stepping with torchsde's own solver classes must
reproduce it bit for bit for every method we expose, given the same Brownian path. If a torchsde
upgrade changes its solvers' internals this fails loudly, as does the version check.
"""

from __future__ import annotations

import pytest
import torch
import torchsde

import sdesolve_gen as sg
from sdesolve_gen import _torchsde_contract as contract

F64 = torch.float64


def test_installed_torchsde_is_a_tested_version():
    assert torchsde.__version__ in contract.TESTED_VERSIONS
    contract.check_version()


def test_an_untested_version_is_refused(monkeypatch):
    monkeypatch.setattr(torchsde, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="torchsde 9.9.9"):
        contract.check_version()


def _bm(seed, levy):
    return torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(6, 2), dtype=F64, entropy=seed, levy_area_approximation=levy)


@pytest.mark.parametrize("method, sde_type, levy", [("euler", "ito", "none"), ("milstein", "ito", "none"),
                                                     ("srk", "ito", "space-time"), ("heun", "stratonovich", "none"),
                                                     ("midpoint", "stratonovich", "none")])
def test_exact_grid_stepping_reproduces_torchsde_sdeint(method, sde_type, levy):
    sde = sg.VPSDE()
    score = sg.analytic.Gaussian(torch.zeros(2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)).score_fn(sde)
    rsde = sg.ReverseSDE(sde, score, sde_type=sde_type)
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = torch.linspace(1.0, 0.0, 9, dtype=F64)  # physical T -> 0; solver time 0, 1/8, ..., 1 (exact in binary)
    ours = sg.sdeint(rsde, x_T, ts, method=method, bm=_bm(3, levy)).ys
    ref = torchsde.sdeint(rsde, x_T, rsde.solver_times(ts), bm=_bm(3, levy), method=method, dt=0.125)
    assert torch.equal(ours, ref)
    other = sg.sdeint(rsde, x_T, ts, method=method, bm=_bm(4, levy)).ys  # control: another path differs
    assert not torch.allclose(other, ref)


def test_adaptive_step_counts_follow_torchsde_three_queries_per_attempt():
    queries = [(0.0, 0.1), (0.0, 0.05), (0.05, 0.1), (0.0, 0.05), (0.0, 0.025), (0.025, 0.05), (0.05, 0.1), (0.05, 0.075), (0.075, 0.1)]
    assert contract.adaptive_step_counts(queries) == (2, 1)  # attempts from 0, 0 (rejected then accepted), 0.05
    with pytest.raises(RuntimeError, match="query pattern"):
        contract.adaptive_step_counts(queries[:4])


def test_method_options_are_the_ones_torchsde_reads():
    """sdeint refuses solver options outside METHOD_OPTIONS; the set must be torchsde's own."""
    from torchsde.settings import METHOD_OPTIONS

    assert set(contract.METHOD_OPTIONS) == {getattr(METHOD_OPTIONS, k) for k in vars(METHOD_OPTIONS)
                                             if not k.startswith("_")}

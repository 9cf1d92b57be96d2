"""The one place that uses torchsde beyond its public API, and the versions it is known to hold for.

Why: a fixed-step solve must land *exactly* on every time of a non-uniform grid.
``torchsde.sdeint`` steps with one constant ``dt`` from ``ts[0]`` and returns values at output
times by linear interpolation between its own steps, which shrinks the variance of the Brownian
part on a non-uniform grid (and costs extra drift calls from accumulated float time). torchsde
has no public "step from t0 to t1" call, so :func:`stepper` builds torchsde's own solver class for
a method (``torchsde._core.methods.select``) on torchsde's own SDE wrapper
(``torchsde._core.base_sde.ForwardSDE``) and :mod:`sdesolve_gen.integrate` calls its ``step``.

The contract is tested (``tests/test_torchsde_contract.py``): on a uniform grid, where
``torchsde.sdeint`` itself lands exactly on every step, our stepping reproduces
``torchsde.sdeint`` bit for bit for every method we expose. setup.cfg bounds torchsde to the
versions in :data:`TESTED_VERSIONS`; :func:`check_version` fails loudly on any other version, so an
upgrade is a deliberate change with this test re-run, never a silent one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
import torchsde

__all__ = ["TESTED_VERSIONS", "METHOD_OPTIONS", "check_version", "stepper", "adaptive_step_counts"]

#: torchsde versions whose solver internals the contract test covers.
TESTED_VERSIONS = ("0.2.6",)

#: The solver options torchsde 0.2.6 reads (``torchsde.settings.METHOD_OPTIONS``: milstein's
#: ``grad_free``); torchsde ignores any other key silently, so :func:`~sdesolve_gen.sdeint` refuses them.
METHOD_OPTIONS = frozenset({"grad_free"})

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], Tuple[torch.Tensor, Any]]


def check_version() -> None:
    """Raise ``RuntimeError`` unless the installed torchsde is one of :data:`TESTED_VERSIONS`."""
    version = getattr(torchsde, "__version__", "unknown")
    if version not in TESTED_VERSIONS:
        raise RuntimeError(
            f"sdesolve_gen's exact-grid SDE stepping was verified against torchsde {TESTED_VERSIONS}, "
            f"but torchsde {version} is installed; install a tested version or re-run "
            "tests/test_torchsde_contract.py and extend TESTED_VERSIONS"
        )


def stepper(sde: Any, method: str, bm: Any, dt: float, options: Dict[str, Any]) -> Tuple[Step, Callable[..., Any]]:
    """torchsde's solver for ``method`` on ``sde``: ``(step, init_extra)``.

    ``step(t0, t1, y0, extra) -> (y1, extra)`` advances from ``t0`` to ``t1`` with increments
    of ``bm``; ``init_extra(t0, y0)`` gives the solver's initial extra state.
    """
    check_version()
    from torchsde._core import methods
    from torchsde._core.base_sde import ForwardSDE

    wrapped = ForwardSDE(sde)
    solver = methods.select(method=method, sde_type=wrapped.sde_type)(
        sde=wrapped, bm=bm, dt=dt, adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0, options=dict(options),
    )
    return solver.step, solver.init_extra_solver_state


def adaptive_step_counts(queries: List[Tuple[float, float]]) -> Tuple[int, int]:
    """``(accepted, rejected)`` steps of an adaptive ``torchsde.sdeint`` from its Brownian queries.

    torchsde's adaptive loop makes three Brownian queries per attempted step from ``t0`` with
    size ``dt``: the full step ``(t0, t0 + dt)`` and the two half steps ``(t0, t0 + dt/2)``,
    ``(t0 + dt/2, t0 + dt)``. Every attempt starts from the current time, which moves only when a
    step is accepted, so the accepted steps are the distinct start times and the rest of the
    attempts were rejected. (Covered by the contract test.)
    """
    if len(queries) % 3:
        raise RuntimeError(f"unexpected torchsde adaptive query pattern ({len(queries)} queries); see _torchsde_contract")
    starts = [queries[k][0] for k in range(0, len(queries), 3)]
    accepted = len(set(starts))
    return accepted, len(starts) - accepted

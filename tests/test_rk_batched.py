"""Per-sample step-size control (sdesolve_gen.rk_batched) and its use by log_likelihood.

Oracles: the Runge-Kutta order conditions b^T Phi(tau) = 1/gamma(tau) over all rooted trees
(Butcher), closed-form solutions y = exp(-k t) of dy/dt = -k y, and the analytic log density of
Gaussian mixtures.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.analytic import GaussianMixture
from sdesolve_gen.rk_batched import DOPRI5, Tableau, extrapolation_tableau, rms_error_ratio, solve_per_sample

Tree = Tuple[Tuple[int, "Tree"], ...]  # a rooted tree: its children as (size, subtree), sorted


@lru_cache(maxsize=None)
def _trees(n: int) -> Tuple[Tree, ...]:
    """All rooted trees with n nodes (counts 1, 1, 2, 4, 9, 20, 48, 115, 286 for n = 1..9)."""
    if n == 1:
        return ((),)

    def forests(rem: int, cap) -> List[Tree]:
        if rem == 0:
            return [()]
        out = []
        for m in range(rem, 0, -1):
            for tr in _trees(m):
                key = (m, tr)
                if cap is not None and key > cap:
                    continue
                out += [(key,) + rest for rest in forests(rem - m, key)]
        return out

    return tuple(sorted({tuple(sorted(f)) for f in forests(n - 1, None)}))


def _phi(tree: Tree, A: torch.Tensor) -> torch.Tensor:
    """Elementary weight vector: Phi(leaf) = 1, Phi([t1..tm]) = prod_i A Phi(t_i) (element-wise)."""
    v = torch.ones(A.shape[0], dtype=torch.float64)
    for _, child in tree:
        v = v * (A @ _phi(child, A))
    return v


def _gamma(tree: Tree, n: int) -> int:
    g = n
    for m, child in tree:
        g *= _gamma(child, m)
    return g


def _worst_residual(A: torch.Tensor, w: torch.Tensor, order: int) -> float:
    """max over trees with exactly ``order`` nodes of |gamma(tau) w^T Phi(tau) - 1|."""
    return max(abs(float(w @ _phi(tr, A)) * _gamma(tr, order) - 1.0) for tr in _trees(order))


def test_tree_counts():
    assert [len(_trees(n)) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]  # OEIS A000081


@pytest.mark.parametrize("tab", [DOPRI5, extrapolation_tableau((2, 4, 6, 8)), extrapolation_tableau((2, 4, 6))],
                         ids=lambda t: t.name)
def test_tableau_satisfies_exactly_its_order_conditions(tab: Tableau):
    """b satisfies every condition up to ``order`` (to 1e-12) and violates one of order + 1 (> 1e-3);
    the same for b_hat and ``embedded_order``; c = A 1."""
    c, A, b, bh = tab.matrix()
    assert float((A.sum(1) - c).abs().max()) < 1e-14
    assert bool((A.triu() == 0).all())  # explicit
    for w, p in ((b, tab.order), (bh, tab.embedded_order)):
        for n in range(1, p + 1):
            assert _worst_residual(A, w, n) < 1e-12, (tab.name, p, n)
        assert _worst_residual(A, w, p + 1) > 1e-3, (tab.name, p)  # negative control: not order p + 1
    if tab.fsal:
        torch.testing.assert_close(A[-1], b, rtol=0, atol=0)
        assert c[-1] == 1.0


# ------------------------------------------------------------------ independent scalar ODEs

K = torch.logspace(-1, 2, 7, dtype=torch.float64)  # decay rates 0.1 .. 100
TOL = 1e-8


def _decay(k: torch.Tensor):
    def f(t, y, idx):
        assert t.shape == idx.shape == (y[0].shape[0],)  # a time per active sample
        return (-k[idx][:, None] * y[0],)

    return f


def _solve(k: torch.Tensor, **kw):
    y0 = (torch.ones(k.numel(), 1, dtype=torch.float64),)
    return solve_per_sample(_decay(k), y0, 0.0, 1.0, error_ratio=rms_error_ratio(TOL, TOL), **kw)


@pytest.mark.parametrize("tab", [DOPRI5, extrapolation_tableau()], ids=lambda t: t.name)
def test_each_sample_within_its_budget_and_stiffer_samples_take_more_steps(tab):
    """Budget per sample: dy/dt = -k y is contractive, so the global error is at most the sum of
    the local errors, each below atol + rtol |y| <= 2 TOL when the embedded estimate bounds the
    propagated solution's local error (local extrapolation): |err_i| <= 2 TOL n_steps_i.
    Negative control: a ratio that never rejects (r = 0: every step grows 10x) breaks the budget."""
    sol = _solve(K, tableau=tab)
    err = (sol.y[0][:, 0] - torch.exp(-K)).abs()
    assert bool((err <= 2 * TOL * sol.n_steps).all()), (err / TOL).tolist()
    steps = sol.n_steps
    assert bool((steps[1:] >= steps[:-1]).all()) and int(steps[-1]) >= 5 * int(steps[0]), steps.tolist()
    # one batched call per stage over the active samples: with FSAL the last sample to finish is
    # in every call (without, the new first stage is evaluated for the accepted samples only)
    assert sol.nfe == len(sol.active_sizes) and (sol.nfe == int(sol.n_evals.max()) if tab.fsal else sol.nfe >= int(sol.n_evals.max()))
    assert sol.active_sizes[0] == K.numel() and sol.active_sizes[-1] < K.numel()  # finished samples dropped
    assert sum(sol.active_sizes) == int(sol.n_evals.sum())
    bad = solve_per_sample(_decay(K), (torch.ones(K.numel(), 1, dtype=torch.float64),), 0.0, 1.0,
                           error_ratio=lambda e, a, b: torch.zeros(e[0].shape[0], dtype=torch.float64), tableau=tab)
    bad_err = (bad.y[0][:, 0] - torch.exp(-K)).abs()
    assert not bool((bad_err <= 2 * TOL * bad.n_steps).all())


def test_a_sample_does_not_depend_on_its_batch_bit_for_bit():
    """Each sample alone equals the same sample in the batch exactly (torch.equal; element-wise
    arithmetic only). Negative control: torchdiffeq's shared-step dopri5 under the same per-sample
    norm, where the easy sample takes the stiff sample's small steps, differs by > 1e-13."""
    sol = _solve(K)
    for i in (0, 3, 6):
        alone = _solve(K[i : i + 1])
        assert torch.equal(alone.y[0][0], sol.y[0][i]), i
        assert int(alone.n_steps[0]) == int(sol.n_steps[i])

    def shared(k):
        def norm(e):
            return e.reshape(e.shape[0], -1).pow(2).mean(1).sqrt().max()

        return sg.odeint(lambda t, y: -k[:, None] * y, torch.ones(k.numel(), 1, dtype=torch.float64),
                         torch.tensor([0.0, 1.0], dtype=torch.float64), method="dopri5", rtol=TOL, atol=TOL,
                         options={"norm": norm}, save="final").x

    both = shared(K[[0, 6]])
    alone0 = shared(K[:1])
    assert float((both[0] - alone0[0]).abs().max()) > 1e-13


def test_backwards_and_tuple_state():
    """t1 < t0 with a two-component state: y(t) = e^{-k t}, z(t) = e^{-2 k t}/2 from t0=1 to 0."""
    k = torch.tensor([0.5, 3.0], dtype=torch.float64)

    def f(t, y, idx):
        return (-k[idx][:, None] * y[0], -2 * k[idx][:, None, None] * y[1])

    y0 = (torch.exp(-k)[:, None], (0.5 * torch.exp(-2 * k))[:, None, None].expand(2, 2, 3).clone())
    sol = solve_per_sample(f, y0, 1.0, 0.0, error_ratio=rms_error_ratio(TOL, TOL))
    # backwards the ODE is expanding: budget n_steps * 2 TOL * e^{2k} (the growth of a local error)
    bound = 2 * TOL * sol.n_steps * torch.exp(2 * k)
    assert bool(((sol.y[0][:, 0] - 1).abs() <= bound).all())
    assert bool(((sol.y[1] - 0.5).abs().amax((1, 2)) <= bound).all())


# ------------------------------------------------------------------ bad input


def test_bad_input_is_named():
    f = _decay(K)
    y0 = (torch.ones(7, 1, dtype=torch.float64),)
    er = rms_error_ratio(1e-6, 1e-6)
    with pytest.raises(TypeError, match="y0"):
        solve_per_sample(f, y0[0], 0.0, 1.0, error_ratio=er)
    with pytest.raises(ValueError, match="y0"):
        solve_per_sample(f, (torch.ones(7, 1), torch.ones(3, 1)), 0.0, 1.0, error_ratio=er)
    with pytest.raises(ValueError, match="t1"):
        solve_per_sample(f, y0, 0.5, 0.5, error_ratio=er)
    with pytest.raises(ValueError, match="safety"):
        solve_per_sample(f, y0, 0.0, 1.0, error_ratio=er, safety=1.5)
    with pytest.raises(ValueError, match="beta"):
        solve_per_sample(f, y0, 0.0, 1.0, error_ratio=er, beta=(0.2, 0.4))
    with pytest.raises(ValueError, match="first_step"):
        solve_per_sample(f, y0, 0.0, 1.0, error_ratio=er, first_step=-1.0)
    with pytest.raises(TypeError, match="error_ratio"):
        solve_per_sample(f, y0, 0.0, 1.0, error_ratio=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        extrapolation_tableau((2, 3))
    with pytest.raises(ValueError, match="steps"):
        extrapolation_tableau((4,))
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_per_sample(f, y0, 0.0, 1.0, error_ratio=er, max_steps=3)
    sde, x = sg.VPSDE(), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="error_control"):
        sg.log_likelihood(sde, lambda x, t: -x, x, method="dopri5_ps", error_control="batch")
    with pytest.raises(ValueError, match="step_size"):
        sg.log_likelihood(sde, lambda x, t: -x, x, method="dopri5_ps", step_size=0.1)
    with pytest.raises(ValueError, match="method"):
        sg.encode(sde, lambda x, t: -x, x, method="dopri5_pss")


# ------------------------------------------------------------------ likelihoods


def _mixture() -> GaussianMixture:
    """Three anisotropic Gaussians in 3-D (eigenvalues 0.05..1 along random rotations)."""
    g = torch.Generator().manual_seed(3)
    covs = []
    for _ in range(3):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)) @ q.T)
    means = 1.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.stack(covs), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_likelihood_per_sample_within_10x_tol(name):
    """Budget 10 x tol per sample against the analytic log density (the issue's goal; tol 1e-6,
    exact divergence, exact prior). Negative control: the same check at a 100x looser controller
    tolerance (still compared with 10 x tol) fails. Also: a sample solved alone gives the same
    log p as in the batch to 1e-12 nats (independent steps; the exact trace's batched kernels may
    round differently per batch size). Measured: max 0.09 / 1.7 / 0.28 x tol (VP / VE / sub-VP),
    control 33 / 397 / 66 x tol, alone vs batch <= 4.4e-16 nats."""
    sde = {"vp": sg.VPSDE, "ve": sg.VESDE, "subvp": sg.SubVPSDE}[name]()
    data = _mixture()
    x = data.sample(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = data.log_prob_t(x, sde.eps, sde)
    tol = 1e-6
    kw = dict(method="dopri5_ps", divergence="exact", prior=data.prior(sde))
    res = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=tol, atol=tol, **kw)
    err = (res.log_prob - exact).abs()
    assert float(err.max()) <= 10 * tol, float(err.max()) / tol
    steps = res.extra["n_steps"]
    assert steps.shape == (48,) and int(steps.min()) < int(steps.max())  # samples took their own steps
    assert res.nfe == int(res.extra["n_evals"].max())
    loose = sg.log_likelihood(sde, data.score_fn(sde), x, rtol=100 * tol, atol=100 * tol, **kw)
    assert float((loose.log_prob - exact).abs().max()) > 10 * tol
    for i in (int(err.argmax()), 0):
        one = sg.log_likelihood(sde, data.score_fn(sde), x[i : i + 1], rtol=tol, atol=tol, **kw)
        assert abs(float(one.log_prob[0] - res.log_prob[i])) <= 1e-12


def test_probes_and_model_kwargs_follow_their_samples():
    """The active samples' probes and conditioning are sliced by their batch index on every call.

    Hutchinson with explicit probes (K = 2): each probe's estimate is an ODE solve of its own, so
    dopri5_ps and the default dopri8 (both per-sample budgets of 10 x tol) agree per sample and
    probe within 20 x tol. Conditioning: a label per sample selects its Gaussian component (and
    the exact prior of that component); the result must match each sample's analytic log density
    under its own component within the per-sample budget 10 x tol. Negative controls: probes
    permuted across samples, and labels rolled, break the same checks. Measured: 0.66 x tol
    (probes) and 0.02 x tol (conditioning); controls 3.4e4 and 3.1e6 x tol."""
    sde, tol = sg.VPSDE(), 1e-4
    data = _mixture()
    x = data.sample(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    probes = torch.randint(0, 2, (2, 3, 3), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    kw = dict(rtol=tol, atol=tol, divergence="hutchinson", prior=data.prior(sde))
    ps = sg.log_likelihood(sde, data.score_fn(sde), x, method="dopri5_ps", probes=probes, **kw)
    ref = sg.log_likelihood(sde, data.score_fn(sde), x, probes=probes, **kw)
    assert float((ps.per_probe - ref.per_probe).abs().max()) <= 20 * tol
    perm = sg.log_likelihood(sde, data.score_fn(sde), x, method="dopri5_ps", probes=probes[:, [1, 2, 0]], **kw)
    assert float((perm.per_probe - ref.per_probe).abs().max()) > 20 * tol

    comps = [GaussianMixture(data.means[c : c + 1], data.covs[c : c + 1], torch.ones(1, dtype=torch.float64)) for c in range(3)]
    label = torch.tensor([2, 0, 1])

    def score(xb, t, *, label):
        tt = t if t.dim() else t.expand(xb.shape[0])
        return torch.cat([comps[int(c)].score_fn(sde)(xb[i : i + 1], tt[i : i + 1]) for i, c in enumerate(label)])

    class Prior:
        def log_prob(self, z):
            return torch.cat([comps[int(c)].prior(sde).log_prob(z[i : i + 1]) for i, c in enumerate(label)])

    own = torch.cat([comps[int(c)].log_prob_t(x[i : i + 1], sde.eps, sde) for i, c in enumerate(label)])
    kw = dict(rtol=tol, atol=tol, divergence="exact", method="dopri5_ps", prior=Prior())
    cond = sg.log_likelihood(sde, score, x, model_kwargs={"label": label}, **kw)
    assert float((cond.log_prob - own).abs().max()) <= 10 * tol
    wrong = sg.log_likelihood(sde, score, x, model_kwargs={"label": label.roll(1)}, **kw)
    assert float((wrong.log_prob - own).abs().max()) > 10 * tol


def test_progress_bar_tracks_the_slowest_sample_and_changes_nothing(monkeypatch):
    """``progress=True``: the bar's position is the slowest active sample's fraction of the time
    span (percent, never decreasing, 100 only when the last sample is done), its postfix the active
    samples and the batched calls so far; the solution is bit-for-bit the one without a bar.
    Oracle: a recording stand-in for tqdm; the stiffest sample solved alone (its steps do not depend
    on the batch) gives its own fraction after each attempt, an upper bound on the batch's minimum
    (a maximum over the samples, the control, exceeds it); the final postfix is the solution's own
    call count with 0 active."""
    import tqdm.auto

    log: List[Tuple[int, dict]] = []
    descs: List[str] = []

    class Recorder:
        def __init__(self, total=None, desc=None, **_):
            self.total, self.n, self.closed = total, 0, False
            descs.append(desc)

        def update(self, k):
            self.n += k
            log.append((self.n, {}))

        def set_postfix(self, refresh=True, **kw):
            log[-1] = (log[-1][0], kw)

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    with_bar = _solve(K, progress=True)
    plain = _solve(K)
    assert torch.equal(with_bar.y[0], plain.y[0]) and torch.equal(with_bar.n_steps, plain.n_steps)
    pos = [n for n, _ in log]
    assert pos == sorted(pos) and pos[-1] == 100 and all(n < 100 for n in pos[:-1])
    assert log[-1][1] == {"active": 0, "calls": with_bar.nfe}
    actives = [kw["active"] for _, kw in log]
    assert actives == sorted(actives, reverse=True) and actives[0] == K.numel()
    log.clear()
    _solve(K[-1:], progress=True)
    stiffest = [n for n, _ in log]
    assert len(stiffest) == len(pos) and all(a <= b for a, b in zip(pos, stiffest))
    with pytest.raises(TypeError, match="progress"):
        _solve(K, progress=1)
    # log_likelihood passes progress on to the independent-step solve
    descs.clear()
    sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2, dtype=torch.float64), method="dopri5_ps",
                      divergence="exact", progress=True)
    assert "solve_per_sample" in descs

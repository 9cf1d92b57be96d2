"""The adaptive exponential multistep PECE (``dpm_solver_adaptive_multistep``) and the controller
options of ``dpm_solver_adaptive``: a hand-written recursion, NFE accounting, tolerance control,
per-sample control, and the exact-mixture law with a wrong-score control."""

import math

import pytest
import torch
from _sampler_configs import F64, target, vp_reference

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import SAMPLERS

_problem = vp_reference


def _lam(sde, t):
    t = torch.as_tensor(t, dtype=F64)
    return float(sde.log_alpha(t) - 0.5 * torch.log(sde.sigma2(t)))


def _coef(sde):
    """lambda -> (t, alpha_t, sigma_t) written from the definitions (t clamped into [eps, T])."""

    def coef(lam):
        t = sde.t_of_lambda(torch.tensor([lam], dtype=F64)).clamp(sde.eps, sde.T)
        return t, math.exp(float(sde.log_alpha(t))), math.sqrt(float(sde.sigma2(t)))

    return coef


def _x0(score):
    """Tweedie's data prediction (x + sigma^2 s(x, t)) / alpha."""

    def x0(x, t, a, s):
        return (x + s * s * score(x, t.expand(x.shape[0]))) / a

    return x0


def test_pece_reproduces_a_hand_written_recursion_on_its_own_nonuniform_grid():
    """Replay the accepted log-SNR grid the solver chose (non-uniform) with an independent
    recursion written from the formulas: 2M predictor (variable step), one evaluation, quadratic
    corrector through (m_prev, m0, m1) integrated exactly; the first step is DPM-Solver++(1)
    predictor with the linear corrector. Tolerance 1e-10 relative (float64 round-off)."""
    sde, data = sg.VESDE(sigma_min=0.01, sigma_max=20.0), target()
    score = data.score_fn(sde)
    x_T = data.prior(sde).sample(64, generator=torch.Generator().manual_seed(5), dtype=F64)
    sol = S.dpm_solver_adaptive_multistep(sde, score, x_T, timesteps(sde, 1), rtol=0.02, atol=0.02)
    lams = sol.extra["lambdas"]
    assert len(lams) >= 6 and sol.n_rejected >= 0
    hs = [b - a for a, b in zip(lams, lams[1:])]
    assert max(hs) / min(hs) > 1.5  # genuinely non-uniform

    coef, x0 = _coef(sde), _x0(score)

    def replay(quad):
        t0, a0, s0 = coef(lams[0])
        x, m_prev, h_prev = x_T, None, None
        m0 = x0(x, torch.tensor([sde.T], dtype=F64), a0, s0)
        for j, h in enumerate(hs):
            if j == len(hs) - 1:
                te = torch.tensor([sde.eps], dtype=F64)
                t1, a1, s1 = te, math.exp(float(sde.log_alpha(te))), math.sqrt(float(sde.sigma2(te)))
            else:
                t1, a1, s1 = coef(lams[j + 1])
            e = math.exp(-h)
            w0, w1, w2 = 1 - e, h - 1 + e, h * h - 2 * h + 2 - 2 * e  # int_0^h e^{tau-h} tau^k dtau, k = 0, 1, 2
            base = (s1 / s0) * x
            slope = 0 if m_prev is None else (m0 - m_prev) / h_prev
            x_p = base + a1 * (w0 * m0 + w1 * slope)
            m1 = x0(x_p, t1, a1, s1)
            if m_prev is None:
                x_c = base + a1 * (w0 * m0 + w1 * (m1 - m0) / h)
            else:
                # quadratic q(tau) = m0 + b tau + c tau^2 through (-h_prev, m_prev), (0, m0), (h, m1)
                c = ((m1 - m0) / h - (m0 - m_prev) / h_prev) / (h + h_prev)
                b = (m1 - m0) / h - c * h
                x_c = base + a1 * (w0 * m0 + w1 * b + (w2 * c if quad else 0))
            x, s0, m_prev, m0, h_prev = x_c, s1, m0, m1, h
        return x

    x = replay(True)
    rel = float((sol.x - x).norm() / x.norm())
    assert rel < 1e-10, rel
    # control: the same replay without the corrector's quadratic term differs visibly
    x_lin = replay(False)
    assert float((sol.x - x_lin).norm() / x_lin.norm()) > 1e-5
    assert sol.nfe == 1 + sol.n_steps + sol.n_rejected


def test_pece_controller_matches_a_hand_written_loop_on_vp():
    """Bug class: the error scale without alpha_s on atol (atol in x_s units instead of data
    units), rtol/atol swapped, the per-sample RMS replaced by a batch RMS, the PI exponents, the
    no-growth-after-rejection rule, final_stretch's split, theta / max_factor / h_init not passed
    on. Oracle: the controller written here from the docstring (VP, so alpha_s runs from 0.007 to
    1; rtol != atol; theta, max_factor, h_init non-default). Checks: accepted log-SNR grid (1e-12),
    rejection count, NFE and x (1e-10 relative). Control: the same loop with ``atol`` unscaled by
    alpha_s chooses another grid."""
    sde, data = sg.VPSDE(), target()
    score = data.score_fn(sde)
    x_T = data.prior(sde).sample(32, generator=torch.Generator().manual_seed(9), dtype=F64)
    rtol, atol, theta, fmax, h0 = 0.01, 0.04, 0.7, 1.7, 2.5

    coef, x0 = _coef(sde), _x0(score)

    def hand(alpha_scaled_atol):
        tT, tE = torch.tensor([sde.T], dtype=F64), torch.tensor([sde.eps], dtype=F64)
        a_T, s_T = math.exp(float(sde.log_alpha(tT))), math.sqrt(float(sde.sigma2(tT)))
        a_E, s_E = math.exp(float(sde.log_alpha(tE))), math.sqrt(float(sde.sigma2(tE)))
        lam, lam_end = math.log(a_T / s_T), math.log(a_E / s_E)
        x, s0, m0 = x_T, s_T, x0(x_T, tT, a_T, s_T)
        m_prev, h_prev, h, lams, rej, nfe, e_prev, just_rej = None, 0.0, h0, [lam], 0, 1, 1.0, False
        while lam_end - lam > 1e-12 * max(1.0, abs(lam_end)):
            rest = lam_end - lam
            if rest <= 1.5 * h:
                h = rest
            elif rest < 2 * h:
                h = rest / 2
            last = rest - h <= 1e-12
            t1, a1, s1 = (tE, a_E, s_E) if last else coef(lam + h)
            e = math.exp(-h)
            w0, w1, w2 = 1 - e, h - 1 + e, h * h - 2 * h + 2 - 2 * e
            base = (s1 / s0) * x
            slope = 0 if m_prev is None else (m0 - m_prev) / h_prev
            x_p = base + a1 * (w0 * m0 + w1 * slope)
            m1 = x0(x_p, t1, a1, s1)
            nfe += 1
            if m_prev is None:
                k, x_c = 2, base + a1 * (w0 * m0 + w1 * (m1 - m0) / h)
            else:
                c = ((m1 - m0) / h - slope) / (h + h_prev)
                k, x_c = 3, base + a1 * (w0 * m0 + w1 * ((m1 - m0) / h - c * h) + w2 * c)
            scale = (a1 if alpha_scaled_atol else 1.0) * atol + rtol * torch.maximum(x_c.abs(), x.abs())
            E = max(float(((x_c - x_p) / scale).pow(2).mean(1).sqrt().max()), 1e-10)
            if E <= 1:
                fac = min(1.0 if just_rej else fmax, max(0.2, theta * E ** (-0.7 / k) * e_prev ** (0.4 / k)))
                x, lam, s0, m_prev, m0, h_prev = x_c, (lam_end if last else lam + h), s1, m0, m1, h
                lams.append(lam)
                e_prev, just_rej = E, False
            else:
                fac = min(1.0, max(0.2, theta * E ** (-1 / k)))
                rej, just_rej = rej + 1, True
            h *= fac
        return x, lams, rej, nfe

    sol = S.dpm_solver_adaptive_multistep(sde, score, x_T, timesteps(sde, 1), rtol=rtol, atol=atol, theta=theta,
                                          max_factor=fmax, h_init=h0)
    x, lams, rej, nfe = hand(True)
    assert rej > 0 and len(lams) > 6  # both controller branches taken
    assert (sol.n_rejected, sol.nfe) == (rej, nfe)
    torch.testing.assert_close(torch.tensor(sol.extra["lambdas"], dtype=F64), torch.tensor(lams, dtype=F64),
                               rtol=1e-12, atol=1e-12)
    assert float((sol.x - x).norm() / x.norm()) < 1e-10
    assert hand(False)[1] != lams


def test_pece_counts_controls_its_error_and_beats_the_singlestep_pair_per_nfe():
    sde, data, x_T, ref = _problem()
    score = data.score_fn(sde)
    ae = float(sde.alpha(sde.eps))
    out = []
    for tol in (0.05, 0.025, 0.01, 0.002):
        sol = S.dpm_solver_adaptive_multistep(sde, score, x_T, timesteps(sde, 1), rtol=tol, atol=tol)
        assert sol.nfe == 1 + sol.n_steps + sol.n_rejected
        lam = sol.extra["lambdas"]
        assert all(b > a for a, b in zip(lam, lam[1:]))
        assert lam[0] == pytest.approx(_lam(sde, sde.T)) and lam[-1] == pytest.approx(_lam(sde, sde.eps))
        out.append((sol.nfe, S.trajectory_rmse(sol.x, ref, ae)))
    assert out[0][0] < out[1][0] < out[2][0] < out[3][0]
    assert out[0][1] > out[1][1] > out[2][1] > out[3][1] and out[3][1] < 2e-3
    # per NFE it beats the singlestep 23 pair: some run with no more NFE has a lower error
    ss = S.dpm_solver_adaptive(sde, score, x_T, timesteps(sde, 1), rtol=0.05, atol=0.05)
    e_ss = S.trajectory_rmse(ss.x, ref, ae)
    assert any(n <= ss.nfe and e < e_ss for n, e in out), (out, ss.nfe, e_ss)


def test_pece_error_control_is_per_sample():
    """The batch takes about what its hardest member takes alone, more than the median member."""
    sde, data, x_T, _ = _problem()
    score = data.score_fn(sde)
    batch = S.dpm_solver_adaptive_multistep(sde, score, x_T[:40], timesteps(sde, 1), rtol=0.01, atol=0.01)
    per = sorted(S.dpm_solver_adaptive_multistep(sde, score, x_T[b:b + 1], timesteps(sde, 1), rtol=0.01, atol=0.01).nfe
                 for b in range(40))
    assert batch.nfe >= per[-1] - 4
    assert batch.nfe > per[len(per) // 2]


def test_pece_law_matches_the_mixture_and_rejects_a_wrong_score():
    """Budget from two independent facts. (1) Trajectory error, asserted: the per-coordinate RMS
    distance to the dopri5 (1e-9) flow of the same x_T, e = (mean_b (x_bj - ref_bj)^2)^{1/2} <= 0.01,
    so |mean(x_j) - mean(ref_j)| <= e (Cauchy-Schwarz). (2) ref is an exact-law sample of p_eps
    (the exact flow of exact prior draws), so its mean is within 5 SE = 5 (var_j / N)^{1/2} of the
    closed-form mean. Check: |mean(x_j) - m_j| <= 0.01 + 5 SE. Control: the score of the mixture
    with every mean shifted by 0.5 fails the same check."""
    sde, data, x_T, ref = _problem()
    n = x_T.shape[0]
    exact = data.marginal(sde.eps, sde)
    se = torch.sqrt(torch.diagonal(exact.cov) / n)

    def check(score_data):
        sol = S.dpm_solver_adaptive_multistep(sde, score_data.score_fn(sde), x_T, timesteps(sde, 1), rtol=0.005, atol=0.005)
        return bool(((sol.x.mean(0) - exact.mean).abs() <= 0.01 + 5 * se).all()), sol.x

    ok, x = check(data)
    e = ((x - ref).pow(2).mean(0)).sqrt()
    assert bool((e <= 0.01).all()), e
    assert ok
    wrong = sg.analytic.GaussianMixture(data.means + 0.5, data.covs, data.weights)
    bad, _ = check(wrong)
    assert not bad


def test_singlestep_controller_options():
    """PI control and the end-of-interval handling: same end points, fewer or equal rejections on
    the benchmark-like target at the same tolerance, every option validated."""
    sde, data, x_T, ref = _problem()
    score = data.score_fn(sde)
    i_ = S.dpm_solver_adaptive(sde, score, x_T, timesteps(sde, 1), rtol=0.02, atol=0.02)
    pi = S.dpm_solver_adaptive(sde, score, x_T, timesteps(sde, 1), rtol=0.02, atol=0.02, controller="pi", final_stretch=1.5)
    assert pi.extra["lambdas"][-1] == pytest.approx(i_.extra["lambdas"][-1])
    assert pi.n_rejected <= i_.n_rejected
    ae = float(sde.alpha(sde.eps))
    assert S.trajectory_rmse(pi.x, ref, ae) < 1e-2
    for kw, match in (({"controller": "p"}, "controller"), ({"final_stretch": 3.0}, "final_stretch")):
        with pytest.raises(ValueError, match=match):
            S.dpm_solver_adaptive(sde, score, x_T[:2], timesteps(sde, 1), **kw)
    with pytest.raises(ValueError, match="final_stretch"):
        S.dpm_solver_adaptive_multistep(sde, score, x_T[:2], timesteps(sde, 1), final_stretch=0.5)
    with pytest.raises(ValueError, match="rtol"):
        S.dpm_solver_adaptive_multistep(sde, score, x_T[:2], timesteps(sde, 1), rtol=0.0)


def test_registered_with_its_arithmetic():
    spec = SAMPLERS["dpm_solver_adaptive_ms"]
    assert spec.adaptive and not spec.stochastic and spec.nfe_per_step is None
    with pytest.raises(ValueError, match="adaptive"):
        spec.steps_for(10)


@pytest.mark.parametrize("rest, h, stretch, want", [
    (1.0, 0.8, 1.0, (0.8, False)),   # clipping only: no split even though rest < 2h
    (0.8, 0.8, 1.0, (0.8, True)),
    (1.0, 0.8, 1.5, (1.0, True)),    # stretched to the end
    (1.5, 0.8, 1.5, (0.75, False)),  # rest in (1.5h, 2h): two equal steps
    (3.0, 0.8, 1.5, (0.8, False)),
])
def test_both_adaptive_samplers_fit_the_last_step_the_same_way(rest, h, stretch, want):
    """Bug class: the multistep sampler split the remainder in two with ``final_stretch=1`` (its
    docstring promises the singlestep rule: clipping only at 1). Oracle: the rule as documented."""
    from sdesolve_gen.samplers.adaptive_exp import _fit_step

    assert _fit_step(rest, h, stretch) == pytest.approx(want)

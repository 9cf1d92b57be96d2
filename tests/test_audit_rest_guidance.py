"""Audit value tests for sdesolve_gen.guidance (classifier, classifier-free and label guidance).

Oracles are hand-written: a quadratic log-classifier log p(y | x) = -c_y |x - mu_y|^2 whose
gradient -2 c_y (x - mu_y) is a closed form, and the guidance combinations written out. Values
are non-default: scales not in {0, 1}, per-sample label tensors with distinct labels, per-sample
times, a custom label keyword and null label.
"""

from __future__ import annotations

import pytest
import torch

from sdesolve_gen.guidance import classifier_free_guidance, classifier_guidance, label_guidance

F64 = torch.float64
MU = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1], [1.5, 1.5, -2.0]], dtype=F64)
C = torch.tensor([0.4, 1.3, 0.9], dtype=F64)


def _uncond(x, t):
    return -x * (1.0 + t if torch.is_tensor(t) and t.dim() == 0 else 1.0) + 0.2


def _log_p(x, t, y):
    mu = MU[y] if y.dim() == 1 else MU[y].expand_as(x)
    c = C[y] if y.dim() == 1 else C[y].expand(x.shape[0])
    return -(c[:, None] * (x - mu) ** 2).sum(1) * (1.0 + float(t))


def _grad_log_p(x, t, y):
    mu = MU[y] if y.dim() == 1 else MU[y].expand_as(x)
    c = C[y] if y.dim() == 1 else C[y].expand(x.shape[0])
    return -2.0 * c[:, None] * (x - mu) * (1.0 + float(t))


def test_classifier_guidance_scale_and_per_sample_labels_closed_form():
    """Bug class: scale not applied (or 1 - w), gradient sign flipped, per-sample labels replaced by
    one label, the w = 0 shortcut taken for other w. Oracle: s + w * (-2 c_y (x - mu_y)(1 + t))."""
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    y = torch.tensor([2, 0, 1])
    for w in (0.6, -1.7, 0.0):
        got = classifier_guidance(_uncond, _log_p, y, scale=w)(x, t)
        want = _uncond(x, t) + w * _grad_log_p(x, t, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert not got.requires_grad
    # an int label broadcasts
    got = classifier_guidance(_uncond, _log_p, 1, scale=2.5)(x, t)
    torch.testing.assert_close(got, _uncond(x, t) + 2.5 * _grad_log_p(x, t, torch.tensor(1)), rtol=1e-12, atol=1e-12)


def test_classifier_guidance_keeps_the_graph_when_x_requires_grad():
    """Bug class: create_graph not set when x requires grad (the guided score's Jacobian would
    lose the classifier term). Oracle: d/dx_i of the guided score's i-th output for the quadratic
    classifier is -1 (uncond, t = 0 scalar float) + w * (-2 c_y) (1 + t)."""
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_(True)
    y = torch.tensor([0, 1, 2])
    w, t = 0.8, torch.tensor(0.5, dtype=F64)
    s = classifier_guidance(lambda xx, tt: -xx, _log_p, y, scale=w)(x, t)
    assert s.requires_grad
    (gx,) = torch.autograd.grad(s.sum(), x)
    want = -1.0 + w * (-2.0 * C[y])[:, None].expand(3, 3) * 1.5
    torch.testing.assert_close(gx, want, rtol=1e-12, atol=1e-12)


def test_classifier_free_guidance_combination_and_labels():
    """Bug class: (1 + w) s_c - w s_u with a factor dropped or the roles swapped, the label not
    passed to the conditional score, the w = 0 shortcut evaluating the unconditional. Oracle: the
    combination by hand with a conditional score that depends on the per-sample label."""
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = torch.tensor(0.3, dtype=F64)
    y = torch.tensor([1, 2, 0])
    calls = {"u": 0}

    def cond(xx, tt, yy):
        return -(xx - MU[yy])

    def unc(xx, tt):
        calls["u"] += 1
        return -0.5 * xx

    for w in (0.35, 2.0):
        got = classifier_free_guidance(cond, unc, y, w)(x, t)
        torch.testing.assert_close(got, (1 + w) * cond(x, t, y) - w * unc(x, t), rtol=1e-12, atol=1e-12)
    calls["u"] = 0
    torch.testing.assert_close(classifier_free_guidance(cond, unc, y, 0.0)(x, t), cond(x, t, y), rtol=0, atol=0)
    assert calls["u"] == 0


@pytest.mark.parametrize("per_sample_t", [False, True, "one"])
def test_label_guidance_doubled_batch_null_label_and_kwarg(per_sample_t):
    """Bug class: the halves of the doubled batch swapped, the null label not used for the
    unconditional half, (B,) times not repeated for the second half, label_kwarg ignored.
    Oracle: (1 + w) m(x, t, y) - w m(x, t, null) with a model whose output depends on the label
    (null = 7 -> its own mean) and on t per sample."""
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    if per_sample_t == "one":  # a (1,) time broadcasts to the batch
        t = torch.tensor([0.6], dtype=F64)
    else:
        t = torch.tensor([0.2, 0.5, 0.9], dtype=F64) if per_sample_t else torch.tensor(0.6, dtype=F64)
    table = torch.cat([MU, torch.zeros(4, 3, dtype=F64), torch.tensor([[3.0, -3.0, 1.0]], dtype=F64)])  # row 7 = null
    seen = []

    def model(xx, tt, cls=None):
        seen.append((xx.shape[0], tuple(tt.shape)))
        tcol = tt[:, None] if tt.dim() == 1 else tt
        return -(xx - table[cls]) * (1.0 + tcol)

    y = torch.tensor([2, 0, 1])
    w = 0.75
    got = label_guidance(model, y, w, null_label=7, num_classes=3, label_kwarg="cls")(x, t)
    tcol = t[:, None] if per_sample_t is True else t
    cond = -(x - MU[y]) * (1 + tcol)
    null = -(x - table[7]) * (1 + tcol)
    torch.testing.assert_close(got, (1 + w) * cond - w * null, rtol=1e-12, atol=1e-12)
    assert seen[-1][0] == 6
    # w = 0: only the conditional half
    got0 = label_guidance(model, 1, 0.0, null_label=7, num_classes=3, label_kwarg="cls")(x, t)
    torch.testing.assert_close(got0, -(x - MU[1]) * (1 + tcol), rtol=1e-12, atol=1e-12)
    assert seen[-1][0] == 3

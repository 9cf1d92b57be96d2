"""Audit 8 (flow): losses, data, nets and checkpoints against closed forms and hand replays."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import integrate

import sdesolve_gen as sg
from sdesolve_gen import checkpoints as ck
from sdesolve_gen import losses as L

# ------------------------------------------------------------------------------------- losses


def _vp_ab(t, b0=0.1, b1=20.0):
    ia = b0 * t + 0.5 * (b1 - b0) * t * t
    return math.exp(-0.5 * ia), 1 - math.exp(-ia), b0 + (b1 - b0) * t


@pytest.mark.parametrize("weighting", ["sigma2", "g2", "none", "edm", "callable"])
def test_dsm_loss_fixed_t_every_weighting_by_hand(weighting):
    sde = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    B, D = 4, 3
    gx = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, D, generator=gx, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    W = torch.randn(D, D, generator=gx, dtype=torch.float64)
    score = lambda x, tt: x @ W - tt[:, None]  # noqa: E731
    w = (lambda tt: 1.0 + tt**2) if weighting == "callable" else weighting
    g = torch.Generator().manual_seed(4)
    per = L.dsm_loss(score, sde, x0, t=t, generator=g, weighting=w, reduce=False, sigma_data=0.7)
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = []
    for i in range(B):
        a, s2, beta = _vp_ab(float(t[i]))
        xt = a * x0[i] + math.sqrt(s2) * noise[i]
        s = score(xt[None], t[i:i + 1])[0]
        err = float(((s + noise[i] / math.sqrt(s2)) ** 2).sum())
        lam = {"sigma2": s2, "g2": beta, "none": 1.0, "callable": 1.0 + float(t[i]) ** 2,
               "edm": a * a * (s2 / a**2) * (s2 / a**2 + 0.49) / 0.49}[weighting]
        ref.append(lam * err)
    torch.testing.assert_close(per, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    mean = L.dsm_loss(score, sde, x0, t=t, generator=torch.Generator().manual_seed(4), weighting=w, sigma_data=0.7)
    assert float(mean) == pytest.approx(sum(ref) / B, rel=1e-12)


def test_dsm_loss_sampled_times_eps_and_model_kwargs():
    sde = sg.VESDE(sigma_min=0.1, sigma_max=5.0, T=2.0)
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = {}

    def score(x, t, y=None):
        seen["t"], seen["y"] = t.clone(), y
        return -x

    L.dsm_loss(score, sde, x0, generator=torch.Generator().manual_seed(2), eps=0.25, model_kwargs={"y": 7})
    u = torch.rand(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(seen["t"], 0.25 + u * (2.0 - 0.25))
    assert seen["y"] == 7
    t = L.sample_time(sde, 5, eps=0.5, generator=torch.Generator().manual_seed(3))
    u = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(t, 0.5 + u * 1.5)


def test_importance_sampled_times_and_weight_by_hand():
    sde = sg.VPSDE(beta_min=0.2, beta_max=15.0)
    eps = 0.01
    t = L.sample_time(sde, 6, importance=True, eps=eps, generator=torch.Generator().manual_seed(5))
    u = torch.rand(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def logsnr(tt):
        a, s2, _ = _vp_ab(tt, 0.2, 15.0)
        return math.log(a * a / s2)

    le, lT = logsnr(eps), logsnr(1.0)
    for ti, ui in zip(t.tolist(), u.tolist()):
        assert logsnr(ti) == pytest.approx(le - ui * (le - lT), rel=1e-9, abs=1e-9)
        assert eps <= ti <= 1.0
    # importance-sampled per-sample value: Z/(T-eps) * sigma^2 ||s + n/sigma||^2 at the drawn t
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    score = lambda x, tt: -x * (1 + tt[:, None])  # noqa: E731
    per = L.dsm_loss(score, sde, x0, weighting="g2", importance_sampling=True, eps=eps, reduce=False,
                     generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand(6, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 2, generator=g, dtype=torch.float64)
    Z = le - lT
    for i in range(6):
        a, s2, _ = _vp_ab(t[i].item(), 0.2, 15.0)
        xt = a * x0[i] + math.sqrt(s2) * noise[i]
        s = -xt * (1 + t[i])
        ref = Z / (1 - eps) * s2 * float(((s + noise[i] / math.sqrt(s2)) ** 2).sum())
        assert float(per[i]) == pytest.approx(ref, rel=1e-8)


def test_dsm_optimum_gaussian_by_independent_quadrature():
    sde = sg.VPSDE()
    lam = np.array([0.3, 2.0])
    cov = torch.diag(torch.tensor(lam))
    for weighting in ("sigma2", "g2"):
        def f(t, weighting=weighting):
            a, s2, beta = _vp_ab(t)
            w = s2 if weighting == "sigma2" else beta
            return w * (2 / s2 - float((1 / (a * a * lam + s2)).sum()))

        ref = integrate.quad(f, 0.02, 1.0, epsrel=1e-11, limit=200)[0] / 0.98
        assert L.dsm_optimum_gaussian(sde, cov, weighting=weighting, eps=0.02) == pytest.approx(ref, rel=1e-7)


@pytest.mark.parametrize("projection,vr", [("rademacher", True), ("rademacher", False), ("gaussian", True),
                                           ("gaussian", False)])
def test_sliced_and_implicit_score_matching_closed_form(projection, vr):
    s2 = 0.7
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = lambda v: -v / s2  # noqa: E731
    per = L.sliced_score_matching_loss(fn, x, n_projections=3, projection=projection, variance_reduced=vr,
                                       generator=torch.Generator().manual_seed(9), reduce=False)
    g = torch.Generator().manual_seed(9)
    tot = torch.zeros(5, dtype=torch.float64)
    s = -x / s2
    for _ in range(3):
        v = torch.randn(5, 3, generator=g, dtype=torch.float64)
        if projection == "rademacher":
            v = torch.sign(v)
        vs = (v * s).sum(1)
        term1 = -(v * v).sum(1) / s2
        term2 = 0.5 * (s * s).sum(1) if vr else 0.5 * vs**2
        tot += term1 + term2
    torch.testing.assert_close(per, tot / 3, rtol=1e-12, atol=1e-12)
    isl = L.implicit_score_matching_loss(fn, x, reduce=False)
    torch.testing.assert_close(isl, 0.5 * (s * s).sum(1) - 3 / s2, rtol=1e-12, atol=1e-12)
    assert float(L.implicit_score_matching_loss(fn, x).detach()) == pytest.approx(float(isl.mean().detach()), rel=1e-12)


# --------------------------------------------------------------------------------------- data


def test_toy_datasets_documented_geometry():
    e = sg.data.eight_gaussians(radius=3.0, std=0.1)
    m = e.means
    assert m.shape == (8, 2)
    torch.testing.assert_close(m.norm(dim=1), torch.full((8,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(m[2], torch.tensor([0.0, 3.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(e.covs[0], 0.01 * torch.eye(2, dtype=torch.float64))
    tm = sg.data.two_moons(n_per_moon=5, std=0.2)
    assert tm.means.shape == (10, 2)
    torch.testing.assert_close(tm.means[0], 1.5 * torch.tensor([1 - 0.5, 0 - 0.25], dtype=torch.float64))
    torch.testing.assert_close(tm.covs[3], 0.04 * torch.eye(2, dtype=torch.float64))
    sr = sg.data.swiss_roll(n=6, std=0.3)
    th = 1.5 * math.pi
    torch.testing.assert_close(sr.means[0], torch.tensor([th * math.cos(th), th * math.sin(th)], dtype=torch.float64) / 7)
    cb = sg.data.checkerboard(std=0.05)
    assert cb.means.shape == (32, 2)
    assert cb.means.min() == -1.75 and cb.means.max() == 1.75
    assert set(sg.data.TOY_DATASETS) == {"eight_gaussians", "two_moons", "swiss_roll", "checkerboard"}


def test_digits_ranges_and_levels():
    lv, y = sg.data.load_digits(as_levels=True, return_labels=True)
    assert lv.shape == (1797, 1, 8, 8) and y.shape == (1797,) and lv.max() == 16 and lv.min() == 0
    x = sg.data.load_digits(data_range=(0.0, 2.0))
    torch.testing.assert_close(x, lv * (2.0 / 16))
    x1 = sg.data.load_digits()
    torch.testing.assert_close(x1, -1 + lv * (2.0 / 16))
    assert torch.equal(sg.data.from_range(x, (0.0, 2.0), n_levels=17), lv)
    assert sg.data.to_range(torch.tensor([0, 3]), (1.0, 4.0), n_levels=4).tolist() == [1.0, 4.0]
    assert sg.data.from_range(torch.tensor([-5.0, 9.0]), (1.0, 4.0), n_levels=4).tolist() == [0.0, 3.0]


# --------------------------------------------------------------------------------------- nets


def test_mlp_forward_by_hand_and_embedding():
    torch.manual_seed(0)
    net = sg.MLPScoreNet(3, hidden=5, depth=2, embed_dim=4, t_max=2.0).double()
    for p in net.out.parameters():
        torch.nn.init.normal_(p)
    W = net.embed.W
    gW = torch.randn(2, generator=torch.Generator().manual_seed(0)) * 16.0
    torch.testing.assert_close(W.float(), gW)
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 1.0, 1.9], dtype=torch.float64)
    proj = 2 * math.pi * (t / 2.0)[:, None] * W[None, :]
    e = torch.cat([proj.sin(), proj.cos()], 1)
    h = net.inp(x)
    assert len(net.layers) == 2 and net.layers[0].out_features == 5
    for lin, tl in zip(net.layers, net.temb):
        h = torch.nn.functional.silu(lin(h) + tl(e))
    torch.testing.assert_close(net(x, t), net.out(h))
    torch.testing.assert_close(net.embed(t), e)
    fresh = sg.MLPScoreNet(3)
    assert len(fresh.layers) == 3 and fresh.layers[0].in_features == 128 and fresh.temb[0].in_features == 64
    assert float(fresh.out.weight.detach().abs().sum()) == 0.0


def test_unet_label_changes_output_and_t_max():
    torch.manual_seed(0)
    net = sg.UNet(in_channels=1, base=8, num_classes=3, t_max=2.0)
    for p in net.parameters():
        if p.dim() > 0 and float(p.detach().abs().sum()) == 0:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.3, 1.2])
    a = net(x, t, torch.tensor([0, 0]))
    b = net(x, t, torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


# -------------------------------------------------------------------------------- checkpoints


def test_encode_format_and_decode_refusals(tmp_path):
    payload = b"hello world"
    enc = ck.encode(payload)
    assert enc == ck.MAGIC + b"sha256 " + hashlib.sha256(payload).hexdigest().encode() + b" " + b"%020d" % 11 + b"\n" + payload
    assert ck.decode(enc) == payload
    for bad in (enc[:-1], enc + b"x", enc[:-1] + b"X", b"PK\x03\x04rest", enc.replace(b"sha256", b"sha257")):
        with pytest.raises(ValueError, match="somefile"):
            ck.decode(bad, "somefile")


def test_load_verified_refuses_arbitrary_pickle_and_maps(tmp_path):
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf, pickle_module=pickle)
    p = tmp_path / "evil.pt"
    p.write_bytes(ck.encode(buf.getvalue()))
    with pytest.raises(ValueError, match="evil.pt"):
        ck.load_verified(p)
    q = ck.atomic_save({"a": torch.arange(3)}, tmp_path / "sub" / "ok.pt")
    assert q == tmp_path / "sub" / "ok.pt"
    assert ck.load_verified(q, map_location="meta")["a"].device.type == "meta"
    assert not any(n.name.startswith(".") for n in (tmp_path / "sub").iterdir())
    with pytest.raises(FileNotFoundError):
        ck.load_verified(tmp_path / "none.pt")


def test_clean_stale_temp_files_and_check_writable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    stale = tmp_path / f".checkpoint.pt.tmp-{dead}"
    mine = tmp_path / f".checkpoint.pt.tmp-{os.getpid()}"
    other = tmp_path / "checkpoint.pt.tmp-1"
    for f in (stale, mine, other):
        f.write_bytes(b"x")
    removed = ck.clean_stale_temp_files(tmp_path)
    assert removed == [stale] and not stale.exists() and mine.exists() and other.exists()
    assert ck.temp_path(tmp_path / "a.pt").name == f".a.pt.tmp-{os.getpid()}"
    assert ck.check_writable(tmp_path / "new" / "dir", 10) == tmp_path / "new" / "dir"
    with pytest.raises(OSError) as ei:
        ck.check_writable(tmp_path, 2**62)
    assert ei.value.errno == errno.ENOSPC and str(tmp_path) in str(ei.value)


def test_load_checkpoint_directory_and_wrong_format(tmp_path):
    ck.atomic_save({"format": "other", "step": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="format"):
        sg.train.load_checkpoint(tmp_path)

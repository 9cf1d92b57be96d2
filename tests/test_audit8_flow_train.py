"""Audit 8 (flow): the Trainer replayed by hand, step by step, with non-default settings.

Every oracle here is written independently of the trainer: batch indices from a generator seeded
``seed``, times/noise from one seeded ``10_000 + seed`` (the documented streams), the DSM loss
written out, a hand AdamW, a hand gradient clip, a hand cosine schedule and a hand EMA.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import sdesolve_gen as sg
from sdesolve_gen.train import EMA, Trainer, load_checkpoint

torch.set_default_dtype(torch.float32)


class CondNet(nn.Module):
    """A tiny conditional score net ``(x, t, cls=None)`` in float64."""

    def __init__(self, d: int, n_cls: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d + 1, d, dtype=torch.float64)
        self.emb = nn.Embedding(n_cls, d, dtype=torch.float64)
        self.register_buffer("scale", torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x, t, cls=None):
        h = self.lin(torch.cat([x, t.to(x.dtype)[:, None]], 1)) * self.scale
        if cls is not None:
            h = h + self.emb(cls)
        return h


class PlainNet(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d + 1, d, dtype=torch.float64)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t.to(x.dtype)[:, None]], 1))


def _net(d, n_cls=None, seed=3):
    with sg.train.seeded(seed):
        return CondNet(d, n_cls) if n_cls else PlainNet(d)


def _hand_loss(model, sde, x0, g_noise, *, eps, weighting, kw=None):
    B = x0.shape[0]
    u = torch.rand(B, generator=g_noise, dtype=torch.float64)
    t = eps + u * (sde.T - eps)
    noise = torch.randn(x0.shape, generator=g_noise, dtype=x0.dtype)
    a = torch.exp(sde.log_alpha(t))[:, None]
    s2 = sde.sigma2(t)
    x_t = a * x0 + s2.sqrt()[:, None] * noise
    s = model(x_t, t, **(kw or {}))
    sq = (s2.sqrt()[:, None] * s + noise).pow(2).sum(1)
    if weighting == "sigma2":
        lam = torch.ones_like(t)
    elif weighting == "none":
        lam = 1.0 / s2
    elif weighting == "g2":
        lam = sde.diffusion2(t) / s2
    else:  # pragma: no cover
        raise AssertionError
    return (lam * sq).mean()


class HandAdamW:
    def __init__(self, params, lr, wd, betas=(0.9, 0.999), eps=1e-8):
        self.p = list(params)
        self.lr, self.wd, self.b1, self.b2, self.e = lr, wd, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.k = 0

    @torch.no_grad()
    def step(self, lr):
        self.k += 1
        for p, m, v in zip(self.p, self.m, self.v):
            g = p.grad
            p.mul_(1 - lr * self.wd)
            m.mul_(self.b1).add_((1 - self.b1) * g)
            v.mul_(self.b2).add_((1 - self.b2) * g * g)
            mhat = m / (1 - self.b1 ** self.k)
            vhat = v / (1 - self.b2 ** self.k)
            p.sub_(lr * mhat / (vhat.sqrt() + self.e))


def _clip(params, max_norm):
    params = list(params)
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1:
        for p in params:
            p.grad.mul_(coef)
    return float(total)


def _replay(net0, sde, x, y, *, steps, seed, B, lr, wd, clip, eps, weighting, decay, warmup,
            cosine_K=0, label_dropout=0.0, null=None, kw="cls"):
    """Returns (losses, final raw params, final EMA params)."""
    model = copy.deepcopy(net0)
    ema = [p.detach().clone() for p in list(model.parameters()) + list(model.buffers())]
    opt = HandAdamW(model.parameters(), lr, wd)
    g_data = torch.Generator().manual_seed(seed)
    g_noise = torch.Generator().manual_seed(10_000 + seed)
    losses = []
    n_avg = 0
    for k in range(steps):
        idx = torch.randint(x.shape[0], (B,), generator=g_data)
        xb = x[idx]
        kwargs = None
        if y is not None:
            yb = y[idx]
            if label_dropout > 0:
                drop = torch.rand(B, generator=g_data) < label_dropout
                yb = torch.where(drop, torch.full_like(yb, null), yb)
            kwargs = {kw: yb}
        loss = _hand_loss(model, sde, xb, g_noise, eps=eps, weighting=weighting, kw=kwargs)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            _clip(model.parameters(), clip)
        lr_k = lr * (0.5 * (1 + math.cos(math.pi * min(k / cosine_K, 1.0))) if cosine_K else 1.0)
        opt.step(lr_k)
        cur = list(model.parameters()) + list(model.buffers())
        with torch.no_grad():
            if n_avg == 0:
                for a, c in zip(ema, cur):
                    a.copy_(c)
            else:
                d = min(decay, (1 + n_avg) / (10 + n_avg)) if warmup else decay
                for a, c in zip(ema, cur):
                    a.mul_(d).add_((1 - d) * c)
        n_avg += 1
        losses.append(float(loss.detach()))
    return losses, [p.detach() for p in model.parameters()], ema


def _close(a, b, tol=1e-10):
    for u, v in zip(a, b):
        torch.testing.assert_close(u.double(), v.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("warmup", [True, False])
def test_trainer_matches_hand_replay_conditional_nondefault(warmup):
    torch.manual_seed(0)
    D, N, ncls = 3, 40, 4
    gx = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, generator=gx, dtype=torch.float64)
    y = torch.randint(ncls, (N,), generator=gx)
    sde = sg.SubVPSDE(beta_min=0.2, beta_max=8.0, T=1.7, eps=1e-3)
    net0 = _net(D, ncls + 1)
    kw = dict(steps=6, seed=5, B=7, lr=3e-2, wd=0.3, clip=0.05, eps=0.02, weighting="g2",
              decay=0.5, warmup=warmup, label_dropout=0.4, null=ncls)
    ref_losses, ref_p, ref_ema = _replay(net0, sde, x, y, **kw)
    tr = Trainer(copy.deepcopy(net0), sde, (x, y), batch_size=7, lr=3e-2, weight_decay=0.3, grad_clip=0.05,
                 eps=0.02, weighting="g2", ema_decay=0.5, ema_warmup=warmup, label_dropout=0.4, null_label=ncls,
                 label_kwarg="cls", seed=5, log_every=0)
    losses = tr.train(6)
    assert tr.step == 6
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-10, atol=1e-12)
    assert tr.history == losses
    _close(list(tr.model.parameters()), ref_p)
    _close(list(tr.ema.module.parameters()) + list(tr.ema.module.buffers()), ref_ema)
    # ema_model() is the EMA copy in eval mode
    em = tr.ema_model()
    assert not em.training
    _close(list(em.parameters()), ref_ema[:len(ref_p)])
    assert tr.ema.n_updates == 6


def test_trainer_cosine_decay_and_default_lr_unconditional():
    D, N = 2, 30
    gx = torch.Generator().manual_seed(2)
    x = torch.randn(N, D, generator=gx, dtype=torch.float64) * 0.7 + 0.3
    sde = sg.VESDE(sigma_min=0.05, sigma_max=4.0, T=2.0, eps=1e-2)
    net0 = _net(D)
    # documented defaults: lr 2e-3, weight decay 0, grad_clip 1.0, ema 0.999 with warm-up, sigma2, sde.eps
    ref_losses, ref_p, ref_ema = _replay(net0, sde, x, None, steps=5, seed=0, B=5, lr=2e-3, wd=0.0, clip=1.0,
                                         eps=sde.eps, weighting="sigma2", decay=0.999, warmup=True, cosine_K=3)
    tr = Trainer(copy.deepcopy(net0), sde, x, batch_size=5, lr_decay_steps=3, log_every=0)
    tr.train(5)
    torch.testing.assert_close(torch.tensor(tr.history), torch.tensor(ref_losses), rtol=1e-10, atol=1e-12)
    _close(list(tr.model.parameters()), ref_p)
    _close(list(tr.ema.module.parameters()), ref_ema)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # min(5/3, 1) -> cos(pi) -> 0
    assert tr.base_lr == 2e-3


def test_trainer_weighting_none_grad_clip_off_and_seed():
    D, N = 2, 25
    gx = torch.Generator().manual_seed(4)
    x = torch.randn(N, D, generator=gx, dtype=torch.float64)
    sde = sg.VPSDE(beta_min=0.3, beta_max=12.0, T=1.0, eps=1e-3)
    net0 = _net(D)
    ref_losses, ref_p, _ = _replay(net0, sde, x, None, steps=4, seed=9, B=6, lr=5e-2, wd=0.0, clip=0,
                                   eps=0.05, weighting="none", decay=0.9, warmup=True)
    tr = Trainer(copy.deepcopy(net0), sde, x, batch_size=6, lr=5e-2, grad_clip=None, eps=0.05, weighting="none",
                 ema_decay=0.9, seed=9, log_every=0)
    tr.train(4)
    torch.testing.assert_close(torch.tensor(tr.history), torch.tensor(ref_losses), rtol=1e-10, atol=1e-12)
    _close(list(tr.model.parameters()), ref_p)
    # grad_clip=0 also disables the clip
    tr0 = Trainer(copy.deepcopy(net0), sde, x, batch_size=6, lr=5e-2, grad_clip=0, eps=0.05, weighting="none",
                  seed=9, log_every=0)
    tr0.train(4)
    _close(list(tr0.model.parameters()), ref_p)


def test_trainer_sample_data_gets_generator_and_dtype():
    calls = []

    class Src:
        def sample(self, n, generator=None, dtype=None):
            calls.append((n, generator, dtype))
            return torch.randn(n, 2, generator=generator, dtype=dtype)

    sde = sg.VPSDE()
    net0 = _net(2)
    tr = Trainer(copy.deepcopy(net0), sde, Src(), batch_size=4, seed=7, log_every=0)
    tr.train(2)
    assert [c[0] for c in calls] == [4, 4]
    assert all(c[2] == torch.float64 for c in calls)
    assert calls[0][1] is tr.g_data
    # the replay with the same draws
    g = torch.Generator().manual_seed(7)
    gn = torch.Generator().manual_seed(10_007)
    m = copy.deepcopy(net0)
    x0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = float(_hand_loss(m, sde, x0, gn, eps=sde.eps, weighting="sigma2"))
    assert tr.history[0] == pytest.approx(ref, rel=1e-12)


def test_log_records_eval_and_checkpoint_cadence(tmp_path):
    D = 2
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = sg.VPSDE()
    evals = []

    def ev(trainer):
        evals.append(trainer.step)
        return {"metric": float(trainer.step) * 0.5}

    saves = []
    tr = Trainer(_net(D), sde, x, batch_size=4, log_every=3, eval_fn=ev, eval_every=2,
                 checkpoint_dir=tmp_path, checkpoint_every=4)
    orig = tr.save

    def spy(path=None):
        saves.append(tr.step)
        return orig(path)

    tr.save = spy  # type: ignore[method-assign]
    tr.train(7)
    assert evals == [2, 4, 6]
    assert saves == [4, 7]  # every 4 steps and at the end
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 3, 4, 6]
    h = tr.history
    by = {r["step"]: r for r in recs}
    assert by[3]["loss"] == pytest.approx(sum(h[0:3]) / 3, rel=1e-12)
    assert by[6]["loss"] == pytest.approx(sum(h[3:6]) / 3, rel=1e-12)
    assert "loss" not in by[2] and by[2]["metric"] == 1.0
    assert by[4]["metric"] == 2.0 and by[6]["metric"] == 3.0
    assert all(r["wall_time"] >= 0 for r in recs)
    st = load_checkpoint(tmp_path)
    assert st["step"] == 7
    assert st["history"].tolist() == h
    assert st["ema_decay"] == 0.999


def test_resume_continues_bit_exact_and_restores_history(tmp_path):
    D = 3
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sde = sg.VESDE(sigma_min=0.1, sigma_max=3.0)
    net0 = _net(D)
    mk = lambda d: Trainer(copy.deepcopy(net0), sde, x, batch_size=3, lr=1e-2, seed=2, lr_decay_steps=6,  # noqa: E731
                           ema_decay=0.8, checkpoint_dir=d, log_every=0)
    full = mk(tmp_path / "a")
    full.train(6)
    part = mk(tmp_path / "b")
    part.train(3)
    again = mk(tmp_path / "b")
    assert again.resume() is True
    assert again.step == 3 and again.history == part.history
    again.train(6)
    assert again.history == full.history
    for p, q in zip(again.model.parameters(), full.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(again.ema.module.parameters(), full.ema.module.parameters()):
        assert torch.equal(p, q)
    # resume() of an explicit file path, and of a missing one
    other = mk(None)
    assert other.resume(tmp_path / "a" / "checkpoint.pt") is True and other.step == 6
    assert mk(None).resume(tmp_path / "nothing.pt") is False


def test_resume_adopts_checkpoint_ema_decay(tmp_path):
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = sg.VPSDE()
    a = Trainer(_net(2), sde, x, batch_size=2, ema_decay=0.7, checkpoint_dir=tmp_path, log_every=0)
    a.train(2)
    b = Trainer(_net(2), sde, x, batch_size=2, ema_decay=0.95, checkpoint_dir=tmp_path, log_every=0)
    b.resume()
    assert b.ema.decay == 0.7


def test_ema_current_decay_and_copy_to():
    m = PlainNet(2)
    e = EMA(m, 0.95)
    assert e.current_decay(0) == pytest.approx(0.1)
    assert e.current_decay(5) == pytest.approx(6 / 15)
    assert e.current_decay(10_000) == 0.95
    assert EMA(m, 0.95, warmup=False).current_decay(3) == 0.95
    assert EMA(m).decay == 0.999
    m2 = PlainNet(2)
    e.copy_to(m2)
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert e.shadow[0] is list(e.module.parameters())[0]


def test_checkpoint_size_estimate_formula():
    m = PlainNet(3)  # weight 3x4 + bias 3 = 15 float64
    tr = Trainer(m, sg.VPSDE(), torch.randn(5, 3, dtype=torch.float64), batch_size=2, log_every=0)
    pb = 15 * 8
    assert tr.checkpoint_size_estimate(10) == 2 * pb + 2 * pb + 8 * 10 + 4096 * 2 + 2**18
    tr.train(3)
    # now the optimiser has state: exp_avg + exp_avg_sq (15 each) + 'step' scalars (float32, 4 bytes each)
    opt_bytes = sum(v.numel() * v.element_size() for s in tr.optimizer.state_dict()["state"].values()
                    for v in s.values() if isinstance(v, torch.Tensor))
    assert tr.checkpoint_size_estimate(1) == 2 * pb + opt_bytes + 8 * 3 + 4096 * 2 + 2**18


def test_factories_and_scheduler_checkpointed(tmp_path):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = sg.VPSDE()
    tr = Trainer(_net(2), sde, x, batch_size=2, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
                 lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
                 checkpoint_dir=tmp_path, log_every=0)
    assert isinstance(tr.optimizer, torch.optim.SGD)
    tr.train(3)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    st = load_checkpoint(tmp_path / "checkpoint.pt")
    assert st["scheduler"]["last_epoch"] == 3
    assert st["format"] == "sdesolve_gen.train/2"


def test_importance_sampling_and_labelled_sample_source_reach_the_loss():
    sde = sg.VPSDE(beta_min=0.2, beta_max=9.0)
    net0 = _net(2, 3)

    class Src:
        def sample(self, n, generator=None, dtype=None):
            x = torch.randn(n, 2, generator=generator, dtype=dtype)
            y = torch.randint(3, (n,), generator=generator)
            return x, y

    tr = Trainer(copy.deepcopy(net0), sde, Src(), batch_size=5, weighting="g2", importance_sampling=True, eps=0.01,
                 label_kwarg="cls", seed=1, log_every=0, grad_clip=None)
    tr.train(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.randint(3, (5,), generator=g)
    m = copy.deepcopy(net0)
    with torch.no_grad():
        ref = sg.losses.dsm_loss(m, sde, x, weighting="g2", importance_sampling=True, eps=0.01,
                                 generator=torch.Generator().manual_seed(10_001), model_kwargs={"cls": y})
        plain = sg.losses.dsm_loss(m, sde, x, weighting="g2", eps=0.01,
                                   generator=torch.Generator().manual_seed(10_001), model_kwargs={"cls": y})
    assert tr.history[0] == pytest.approx(float(ref), rel=1e-12)
    assert abs(float(ref) - float(plain)) > 1e-6  # the control: without importance sampling the value differs

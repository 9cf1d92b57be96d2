"""Value tests for the Trainer's option wiring.

Bug class guarded: an option accepted but not passed on (loss weighting, importance sampling,
eps, the label keyword, weight decay, the EMA warm-up, eval_fn), a logged window of the wrong
length, a resumed EMA decay. Oracles: the public :func:`~sdesolve_gen.dsm_loss` applied to the
trainer's documented batch and noise streams (data generator seeded ``seed``, noise generator
seeded ``10000 + seed``) and the typed values.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import sdesolve_gen as sg

pytest.importorskip("sdesolve_gen.train")

from sdesolve_gen.data import TOY_DATASETS  # noqa: E402


def _mlp_model(sde: sg.LinearSDE) -> sg.ScoreModel:
    """A small eps-net with every weight random (the net's zero-initialised output layer would
    make the DSM loss ||noise||^2 whatever the times, hiding eps and the time sampling)."""
    model = sg.ScoreModel(sg.MLPScoreNet(2, hidden=16, depth=1, t_max=sde.T), sde, "eps")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("weighting,importance,eps", [("g2", True, 0.05), ("sigma2", False, 0.2)])
def test_trainer_first_loss_is_dsm_loss_of_its_streams_with_every_option_forwarded(weighting, importance, eps):
    """The Trainer's first loss equals dsm_loss(weighting, importance_sampling, eps) of the first
    toy batch (data generator seeded 7) with the noise generator seeded 10007, on a VP SDE with
    T = 0.8 (so a dropped T or eps shows). Control: the same oracle with the default weighting
    and eps gives another value."""
    sde = sg.VPSDE(T=0.8)
    data = TOY_DATASETS["eight_gaussians"]()
    model = _mlp_model(sde)
    before = copy.deepcopy(model)
    tr = sg.Trainer(model, sde, data, batch_size=32, seed=7, weighting=weighting, importance_sampling=importance,
                    eps=eps, log_every=0)
    loss = tr.train_step()
    x0 = data.sample(32, generator=torch.Generator().manual_seed(7), dtype=torch.float32)

    def oracle(**kw):
        with torch.no_grad():
            return float(sg.dsm_loss(before, sde, x0, generator=torch.Generator().manual_seed(10_007), **kw))

    want = oracle(weighting=weighting, importance_sampling=importance, eps=eps)
    assert loss == pytest.approx(want, rel=1e-6, abs=0)
    assert oracle() != pytest.approx(want, rel=1e-3)


class _KwargNet(nn.Module):
    """eps-net ``(x, t, c=labels)``: records the labels it is given by the keyword ``c``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x, t, c=None):
        self.seen.append(c)
        return self.lin(x)


def test_trainer_passes_labels_by_its_label_kwarg():
    """With label_kwarg='c' the batch's labels reach the net as ``c=`` (and equal the data's
    labels at the rows the data generator drew). Oracle: the labels of the data; a net that only
    accepts ``c`` would get None if the keyword were ignored."""
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 5
    net = _KwargNet()
    sde = sg.VPSDE()
    tr = sg.Trainer(sg.ScoreModel(net, sde, "eps"), sde, (x, y), batch_size=8, seed=2, label_kwarg="c", log_every=0)
    tr.train_step()
    assert len(net.seen) == 1 and net.seen[0] is not None
    idx = torch.randint(40, (8,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(net.seen[0], y[idx])


def test_trainer_weight_decay_and_ema_warmup_reach_their_objects():
    """weight_decay=0.03 reaches AdamW (default: 0, not AdamW's own 0.01) and ema_warmup=False
    makes the EMA use the constant decay from the first update. Oracle: the typed values and
    the EMA recursion d * a + (1 - d) * p written here."""
    sde = sg.VPSDE()
    data = TOY_DATASETS["eight_gaussians"]()
    tr = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, weight_decay=0.03, log_every=0)
    assert tr.optimizer.param_groups[0]["weight_decay"] == 0.03
    assert sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, log_every=0).optimizer.param_groups[0]["weight_decay"] == 0.0
    for warm in (False, True):
        tr = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.8, ema_warmup=warm, log_every=0)
        tr.train_step()
        p1 = [p.detach().clone() for p in tr.model.parameters()]
        # torch's AveragedModel copies the first update; the decay acts from the second on
        tr.train_step()
        p2 = [p.detach().clone() for p in tr.model.parameters()]
        d = 0.8 if not warm else min(0.8, 2.0 / 11.0)
        for a, q1, q2 in zip(tr.ema.shadow, p1, p2):
            torch.testing.assert_close(a.detach(), d * q1 + (1 - d) * q2, rtol=1e-6, atol=1e-7)


def test_trainer_logs_the_mean_of_the_last_log_every_losses_and_runs_eval_fn_every_eval_every(tmp_path):
    """log.jsonl holds at steps 3 and 6 the mean of the last 3 losses (log_every=3), and eval_fn
    runs at steps 2, 4, 6 (eval_every=2) with its values logged. Oracle: the trainer's own loss
    history averaged here; the step numbers."""
    sde = sg.VPSDE()
    calls = []

    def eval_fn(tr):
        calls.append(tr.step)
        return {"probe": float(tr.step) * 0.5}

    tr = sg.Trainer(_mlp_model(sde), sde, TOY_DATASETS["two_moons"](), batch_size=8, log_every=3, eval_fn=eval_fn,
                    eval_every=2, checkpoint_dir=tmp_path)
    tr.train(6)
    assert calls == [2, 4, 6]
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in recs}
    assert sorted(by_step) == [2, 3, 4, 6]
    h = tr.history
    for s in (3, 6):
        assert by_step[s]["loss"] == pytest.approx(sum(h[s - 3:s]) / 3, rel=1e-12)
    assert by_step[2]["probe"] == 1.0 and by_step[4]["probe"] == 2.0 and by_step[6]["probe"] == 3.0
    assert "loss" not in by_step[2] and "loss" not in by_step[4]


def test_resume_takes_the_checkpoints_ema_decay(tmp_path):
    """A trainer resumed from a checkpoint trained with ema_decay=0.7 continues with 0.7 even if
    built with 0.95 (the checkpoint wins, with a warning). Oracle: the stored value."""
    sde = sg.VPSDE()
    data = TOY_DATASETS["two_moons"]()
    a = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.7, checkpoint_dir=tmp_path, log_every=0)
    a.train(2)
    b = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.95, checkpoint_dir=tmp_path, log_every=0)
    assert b.resume() and b.ema.decay == 0.7 and b.step == 2

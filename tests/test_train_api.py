"""Trainer API: the EMA model, injectable optimiser / LR scheduler / device, generator devices, logging."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.train import Trainer, load_checkpoint


def _model(seed=0):
    with sg.train.seeded(seed):
        return sg.ScoreModel(sg.MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), sg.VPSDE(), "eps")


DATA = torch.randn(128, 2, generator=torch.Generator().manual_seed(3))


def test_seeded_builds_identical_nets_and_restores_the_global_generator():
    before = torch.get_rng_state()
    a, b, c = _model(0), _model(0), _model(1)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _matches_hand_ema(module, trajectory, decay):
    """Parameters of ``module`` equal the warmed-up EMA of the recorded raw-parameter trajectory."""
    avg = [p.clone() for p in trajectory[0]]
    for n, params in enumerate(trajectory[1:], start=1):
        w = 1.0 - min(decay, (1 + n) / (10 + n))
        for a, p in zip(avg, params):
            a.lerp_(p, w)
    got = [p.detach() for p in module.parameters()]
    return all(torch.allclose(g, a, rtol=0, atol=1e-7) for g, a in zip(got, avg))


def test_ema_model_holds_the_averaged_weights():
    """After 30 steps ema_model() equals the EMA computed by hand from the raw weights of every
    step, is in eval mode and is an independent copy. Control: the raw model (what a buggy
    ema_model returning the raw weights would give) fails the same check."""
    tr = Trainer(_model(), sg.VPSDE(), DATA, batch_size=16, lr=1e-2, ema_decay=0.99, log_every=0)
    trajectory = []
    for _ in range(30):
        tr.train_step()
        trajectory.append([p.detach().clone() for p in tr.model.parameters()])
    ema = tr.ema_model()
    assert not ema.training
    assert _matches_hand_ema(ema, trajectory, 0.99)
    assert not _matches_hand_ema(tr.model, trajectory, 0.99)
    assert not _matches_hand_ema(copy.deepcopy(tr.model).eval(), trajectory, 0.99)
    with torch.no_grad():
        next(ema.parameters()).add_(1.0)
    assert _matches_hand_ema(tr.ema.module, trajectory, 0.99)  # the trainer's EMA is untouched
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    assert not torch.allclose(tr.ema_model()(x, t), tr.model(x, t))


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)


def test_injected_optimizer_and_scheduler_are_used_checkpointed_and_resumed_bit_exact(tmp_path):
    def make(ckpt):
        return Trainer(_model(), sg.VPSDE(), DATA, batch_size=16, optimizer=_sgd, lr_scheduler=_step_lr,
                       checkpoint_dir=ckpt, log_every=0)

    straight = make(tmp_path / "a")
    straight.train(8)
    assert isinstance(straight.optimizer, torch.optim.SGD)
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)
    half = make(tmp_path / "b")
    half.train(4)
    state = load_checkpoint(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "b4.pt")
    assert state["scheduler"]["last_epoch"] == 4 and "momentum_buffer" in str(state["optimizer"]["state"])
    del half
    resumed = make(tmp_path / "b")
    assert resumed.resume() and resumed.step == 4
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5)
    resumed.train(8)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    # control: the same resume with the scheduler restarted from scratch (its state not restored)
    # takes other steps, so the bit-exact match above needs the checkpointed scheduler
    fresh = make(tmp_path / "c")
    fresh.load_state_dict({**load_checkpoint(tmp_path / "b4.pt"), "scheduler": fresh.scheduler.state_dict()})
    fresh.train(8)
    assert not all(torch.equal(p, q) for p, q in zip(straight.model.parameters(), fresh.model.parameters()))


def test_optimizer_instance_and_lambda_lr_instance(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    tr = Trainer(model, sg.VPSDE(), DATA, batch_size=16, optimizer=opt, lr_scheduler=sched, log_every=0)
    tr.train(4)
    assert tr.optimizer is opt and opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 5)


def test_bad_optimizer_scheduler_device_arguments():
    model = _model()
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(model, sg.VPSDE(), DATA, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="lr and weight_decay"):
        Trainer(model, sg.VPSDE(), DATA, optimizer=_sgd, lr=0.1)
    with pytest.raises(ValueError, match="lr_scheduler or lr_decay_steps"):
        Trainer(model, sg.VPSDE(), DATA, lr_scheduler=_step_lr, lr_decay_steps=10)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr_scheduler must schedule"):
        Trainer(model, sg.VPSDE(), DATA, lr_scheduler=_step_lr(opt))
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(model, sg.VPSDE(), DATA, optimizer="adam")
    with pytest.raises(ValueError, match="device"):
        Trainer(model, sg.VPSDE(), DATA, device="no-such-device")
    with pytest.raises(ValueError, match="label_dropout"):
        Trainer(model, sg.VPSDE(), DATA, label_dropout=1.0)
    with pytest.raises(ValueError, match="null_label"):
        Trainer(model, sg.VPSDE(), (DATA, torch.zeros(128, dtype=torch.long)), label_dropout=0.1)
    with pytest.raises(ValueError, match="labelled data"):
        Trainer(model, sg.VPSDE(), DATA, label_dropout=0.1, null_label=3)
    with pytest.raises(ValueError, match="null_label=0 is also a class label"):
        Trainer(model, sg.VPSDE(), (DATA, torch.zeros(128, dtype=torch.long)), label_dropout=0.1, null_label=0)
    with pytest.raises(TypeError, match="labels y"):
        Trainer(model, sg.VPSDE(), (DATA, torch.zeros(128)))
    with pytest.raises(ValueError, match="labels y must have shape"):
        Trainer(model, sg.VPSDE(), (DATA, torch.zeros(5, dtype=torch.long)))


def test_generators_follow_the_model_and_data_devices():
    tr = Trainer(_model(), sg.VPSDE(), DATA, device="cpu", log_every=0)
    assert tr.device == torch.device("cpu") == next(tr.model.parameters()).device
    assert tr.g_noise.device == tr.device and tr.g_data.device == DATA.device
    assert tr.ema.module is not tr.model and next(tr.ema.module.parameters()).device == tr.device


def test_dsm_loss_refuses_a_generator_on_another_device():
    """x0 on the meta device with a CPU generator (a CPU-only machine cannot build a generator on
    another device: torch.Generator(device='meta') raises), refused before any draw, naming
    `generator`. Control: the CPU pair works."""
    score = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="generator is on device cpu but x0 is on meta"):
        sg.dsm_loss(score, sg.VPSDE(), torch.zeros(4, 2, device="meta"), generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        sg.dsm_loss(score, sg.VPSDE(), torch.zeros(4, 2), generator=0)
    loss = sg.dsm_loss(score, sg.VPSDE(), torch.zeros(4, 2), generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and bool(torch.isfinite(loss))


def test_progress_is_logged_every_n_steps_and_quiet_by_default(caplog):
    tr = Trainer(_model(), sg.VPSDE(), DATA, batch_size=16, log_every=3)
    with caplog.at_level(logging.WARNING, logger="sdesolve_gen"):
        tr.train(3)
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="sdesolve_gen.train"):
        tr.train(9)
    steps = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "sdesolve_gen.train"]
    assert steps == ["step 6", "step 9"]

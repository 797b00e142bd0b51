"""Freeze/unfreeze schedules change requires_grad and the param groups' learning rates at the set epochs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medseg.losses import build_loss
from medseg.networks import build_network, encoder_stages
from medseg.transfer import FreezeSchedule, LossEpochHandler, ProgressiveUnfreeze, TransferScheduleHandler

LR = 0.01


def deeplab():
    torch.manual_seed(0)
    return build_network(
        "deeplabv3plus",
        in_channels=1,
        out_channels=2,
        encoder_depth=10,
        encoder_channels=(4, 8, 8, 8),
        aspp_channels=8,
        low_level_channels=4,
        aspp_dilations=(1, 2),
    )


def encoder_params(model):
    return [p for stage in encoder_stages(model) for p in stage.parameters()]


def head_params(model):
    ids = {id(p) for p in encoder_params(model)}
    return [p for p in model.parameters() if id(p) not in ids]


def test_freeze_then_unfreeze_at_the_configured_epoch():
    model = deeplab()
    schedule = FreezeSchedule(freeze_epochs=2, encoder_lr_factor=0.1)
    optimizer = torch.optim.SGD(schedule.param_groups(model, LR), lr=LR)
    assert [g["name"] for g in optimizer.param_groups] == ["encoder", "head"]
    seen = {}
    for epoch in (1, 2, 3, 4):
        schedule.apply(epoch, model, optimizer)
        seen[epoch] = (
            all(p.requires_grad for p in encoder_params(model)),
            not any(p.requires_grad for p in encoder_params(model)),
            [g["lr"] for g in optimizer.param_groups],
        )
        assert all(p.requires_grad for p in head_params(model))
    assert seen[1] == seen[2] == (False, True, [0.0, LR])
    assert seen[3][:2] == seen[4][:2] == (True, False)
    assert seen[3][2] == pytest.approx([0.1 * LR, LR])


def test_frozen_encoder_does_not_move_but_the_head_does():
    model = deeplab()
    schedule = FreezeSchedule(freeze_epochs=1)
    optimizer = torch.optim.AdamW(schedule.param_groups(model, LR), lr=LR)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 1, 32, 32)).float()
    loss_fn = build_loss("dice_ce")

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    schedule.apply(1, model, optimizer)
    enc0, head0 = model.encoder.conv1.weight.clone(), model.head.conv.weight.clone()
    step()
    assert torch.equal(model.encoder.conv1.weight, enc0)
    assert not torch.equal(model.head.conv.weight, head0)
    schedule.apply(2, model, optimizer)
    step()
    assert not torch.equal(model.encoder.conv1.weight, enc0)


def test_progressive_unfreeze_deepest_stage_first():
    model = deeplab()
    schedule = ProgressiveUnfreeze(epochs_per_stage=2, encoder_lr_factor=0.5, freeze_epochs=1)
    optimizer = torch.optim.SGD(schedule.param_groups(model, LR), lr=LR)
    names = [g["name"] for g in optimizer.param_groups]
    assert names == [
        "encoder.stage0",
        "encoder.stage1",
        "encoder.stage2",
        "encoder.stage3",
        "encoder.stage4",
        "head",
    ]
    stages = encoder_stages(model)
    expected = {
        1: (False, False, False, False, False),
        2: (False, False, False, False, True),  # layer4 first
        3: (False, False, False, False, True),
        4: (False, False, False, True, True),
        6: (False, False, True, True, True),
        8: (False, True, True, True, True),
        10: (True, True, True, True, True),
        30: (True, True, True, True, True),
    }
    for epoch, trainable in expected.items():
        assert schedule.apply(epoch, model, optimizer) == trainable
        for stage, on in zip(stages, trainable):
            assert all(p.requires_grad == on for p in stage.parameters())
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([0.5 * LR if on else 0.0 for on in trainable] + [LR])


def test_unfreezing_follows_the_head_lr_and_keeps_lambda_schedulers_in_step():
    model = deeplab()
    schedule = FreezeSchedule(freeze_epochs=1, encoder_lr_factor=0.1)
    optimizer = torch.optim.SGD(schedule.param_groups(model, LR), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    schedule.apply(1, model, optimizer, scheduler)
    optimizer.step()
    scheduler.step()  # head lr halves: 0.005
    schedule.apply(2, model, optimizer, scheduler)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0005, 0.005])
    assert scheduler.base_lrs == pytest.approx([0.001, LR])
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.00025, 0.0025])


def test_schedule_checks():
    model = deeplab()
    with pytest.raises(
        ValueError, match=r"optimizer has no parameter group\(s\) named \['encoder', 'head'\]"
    ):
        FreezeSchedule(1).apply(1, model, torch.optim.SGD(model.parameters(), lr=LR))
    with pytest.raises(ValueError, match="`freeze_epochs` must be an integer >= 0, got -1"):
        FreezeSchedule(-1)
    with pytest.raises(ValueError, match="`epochs_per_stage` must be an integer >= 1, got 0"):
        ProgressiveUnfreeze(0)
    with pytest.raises(ValueError, match="`encoder_lr_factor` must be > 0, got 0"):
        FreezeSchedule(1, encoder_lr_factor=0)
    with pytest.raises(ValueError, match="LightUNet has no encoder stages"):
        FreezeSchedule(1).param_groups(build_network("light_unet", features=(4, 8)), LR)


def test_handlers_read_the_engine_epoch():
    model = deeplab()
    schedule = FreezeSchedule(freeze_epochs=1)
    optimizer = torch.optim.SGD(schedule.param_groups(model, LR), lr=LR)
    handler = TransferScheduleHandler(schedule, model, optimizer)
    handler(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    assert not model.encoder.conv1.weight.requires_grad
    handler(SimpleNamespace(state=SimpleNamespace(epoch=2)))
    assert model.encoder.conv1.weight.requires_grad
    loss = build_loss("boundary", alpha_start=0.0, alpha_step=0.1)
    LossEpochHandler(loss)(SimpleNamespace(state=SimpleNamespace(epoch=4)))
    assert loss.alpha == pytest.approx(0.3)
    with pytest.raises(TypeError, match="needs a set_epoch"):
        LossEpochHandler(build_loss("dice_ce"))


def test_handlers_attach_to_an_ignite_engine():
    ignite_engine = pytest.importorskip("ignite.engine")
    model = deeplab()
    schedule = ProgressiveUnfreeze(epochs_per_stage=1, freeze_epochs=1)
    optimizer = torch.optim.SGD(schedule.param_groups(model, LR), lr=LR)
    record = []

    def process(engine, batch):
        record.append(
            (
                engine.state.epoch,
                model.encoder.layer4[0].conv1.weight.requires_grad,
                model.encoder.layer3[0].conv1.weight.requires_grad,
                optimizer.param_groups[4]["lr"],
            )
        )

    engine = ignite_engine.Engine(process)
    TransferScheduleHandler(schedule, model, optimizer).attach(engine)
    engine.run([0], max_epochs=3)
    assert record == [
        (1, False, False, 0.0),
        (2, True, False, pytest.approx(0.1 * LR)),
        (3, True, True, pytest.approx(0.1 * LR)),
    ]

"""The small handlers and helpers of the training engine, on real ignite engines."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from medseg.engine.handlers import GradientClipHandler, NaNGuardHandler, NonFiniteLossError
from medseg.engine.handlers.early_stop import EarlyStopping
from medseg.engine.handlers.record import run_record
from medseg.engine.runner import parse_set
from medseg.engine.trust import check_bundle_trust
from medseg.errors import MedsegError


def _trainer(loss_fn, data, max_norm=None, handlers=()):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
                                loss_function=loss_fn, decollate=False, train_handlers=list(handlers),
                                prepare_batch=lambda b, d, nb, **kw: (b["image"], b["label"]))
    return trainer, net


def test_nan_guard_names_step_and_cases():
    data = [{"image": torch.ones(2, 3), "label": torch.zeros(2, 1), "case_id": ["BraTS2021_00007", "BraTS2021_00009"]}]
    trainer, _ = _trainer(lambda y, t: (y - t).mean() * float("nan"), data, handlers=[NaNGuardHandler()])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "loss is nan at epoch 1, iteration 1" in message
    assert "BraTS2021_00007, BraTS2021_00009" in message


def _nan_at(iteration: int):
    """A loss that is NaN at ``iteration`` (1-based) only."""
    calls = {"n": 0}

    def loss(y, t):
        calls["n"] += 1
        value = ((y - t) ** 2).mean()
        return value * float("nan") if calls["n"] == iteration else value

    return loss


@pytest.mark.parametrize("bad", [2, 3], ids=["mid_epoch", "last_iteration"])
def test_the_lagged_nan_guard_names_the_bad_step_and_stops_before_the_epochs_checkpoint(bad):
    """``lag=True`` (the GPU route, where no step waits for the device): the verdict is read one step late,
    still naming the step and its cases, and an epoch ending on a NaN never reaches the handlers after the guard."""
    data = [{"image": torch.ones(1, 3) * i, "label": torch.zeros(1, 1), "case_id": [f"case{i}"]} for i in (1, 2, 3)]
    guard = NaNGuardHandler(lag=True)
    trainer, _ = _trainer(_nan_at(bad), data, handlers=[guard])
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    saved = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: saved.append(e.state.epoch))  # as a checkpoint writer
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    assert f"loss is nan at epoch 1, iteration {bad}; cases in the batch: case{bad}" in str(info.value)
    assert saved == []  # the epoch's checkpoint handler never ran
    # Read one step late: the bad step itself completed (nothing waited for its loss); the error came at
    # the next step's guard, or at the epoch's end.
    assert seen == list(range(1, bad + 1))


def test_the_default_nan_guard_reads_cpu_losses_at_once():
    data = [{"image": torch.ones(1, 3), "label": torch.zeros(1, 1), "case_id": [f"case{i}"]} for i in (1, 2, 3)]
    trainer, _ = _trainer(_nan_at(1), data, handlers=[NaNGuardHandler()])
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    with pytest.raises(NonFiniteLossError, match="iteration 1; cases in the batch: case1"):
        trainer.run()
    assert seen == []  # raised in the guard, at the first iteration


def test_throughput_train_loss_is_the_exact_mean_of_the_step_losses():
    """The loss sum stays on the device (no read-back per step); the epoch's mean is that of the Python floats."""
    from medseg.engine.handlers import ThroughputHandler

    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(5)]
    trainer, _ = _trainer(lambda y, t: ((y - t) ** 2).mean(), data, handlers=[ThroughputHandler(progress_bar=False)])
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    expected = 0.0
    for value in losses:
        expected += value * 2  # batched output: each step's mean loss times its 2 samples
    assert trainer.state.metrics["train_loss"] == expected / 10


def test_gradient_clipping_bounds_the_norm():
    data = [{"image": torch.full((4, 3), 100.0), "label": torch.zeros(4, 1)}]
    norms = []
    trainer, net = _trainer(lambda y, t: ((y - t) ** 2).mean(), data, handlers=[GradientClipHandler(max_norm=0.5)])

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        norms.append(math.sqrt(sum(float(p.grad.norm() ** 2) for p in net.parameters())))

    trainer.run()
    assert norms and norms[0] <= 0.5 + 1e-5


def test_early_stopping_counts_validations_and_stops_the_trainer():
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    scores = iter([0.5, 0.6, 0.59, 0.6, 0.58, 0.9])

    @evaluator.on(Events.COMPLETED)
    def score(engine):
        engine.state.key_metric_name = "val_mean_dice"
        engine.state.metrics["val_mean_dice"] = next(scores)

    # Registered after the scoring handler, as MONAI's metrics are attached before val handlers.
    stopper = EarlyStopping(evaluator, patience=3)
    stopper.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([0], max_epochs=10)
    assert trainer.state.epoch == 5  # best 0.6 at epoch 2, then three epochs without improvement
    assert run_record(trainer).early_stop == {"counter": 3, "best": 0.6}
    with pytest.raises(ValueError, match="patience must be >= 0"):
        EarlyStopping(evaluator, patience=-1)


def test_parse_set_reads_json_values():
    assert parse_set(["max_epochs=2", "roi_size=[64,64,64]", "amp=false", "run_name=demo one",
                      "network_spec#kwargs#dropout=0.1"]) == {
        "max_epochs": 2, "roi_size": [64, 64, 64], "amp": False, "run_name": "demo one",
        "network_spec#kwargs#dropout": 0.1}
    with pytest.raises(MedsegError, match="KEY=VALUE"):
        parse_set(["max_epochs"])


def test_untrusted_bundle_needs_trust_flag(tmp_path, monkeypatch):
    from medseg.engine.data import locate_bundle

    monkeypatch.delenv("MEDSEG_TRUSTED_BUNDLES", raising=False)
    check_bundle_trust(locate_bundle("brats_attention_unet3d"))  # our own bundles are trusted
    with pytest.raises(MedsegError, match="--trust-bundle"):
        check_bundle_trust(tmp_path / "downloaded_bundle")
    check_bundle_trust(tmp_path / "downloaded_bundle", trust=True)
    monkeypatch.setenv("MEDSEG_TRUSTED_BUNDLES", str(tmp_path))  # the installer's explicit list
    check_bundle_trust(tmp_path / "downloaded_bundle")


def test_trust_is_by_signature_not_by_path(tmp_path, monkeypatch):
    """A ./runs folder is not trusted for where it lies; a signed output bundle is, until its configs change."""
    from medseg.engine.trust import sign_bundle, user_key

    monkeypatch.delenv("MEDSEG_TRUSTED_BUNDLES", raising=False)
    monkeypatch.chdir(tmp_path)
    planted = tmp_path / "runs" / "cloned" / "configs"
    planted.mkdir(parents=True)
    (planted / "train.json").write_text('{"x": "$1"}')
    with pytest.raises(MedsegError, match="not a trusted bundle"):
        check_bundle_trust(planted.parent)
    sign_bundle(planted.parent)
    check_bundle_trust(planted.parent)
    key = Path(os.environ["MEDSEG_HOME"]) / "key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(user_key()) == 32
    (planted / "train.json").write_text('{"x": "$2"}')  # edited after signing
    with pytest.raises(MedsegError, match="not a trusted bundle"):
        check_bundle_trust(planted.parent)
    sign_bundle(planted.parent)
    (planted / "extra.json").write_text("{}")  # a file added after signing
    with pytest.raises(MedsegError, match="not a trusted bundle"):
        check_bundle_trust(planted.parent)
    sign_bundle(planted.parent)
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path / "another user"))  # another key: not this user's signature
    with pytest.raises(MedsegError, match="not a trusted bundle"):
        check_bundle_trust(planted.parent)
    assert not (Path(os.environ["MEDSEG_HOME"]).parent / "trusted_outputs.txt").exists()


def test_transform_rng_capture_does_not_disturb_the_stream_and_restores_it():
    """Saving a checkpoint must not re-seed augmentations (``Compose.flatten()`` would)."""
    from medseg.engine.determinism import _randomizable, restore_transform_rng_states, transform_rng_states
    from medseg.transforms import train_transforms

    pipelines = [train_transforms("regions", (16, 16, 16), convention="brats2021") for _ in range(2)]
    for pipeline in pipelines:
        for t in _randomizable(pipeline):
            t.R.seed(7)
    watched, reference = (_randomizable(p) for p in pipelines)
    assert len(watched) == 9  # 6 dictionary transforms + the crop, scale and shift array transforms inside
    first = [t.R.random() for t in watched]
    states = transform_rng_states(pipelines[0])
    after = [t.R.random() for t in watched]
    assert first == [t.R.random() for t in reference] and after == [t.R.random() for t in reference]
    restore_transform_rng_states(pipelines[0], states)
    assert [t.R.random() for t in watched] == after


def test_tracking_listed_before_the_resume_is_a_clear_error(tmp_path):
    """The one order between handlers that matters is checked: a resumed run must continue its MLflow run."""
    from ignite.engine import Engine

    from medseg.engine.handlers.run_state import RunStateHandler
    from medseg.engine.handlers.tracking import TrackingHandler
    from medseg.errors import MedsegError

    network = torch.nn.Linear(1, 1)
    trainer = Engine(lambda engine, batch: None)
    TrackingHandler(tmp_path, tmp_path, seed=0, enabled=False).attach(trainer)  # listed first: wrong
    RunStateHandler(tmp_path, network, {"name": "segresnet", "kwargs": {}}, torch.optim.SGD(network.parameters(), 0.1),
                    resume_dir=tmp_path).attach(trainer)
    assert run_record(trainer).resume_pending
    with pytest.raises(MedsegError, match="list RunStateHandler before TrackingHandler"):
        trainer.run([0], max_epochs=1)

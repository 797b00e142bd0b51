"""SIGTERM (``docker stop``, SLURM, Kubernetes) and Ctrl-C end a training run cleanly: KILLED in MLflow, resumable.

Each run is a real ``medseg train`` subprocess tracked on a real ``mlflow server``; the signal
is sent through the operating system by the process to itself at a named point of training
(``MEDSEG_FAULT_AT`` with ``MEDSEG_FAULT_SIGNAL``, :mod:`medseg.utils.faults`), so the moment
is the same on every machine.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import load_checkpoint

TRAIN = {**TINY, "max_epochs": "3"}


# SIGTERM exits with 143; after Ctrl-C the process ends by SIGINT itself, as a cleaned-up program should
# (the shell shows 130).
@pytest.mark.parametrize(("name", "exit_status"), [("TERM", 128 + signal.SIGTERM), ("INT", -signal.SIGINT)])
def test_signal_marks_the_run_killed_and_resume_finishes_it(name, exit_status, tiny_brats_rel, mlflow_server,
                                                            tmp_path):
    out = tmp_path / "out"
    # 3 training iterations per epoch: the 5th is the middle of epoch 2, after epoch 1's checkpoint.
    stopped = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out, *set_args(TRAIN),
                     "--tracking-uri", mlflow_server, cwd=tmp_path,
                     env={"MEDSEG_FAULT_AT": "train-iteration:5", "MEDSEG_FAULT_SIGNAL": name})
    log = stopped.stdout + stopped.stderr
    assert stopped.returncode == exit_status, log[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert f"continue with: medseg train {BUNDLE} --resume {out}" in stopped.stderr, stopped.stderr[-2000:]
    # The newest complete checkpoint is epoch 1's; no temporary file is left.
    assert load_checkpoint(out / "models" / "last.pt")["epoch"] == 1
    assert not list((out / "models").glob(".*"))

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("medseg").experiment_id],
                              filter_string=f"params.bundle_root = '{out.resolve()}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "KILLED"
    reason = run.data.tags["medseg.failure_reason"]
    assert reason.startswith("stopped by SIG") and f"--resume {out}" in reason, reason
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]

    resumed = medseg("train", BUNDLE, "--resume", out, "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    assert meta["epochs"] == 3 and meta["mlflow_run_id"] == run.info.run_id
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]


def test_the_handler_is_restored_after_a_run(tmp_path):
    """In-process runs leave SIGTERM's handler as they found it."""
    from ignite.engine import Engine, Events

    from medseg.engine.handlers.interrupt import InterruptHandler, RunInterrupted

    before = signal.getsignal(signal.SIGTERM)
    engine = Engine(lambda e, b: None)
    InterruptHandler().attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(signal.getsignal(signal.SIGTERM)))
    engine.run([0, 1], max_epochs=1)
    assert seen and all(h is not before for h in seen)
    assert signal.getsignal(signal.SIGTERM) is before

    stopped = Engine(lambda e, b: signal.raise_signal(signal.SIGTERM))
    InterruptHandler().attach(stopped)
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM") as caught:
        stopped.run([0, 1], max_epochs=1)
    assert caught.value.exit_status == 143 and signal.getsignal(signal.SIGTERM) is before


def test_demo_resume_needs_an_interrupted_run(tmp_path):
    result = medseg("demo", "--workdir", tmp_path / "w", "--resume", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'w' / 'run'}: no interrupted demo run to resume" in result.stderr


def test_the_cli_suggests_the_cpu_tryout_for_gpu_settings(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = medseg("train", Path(BUNDLE).parent / "brats_segresnet", "--data", empty, "--no-tracking", cwd=tmp_path)
    assert result.returncode == 2
    assert "--preset cpu-tryout" in result.stdout + result.stderr
    quiet = medseg("train", Path(BUNDLE).parent / "brats_segresnet", "--data", empty, "--no-tracking",
                   "--preset", "cpu-tryout", cwd=tmp_path)
    assert quiet.returncode == 2 and "--preset cpu-tryout" not in quiet.stdout + quiet.stderr

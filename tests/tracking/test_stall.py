"""A tracking server that stalls (answers ``/health``, then nothing) or dies mid-run never stalls training.

Real loopback servers only: :class:`stall_servers.StallProxy` in front of the real ``mlflow
server`` fixture, switched to "hold every request" at a chosen request. Each test has a hard
timeout, so a regression fails instead of hanging the suite (MLflow's own client would wait
7 x 120 s per call).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from stall_servers import StallProxy, metrics_batch, path_contains

from medseg.cli.main import main
from medseg.errors import MedsegError
from medseg.tracking import open_tracking
from medseg.tracking.connect import check_tracking_server
from medseg.tracking.spool import Spool, spool_root, waiting_runs
from medseg.tracking.sync import SYNCED_TAG, sync_run
from medseg.tracking.timeouts import HTTP_DEFAULTS, apply_http_defaults

# MLflow's own SQLAlchemy usage; nothing medseg can act on.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _wait_for(condition, what: str, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {limit_s} s"
        time.sleep(0.05)


def _artifacts(client, run_id: str, folder: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, folder):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_http_defaults_bound_mlflow_without_overriding_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import environment_variables as mlflow_env

    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice stays
    assert apply_http_defaults() == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "7", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    # The names are MLflow's, and MLflow reads them at every request (not once at import).
    assert mlflow_env.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 7
    assert mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2
    assert mlflow_env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    assert mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 1


@pytest.mark.timeout(30)
def test_check_refuses_a_server_that_answers_only_health() -> None:
    with StallProxy(mode="health-only") as proxy:
        start = time.monotonic()
        with pytest.raises(MedsegError) as info:
            check_tracking_server(proxy.uri, timeout_s=1)
        assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server at {proxy.uri} answers /health but its API did not answer")
    assert message.endswith("Start it, pass --tracking-uri, or use --tracking-fallback local")
    assert "\n" not in message


@pytest.mark.timeout(60)
def test_a_server_that_stalls_after_the_check_fails_fast_or_falls_back(
    mlflow_server: str, local_runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSEG_TRACKING_START_TIMEOUT", "2")
    experiment = f"stall-start-{uuid.uuid4().hex[:6]}"
    with StallProxy(mlflow_server, stall_when=path_contains("experiments/get-by-name")) as proxy:
        start = time.monotonic()
        with pytest.raises(MedsegError) as info:
            open_tracking(proxy.uri, experiment, runs_dir=local_runs_dir)
        assert time.monotonic() - start < 8
        assert proxy.stalled_at is not None and "get-by-name" in proxy.stalled_at
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server at {proxy.uri}: no answer within 2 s while getting "
                              f"experiment {experiment!r}; it may be stuck or overloaded.")
    assert message.endswith("--tracking-fallback local") and "\n" not in message

    with StallProxy(mlflow_server, stall_when=path_contains("experiments/get-by-name")) as proxy:
        session = open_tracking(proxy.uri, experiment, fallback="local", runs_dir=local_runs_dir)
    assert session.uri.startswith("sqlite:///") and session.fallback_from == proxy.uri
    assert session.spool_dir is None  # the local store is this machine: nothing to spool


@pytest.mark.timeout(90)
def test_stall_mid_run_never_blocks_training_and_sync_completes_the_run(
    mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    experiment = f"stall-mid-{uuid.uuid4().hex[:6]}"
    model = f"stall-model-{uuid.uuid4().hex[:6]}"
    checkpoint = tmp_path / "out" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"\x80\x02weights" * 100)
    (tmp_path / "out" / "meta.json").write_text(json.dumps({"PatientName": "Doe^Jane", "epochs": 5}))
    client = MlflowClient(mlflow_server)

    with StallProxy(mlflow_server, stall_when=metrics_batch(2)) as proxy:
        session = open_tracking(proxy.uri, experiment, runs_dir=runs)
        run_id = session.start_run("stall-mid-run")
        session.log_config({"max_epochs": 5, "lr": 0.01})
        session.log_metrics({"loss": 1.0, "val_dice/TC": 0.1}, step=0)
        _wait_for(lambda: client.get_metric_history(run_id, "loss"), "step 0 on the server")
        slowest = 0.0
        for step in range(1, 5):  # the server hangs at step 1 and never answers again
            start = time.monotonic()
            session.log_metrics({"loss": 1.0 / (step + 1), "val_dice/TC": 0.1 * (step + 1)}, step=step)
            slowest = max(slowest, time.monotonic() - start)
        assert slowest < 0.5, f"an epoch waited {slowest:.1f} s for the stalled server"
        session.log_artifact(checkpoint, "checkpoints")
        session.log_artifact(checkpoint.parent, "bundle")
        (tmp_path / "out" / "meta.json").write_text("{}")  # changed after logging: what was logged is kept
        start = time.monotonic()
        assert session.register_model(model, "checkpoints/model.pt") is None  # queued, not lost
        session.end_run()
        waited = time.monotonic() - start
        assert proxy.stalled_at is not None and proxy.held >= 1
        # Bounded: the probe finds the server silent (5 s idle + 5 s probe, then an immediate probe).
        assert waited < 30, f"register_model + end_run waited {waited:.1f} s"
        assert session.run_id is None and session.spooled == 8  # 4 metrics, 2 uploads, registration, end
        assert f"medseg tracking sync {run_id}" in session.errors[-1]
        spool = spool_root(runs) / run_id
        assert spool.is_dir() and waiting_runs(spool_root(runs)) == [run_id]

        # What the server has now: the run as it was when it stalled.
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING"
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0]

        proxy.mode = "forward"  # the server is back
        report = sync_run(run_id, runs_dir=runs)
    assert report.written == 8 and report.refused == [] and report.uri == proxy.uri
    assert not spool.exists()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    loss = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert [m.value for m in client.get_metric_history(run_id, "val_dice/TC")] == pytest.approx(
        [0.1 * (s + 1) for s in range(5)])
    assert run.info.end_time >= loss[-1].timestamp  # the end time is when training ended, not when synced
    assert run.data.params["max_epochs"] == "5"
    assert run.data.tags[SYNCED_TAG] == "8"
    assert run.data.tags["medseg.registered_model"] == f"{model}/1"
    assert {v.run_id for v in client.search_model_versions(f"name='{model}'")} == {run_id}
    assert {"checkpoints/model.pt", "bundle/model.pt", "bundle/meta.json"} <= _artifacts(client, run_id)
    meta = json.loads(Path(client.download_artifacts(run_id, "bundle/meta.json", str(tmp_path))).read_text())
    assert meta["epochs"] == 5 and meta["PatientName"].startswith("sha256:")  # as logged, scrubbed
    weights = Path(client.download_artifacts(run_id, "checkpoints/model.pt", str(tmp_path / "dl")))
    assert weights.read_bytes() == checkpoint.read_bytes()

    with pytest.raises(MedsegError, match=f"no tracking records of run {run_id} are waiting .*none"):
        sync_run(run_id, runs_dir=runs)


@pytest.mark.timeout(60)
def test_a_dead_server_is_given_up_fast_and_the_resumed_run_sends_what_was_kept(
    mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    experiment = f"dead-mid-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(mlflow_server)
    proxy = StallProxy(mlflow_server)
    session = open_tracking(proxy.uri, experiment, runs_dir=runs)
    run_id = session.start_run("dies")
    session.log_metrics({"loss": 1.0}, step=0)
    _wait_for(lambda: client.get_metric_history(run_id, "loss"), "step 0 on the server")
    proxy.close()  # the server is gone: connections are refused
    for step in (1, 2):
        session.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    start = time.monotonic()
    session.end_run("KILLED", reason="preempted")
    assert time.monotonic() - start < 15
    assert session.spooled >= 3 and any("kept in" in e for e in session.errors)

    # `medseg train --resume` reopens the run on a server that answers: the kept records go first.
    resumed = open_tracking(mlflow_server, experiment, runs_dir=runs)
    assert resumed.start_run(resume_run_id=run_id) == run_id
    resumed.log_metrics({"loss": 0.25}, step=3)
    resumed.end_run()
    assert resumed.spooled == 0 and waiting_runs(spool_root(runs)) == []
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]
    assert run.data.tags["medseg.failure_reason"] == "preempted" and run.data.tags["medseg.resume_count"] == "1"


@pytest.mark.timeout(60)
def test_a_healthy_server_leaves_no_spool_behind(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    (tmp_path / "best.pt").write_bytes(b"weights")
    session = open_tracking(mlflow_server, f"healthy-{uuid.uuid4().hex[:6]}", runs_dir=runs)
    run_id = session.start_run("healthy")
    session.log_metrics({"loss": 0.5}, step=1)
    session.log_artifact(tmp_path / "best.pt", "checkpoints")
    assert (spool_root(runs) / run_id / "journal.jsonl").is_file()  # journaled until confirmed
    session.end_run()
    assert session.spooled == 0 and session.errors == [] and not runs.exists()
    client = MlflowClient(mlflow_server)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]


def test_spool_journal_survives_a_torn_line_and_is_locked_while_written(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool.open(root, "run1", "http://127.0.0.1:1")
    for step in range(3):
        spool.append({"kind": "metrics", "step": step, "timestamp": 1, "values": {"loss": 1.0}})
    spool.mark_done(0)
    with pytest.raises(MedsegError, match="in use by another medseg process"):
        Spool.load(root, "run1")
    spool.release()
    with open(root / "run1" / "journal.jsonl", "a") as journal:
        journal.write('{"seq": 3, "rec')  # a process killed mid-line
    again = Spool.load(root, "run1")
    assert [seq for seq, _ in again.pending()] == [1, 2]
    assert again.uri == "http://127.0.0.1:1" and waiting_runs(root) == ["run1"]
    again.mark_done(1)
    again.mark_done(2, "rejected")
    assert again.remove_if_done() and waiting_runs(root) == []
    with pytest.raises(MedsegError, match="is not an MLflow run id"):
        Spool.open(root, "../elsewhere", "http://127.0.0.1:1")


def test_sync_without_a_spool_says_which_runs_wait(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Spool.open(spool_root(tmp_path), "f" * 32, "http://127.0.0.1:1").release()
    assert main(["tracking", "sync", "0" * 32, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"medseg tracking: error: no tracking records of run {'0' * 32} are waiting in "
                   f"{spool_root(tmp_path)} (runs waiting there: {'f' * 32})")

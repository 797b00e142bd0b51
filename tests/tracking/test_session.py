"""A full MLflow round trip against the embedded sqlite store and a real ``mlflow server``."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medseg.errors import MedsegError
from medseg.tracking import (
    REPRODUCTION_OF_TAG,
    NullTracker,
    compare_manifest,
    fetch_run_for_reproduction,
    open_tracking,
    verify_dataset,
)
from medseg.tracking.params import TRUNCATION_MARKER, mlflow_limits
from medseg.tracking.plots import plot_training_curves

CONFIG: dict[str, Any] = {
    "network": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 64], "strides": [2, 2]},
    "optimizer": {"name": "adamw", "lr": 1e-3},
    "max_epochs": 3,
    "seed": 1234,
    "notes": "n" * 7000,  # longer than MLflow 3's 6000-character param limit
    "dicom": {"PatientName": "Doe^John", "PatientID": "MRN-0042"},
    "many": {f"k{i:03d}": i for i in range(130)},  # > 100 params: several batch calls
}
# MLflow's own SQLAlchemy usage; nothing medseg can act on.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

EPOCHS = [
    {"loss": 0.9, "val_dice/TC": 0.20, "val_dice/WT": 0.30, "lr": 1e-3, "samples_per_s": 10.0},
    {"loss": 0.6, "val_dice/TC": 0.45, "val_dice/WT": 0.55, "lr": 5e-4, "samples_per_s": 11.0},
    {"loss": 0.4, "val_dice/TC": 0.60, "val_dice/WT": 0.70, "lr": 2.5e-4, "samples_per_s": 12.0},
]


def _artifacts(client: Any, run_id: str, folder: str | None = None) -> set[str]:
    """Every artifact file path of a run, recursively."""
    out: set[str] = set()
    for info in client.list_artifacts(run_id, folder):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_full_round_trip(
    store: tuple[str | None, Path],
    tiny_dataset: Path,
    git_repo: Path,
    tmp_path: Path,
    git: Callable[..., str],
) -> None:
    uri, runs_dir = store
    experiment = f"roundtrip-{uuid.uuid4().hex[:8]}"
    session = open_tracking(uri, experiment, runs_dir=runs_dir, strict=True)
    if uri is None:
        assert session.uri == f"sqlite:///{runs_dir.absolute().as_posix()}/mlflow.db"
    else:
        assert session.uri == uri
    (git_repo / "train.py").write_text("LEARNING_RATE = 2e-4\n")  # a dirty checkout

    run_id = session.start_run("unet-fold0", tags={"medseg.fold": 0, "PatientID": "MRN-0042"})
    params = session.log_config(CONFIG)
    manifest = session.log_provenance(git_repo, seed=1234, device="cpu", dataset_root=tiny_dataset)
    for epoch, metrics in enumerate(EPOCHS):
        session.log_metrics(metrics, step=epoch)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"\x80\x02fake-checkpoint" * 64)
    session.log_artifact(checkpoint, "checkpoints")
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    session.log_artifact(bundle, "bundle")

    client = session.client
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in EPOCHS[0]}
    curves = plot_training_curves(history, tmp_path / "training_curves.png")
    session.log_figure_png(curves)
    model = f"medseg-unet-{uuid.uuid4().hex[:6]}"
    assert session.register_model(model, "checkpoints/best.pt", description="fold 0") == "1"
    assert session.register_model(model, "checkpoints/best.pt") == "2"
    session.end_run("FAILED", reason="NaN loss at epoch 3")
    assert session.run_id is None and session.errors == []

    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.run_name == "unet-fold0"
    # Params: flattened, truncated, PHI hashed, all 130+ of them despite the 100-per-call limit.
    digests = {k: v for k, v in run.data.params.items() if k.startswith("medseg.sha256.")}
    assert {k: v for k, v in run.data.params.items() if k not in digests} == params
    # The sha256 of the config and manifest artifacts as logged, for `medseg reproduce` to check.
    config_bytes = Path(client.download_artifacts(run_id, "config/resolved.json", str(tmp_path / "dl"))).read_bytes()
    assert digests == {"medseg.sha256.config": hashlib.sha256(config_bytes).hexdigest(),
                       "medseg.sha256.manifest": digests["medseg.sha256.manifest"]}
    assert run.data.params["network.channels.2"] == "64"
    assert run.data.params["optimizer.lr"] == "0.001"
    assert len(run.data.params["notes"]) == mlflow_limits()["max_value_length"]
    assert run.data.params["notes"].endswith(TRUNCATION_MARKER)
    assert run.data.params["many.k129"] == "129"
    assert len(run.data.params) == 7 + 2 + 3 + 2 + 130 + len(digests)
    assert run.data.params["dicom.PatientName"].startswith("sha256:")
    assert "Doe^John" not in json.dumps(run.data.params)
    # Metrics: one value per epoch, in order.
    assert history["loss"] == [(0, 0.9), (1, 0.6), (2, 0.4)]
    assert history["val_dice/TC"] == [(0, 0.20), (1, 0.45), (2, 0.60)]
    assert [v for _, v in history["lr"]] == [1e-3, 5e-4, 2.5e-4]
    assert run.data.metrics["samples_per_s"] == 12.0
    # Tags: provenance, dataset, failure, PHI.
    tags = run.data.tags
    head = git(git_repo, "rev-parse", "HEAD")
    assert tags["medseg.git_commit"] == head and tags["mlflow.source.git.commit"] == head
    assert tags["medseg.git_dirty"] == "true"
    assert tags["medseg.seed"] == "1234"
    assert tags["medseg.device"].startswith("cpu ")
    assert tags["medseg.version.mlflow"] and tags["medseg.version.monai"] and tags["medseg.version.torch"]
    assert tags["medseg.version.cuda"]
    assert tags["medseg.dataset_hash"] == manifest["dataset_hash"]
    assert tags["medseg.dataset_files"] == "5"
    assert tags["medseg.failure_reason"] == "NaN loss at epoch 3"
    assert tags["medseg.fold"] == "0"
    assert tags["PatientID"].startswith("sha256:")
    assert tags["medseg.registered_model"] == f"{model}/2"
    # Artifacts.
    assert _artifacts(client, run_id) == {
        "config/resolved.json",
        "dataset/manifest.json",
        "provenance/environment.json",
        "provenance/git_diff.patch",
        "checkpoints/best.pt",
        "bundle/configs/inference.json",
        "figures/training_curves.png",
    }
    diff = Path(client.download_artifacts(run_id, "provenance/git_diff.patch", str(tmp_path)))
    assert "+LEARNING_RATE = 2e-4" in diff.read_text()
    png = Path(client.download_artifacts(run_id, "figures/training_curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Registry: versions point at the run's checkpoint.
    version = session.client.get_model_version(model, "1")
    assert version.run_id == run_id
    assert version.source == f"{run.info.artifact_uri}/checkpoints/best.pt"
    assert version.description == "fold 0"

    # What a reproduction reads back.
    fetched = fetch_run_for_reproduction(uri, run_id, runs_dir=runs_dir)
    config, fetched_manifest, fetched_tags, metrics = fetched
    assert config["network"] == CONFIG["network"]
    assert config["notes"] == CONFIG["notes"]  # the artifact is never truncated
    assert config["dicom"]["PatientID"].startswith("sha256:")
    assert fetched_manifest["files"] == manifest["files"]
    assert fetched_tags["medseg.dataset_hash"] == manifest["dataset_hash"]
    assert metrics["loss"] == 0.4
    assert compare_manifest(fetched_manifest, tiny_dataset).ok
    (tiny_dataset / "labelsTr" / "case_001.nii.gz").write_bytes(b"label-X" * 30)
    with pytest.raises(MedsegError, match=r"0 missing, 1 changed, 0 extra(.|\n)*labelsTr/case_001.nii.gz"):
        verify_dataset(fetched_manifest, tiny_dataset)

    # A reproduction is a new run tagged with the original.
    again = session.start_run("reproduce", tags={REPRODUCTION_OF_TAG: run_id})
    session.end_run()
    assert client.get_run(again).data.tags[REPRODUCTION_OF_TAG] == run_id
    assert client.get_run(again).info.status == "FINISHED"


def test_fetch_reports_missing_runs_and_artifacts(local_runs_dir: Path) -> None:
    session = open_tracking(None, "fetch-errors", runs_dir=local_runs_dir, strict=True)
    with pytest.raises(MedsegError, match="MLflow run 0{32} does not exist"):
        fetch_run_for_reproduction(None, "0" * 32, runs_dir=local_runs_dir)
    run_id = session.start_run("no-artifacts")
    session.end_run()
    with pytest.raises(MedsegError, match=f"run {run_id} .* has no artifact config/resolved.json"):
        fetch_run_for_reproduction(None, run_id, runs_dir=local_runs_dir)


def test_unreachable_server_fails_fast_or_falls_back_to_local(unused_port: int, local_runs_dir: Path) -> None:
    dead = f"http://127.0.0.1:{unused_port}"
    start = time.monotonic()
    with pytest.raises(MedsegError, match="not reachable.*--tracking-fallback local"):
        open_tracking(dead, "fallback", runs_dir=local_runs_dir)
    assert time.monotonic() - start < 5
    with pytest.raises(MedsegError, match="must be one of none, local"):
        open_tracking(dead, "fallback", fallback="s3", runs_dir=local_runs_dir)

    session = open_tracking(dead, "fallback", fallback="local", runs_dir=local_runs_dir)
    assert session.uri == f"sqlite:///{local_runs_dir.absolute().as_posix()}/mlflow.db"
    assert session.fallback_from == dead
    run_id = session.start_run("fell-back")
    session.log_metrics({"loss": 1.5}, step=0)
    session.end_run()
    run = session.client.get_run(run_id)
    assert run.data.tags["medseg.tracking_fallback_from"] == dead
    assert run.data.metrics == {"loss": 1.5}
    assert run.info.artifact_uri.startswith((local_runs_dir.absolute() / "mlartifacts").as_uri())


def test_logging_failures_during_training_warn_instead_of_raising(
    local_runs_dir: Path, tmp_path: Path
) -> None:
    session = open_tracking(None, "best-effort", runs_dir=local_runs_dir)
    run_id = session.start_run("hiccups")
    session.log_artifact(tmp_path / "not-written.pt", "checkpoints")
    assert session.register_model("never", "checkpoints/not-written.pt") is None
    session.log_metrics({"loss": 0.5}, step=0)
    assert len(session.errors) == 2 and "not-written.pt" in session.errors[0]
    session.end_run()
    run = session.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["medseg.tracking_errors"].startswith("2: MLflow uploading")
    strict = open_tracking(None, "best-effort", runs_dir=local_runs_dir, strict=True)
    strict.start_run("strict")
    with pytest.raises(MedsegError, match="not-written.pt does not exist"):
        strict.log_artifact(tmp_path / "not-written.pt")
    strict.end_run("KILLED")


def test_server_outage_mid_run_does_not_stop_training(
    mlflow_server: str, local_runs_dir: Path, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.tracking.connect import make_client

    session = open_tracking(mlflow_server, "outage", runs_dir=local_runs_dir)
    run_id = session.start_run("outage")
    session.log_metrics({"loss": 1.0}, step=0)
    live_client = session.client
    deadline = time.monotonic() + 20
    while not live_client.get_metric_history(run_id, "loss"):  # written by the background thread
        assert time.monotonic() < deadline, "step 0 never reached the server"
        time.sleep(0.05)
    # The server "goes away": point the client at a dead port, with MLflow's retries off.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    session.client = make_client(f"http://127.0.0.1:{unused_port}")
    start = time.monotonic()
    for epoch in range(1, 6):
        session.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
    assert time.monotonic() - start < 1  # queued: an epoch never waits for the store
    while not session.errors:  # the writer reports the outage once, and keeps the records
        assert time.monotonic() - start < 20, "the outage was never reported"
        time.sleep(0.05)
    session.client = live_client  # the server is back for end_run
    session.end_run()
    assert session.spooled == 0 and not (local_runs_dir / "spool" / run_id).exists()
    run = live_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # Nothing lost: the records kept during the outage reached the server, in order, at end_run.
    history = [(m.step, m.value) for m in live_client.get_metric_history(run_id, "loss")]
    assert sorted(history) == [(0, 1.0)] + [(epoch, 1.0 / (epoch + 1)) for epoch in range(1, 6)]
    assert len(session.errors) == 1
    assert run.data.tags["medseg.tracking_errors"].startswith("1: MLflow logging metrics at step 1 failed")


def test_resume_reopens_the_run_and_keeps_changed_params(local_runs_dir: Path) -> None:
    session = open_tracking(None, "resume", runs_dir=local_runs_dir, strict=True)
    run_id = session.start_run("long")
    session.log_config({"max_epochs": 2, "lr": 0.01})
    session.log_metrics({"loss": 1.0}, step=0)
    session.end_run("KILLED", reason="preempted")

    assert session.start_run(resume_run_id=run_id) == run_id
    session.log_config({"max_epochs": 4, "lr": 0.01, "resume_from": "last.pt"})
    session.log_metrics({"loss": 0.5}, step=1)
    session.end_run()
    run = session.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    digests = {k: v for k, v in run.data.params.items() if k.startswith("medseg.sha256.")}
    assert {k: v for k, v in run.data.params.items() if k not in digests} == {
        "max_epochs": "2", "lr": "0.01", "resume_from": "last.pt"}
    # The first config's sha256 stays (params cannot change); the changed one is added beside it.
    (first, second) = sorted(digests)
    assert first == "medseg.sha256.config" and second == f"medseg.sha256.config.{digests[second][:12]}"
    assert digests[first] != digests[second]
    assert run.data.tags["medseg.params_changed_on_resume"] == "max_epochs"
    assert run.data.tags["medseg.resume_count"] == "1"
    assert [m.value for m in session.client.get_metric_history(run_id, "loss")] == [1.0, 0.5]
    with pytest.raises(MedsegError, match="does not exist"):
        session.start_run(resume_run_id="f" * 32)


def test_context_manager_marks_a_crash_as_failed(local_runs_dir: Path) -> None:
    session = open_tracking(None, "crash", runs_dir=local_runs_dir, strict=True)
    with pytest.raises(ZeroDivisionError), session:
        run_id = session.start_run("crash")
        _ = 1 / 0
    run = session.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["medseg.failure_reason"] == "ZeroDivisionError: division by zero"


def test_null_tracker_does_nothing(tmp_path: Path) -> None:
    tracker = NullTracker()
    with tracker:
        assert tracker.start_run("x", tags={"a": 1}) is None
        assert tracker.log_config({"a": 1}) == {}
        assert tracker.log_provenance(tmp_path, 0, "cpu", tmp_path) == {}
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifact(tmp_path / "missing")
        tracker.log_figure_png(tmp_path / "missing.png")
        assert tracker.register_model("m") is None
        tracker.end_run("FAILED", "x")
    assert tracker.run_id is None and not tracker.enabled and list(tmp_path.iterdir()) == []

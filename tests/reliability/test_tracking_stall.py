"""A half-alive tracking server in a real ``medseg train`` (issue #16, item 1).

A server that answers ``/health`` and then never replies kept training waiting for more than
7 minutes (MLflow's client: 7 retries of 120 s), with or without ``--tracking-fallback local``.
Here, with real loopback servers (a proxy in front of the real ``mlflow server`` fixture):

* stalled at start: ``medseg train`` stops in seconds with one line, or trains on the local
  store with ``--tracking-fallback local``;
* stalled mid-run: training finishes in bounded time, the rest waits in ``runs/spool``, and
  ``medseg tracking sync RUN`` completes the run on the server once it answers again.

Every subprocess has a hard timeout, so the old behaviour fails these tests instead of hanging.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny_training import BUNDLE, TINY, medseg, set_args

_spec = importlib.util.spec_from_file_location(
    "stall_servers", Path(__file__).resolve().parents[1] / "tracking" / "stall_servers.py")
stall_servers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("stall_servers", stall_servers)
_spec.loader.exec_module(stall_servers)
StallProxy, metrics_batch = stall_servers.StallProxy, stall_servers.metrics_batch

# Far below MLflow's 7 x 120 s, and the test still fails rather than hangs if a call blocks.
HARD_TIMEOUT_S = 100


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(HARD_TIMEOUT_S + 20)
def test_stall_at_start_stops_in_seconds_with_one_line(tiny_brats_rel, tmp_path):
    out = tmp_path / "run"
    with StallProxy(mode="health-only") as proxy:
        start = time.monotonic()
        result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out, *set_args(TINY),
                        "--tracking-uri", proxy.uri, cwd=tmp_path, timeout=HARD_TIMEOUT_S)
        elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-3000:]
    assert elapsed < 45, f"medseg train took {elapsed:.0f} s against a stalled server"
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseg ")]
    assert lines == [f"medseg train: error: MLflow tracking server at {proxy.uri} answers /health but its API did "
                     "not answer (timed out); it may be stuck or overloaded. Start it, pass --tracking-uri, or use "
                     "--tracking-fallback local"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written


@pytest.mark.timeout(HARD_TIMEOUT_S + 20)
def test_stall_at_start_with_local_fallback_trains_on_the_local_store(tiny_brats_rel, tmp_path):
    out = tmp_path / "run"
    with StallProxy(mode="health-only") as proxy:
        start = time.monotonic()
        result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out,
                        *set_args({**TINY, "max_epochs": "2"}), "--tracking-uri", proxy.uri,
                        "--tracking-fallback", "local", cwd=tmp_path, timeout=HARD_TIMEOUT_S)
        elapsed = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert elapsed < 60, f"medseg train took {elapsed:.0f} s"
    assert "answers /health but its API did not answer" in log and "falling back to the local MLflow store" in log
    run_id = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["medseg.tracking_fallback_from"] == proxy.uri
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert not (tmp_path / "runs" / "spool").exists()  # nothing waits for a server


@pytest.mark.timeout(2 * HARD_TIMEOUT_S + 20)
def test_stall_mid_run_training_finishes_and_sync_completes_the_run(tiny_brats_rel, mlflow_server, tmp_path):
    out = tmp_path / "run"
    with StallProxy(mlflow_server, stall_when=metrics_batch(2)) as proxy:  # hangs at epoch 2's metrics
        start = time.monotonic()
        result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out, *set_args(TINY),
                        "--tracking-uri", proxy.uri, cwd=tmp_path, timeout=HARD_TIMEOUT_S)
        elapsed = time.monotonic() - start
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        assert proxy.stalled_at == "POST /api/2.0/mlflow/runs/log-batch", proxy.stalled_at
        assert elapsed < 60, f"training took {elapsed:.0f} s with a stalled server"
        meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
        run_id = meta["mlflow_run_id"]
        assert meta["epochs"] == 3 and f"MLflow run: {run_id}" in result.stdout
        assert f"medseg tracking sync {run_id}" in log
        spool = tmp_path / "runs" / "spool" / run_id
        assert (spool / "journal.jsonl").is_file()

        # The server holds the run as it was when it stalled.
        client = MlflowClient(mlflow_server)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]

        proxy.mode = "forward"  # the server answers again
        start = time.monotonic()
        synced = medseg("tracking", "sync", run_id, cwd=tmp_path, timeout=HARD_TIMEOUT_S)
        assert synced.returncode == 0, (synced.stdout + synced.stderr)[-3000:]
        assert time.monotonic() - start < 60
    summary = synced.stdout.strip().splitlines()[-1]  # MLflow itself prints "View run ..." lines before it
    assert summary.startswith(f"run {run_id}: ") and summary.endswith("nothing left to send"), synced.stdout
    assert not spool.exists()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for metric in ("train_loss", "val_dice_WT", "lr", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [1, 2, 3], metric
    assert run.data.params["max_epochs"] == "3"
    assert int(run.data.tags["medseg.tracking_synced"]) >= 4
    assert run.data.tags["medseg.dataset_hash"]

    def listing(path: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert "checkpoints/model.pt" in listing("checkpoints")
    assert {"figures/training_curves.png", "figures/validation_overlays.png"} <= listing("figures")
    assert "bundle/configs" in listing("bundle") and "bundle/models" not in listing("bundle")  # weights: once
    assert "config/resolved.json" in listing("config")
    # The checkpoint on the server is the one training wrote, byte for byte.
    weights = Path(client.download_artifacts(run_id, "checkpoints/model.pt", str(tmp_path / "dl")))
    assert _sha(weights) == _sha(out / "models" / "model.pt")

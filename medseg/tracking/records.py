"""What a run sends to the store after its start, as plain JSON records, and how each is written.

A record holds everything needed to write it later, exactly as it would have been written
at once: metric values with their step *and* their timestamp, tags already scrubbed and
cut to MLflow's limits, the staged (scrubbed) artifact files, the end status with its end
time. So the background writer (:mod:`medseg.tracking.worker`) and ``medseg tracking
sync`` (:mod:`medseg.tracking.sync`) write the same thing, and a record written twice (the
server took it, but its answer was lost) changes nothing: MLflow ignores a metric logged
twice with the same key, value, step and timestamp, tags and artifacts are overwritten with
the same content, and a replayed registration first looks for the version it may already
have created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.params import mlflow_limits, sanitize_key, truncate_value
from medseg.tracking.phi import scrub_phi
from medseg.tracking.registry import REGISTERED_MODEL_TAG, register_artifact
from medseg.tracking.timeouts import ServerTimeout

# MLflow error codes that say "the server is in trouble, try later", not "this request is wrong".
_TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                              "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE"})


def now_ms() -> int:
    """The current time in milliseconds, as MLflow stamps metrics and run ends."""
    return int(time.time() * 1000)


def metrics_record(metrics: Mapping[str, Any], step: int) -> dict[str, Any]:
    """``{"kind": "metrics"}``: names sanitized, values ``float`` (tensors and numpy scalars too)."""
    values = {sanitize_key(str(k)): float(v) for k, v in metrics.items()}
    return {"kind": "metrics", "step": int(step), "timestamp": now_ms(), "values": values}


def tags_record(tags: Mapping[str, Any]) -> dict[str, Any]:
    """``{"kind": "tags"}``: patient identifiers hashed, names sanitized, values cut to MLflow's limit."""
    limit = mlflow_limits()["max_tag_value_length"]
    return {"kind": "tags",
            "tags": {sanitize_key(str(k)): truncate_value(str(v), limit) for k, v in scrub_phi(tags).items()}}


def artifact_record(path: str, is_dir: bool, artifact_path: str | None, source: str, folder: str) -> dict[str, Any]:
    """``{"kind": "artifact"}`` for a file or folder staged by :func:`medseg.tracking.upload.scrubbed_view`.

    Args:
        path: the staged file or folder (relative to the spool, or absolute).
        is_dir: whether it is a folder.
        artifact_path: the folder inside the run's artifacts.
        source: the original path, for messages.
        folder: the staging folder to delete once written (relative to the spool, or absolute).
    """
    return {"kind": "artifact", "path": path, "dir": is_dir, "artifact_path": artifact_path, "source": source,
            "staged": folder}


def register_record(name: str, artifact_path: str, description: str | None) -> dict[str, Any]:
    """``{"kind": "register"}``: a new model version from a logged artifact."""
    return {"kind": "register", "name": name, "artifact_path": artifact_path, "description": description}


def end_record(status: str) -> dict[str, Any]:
    """``{"kind": "end"}``: the run's final status and end time."""
    return {"kind": "end", "status": status, "end_time": now_ms()}


def describe(record: Mapping[str, Any]) -> str:
    """What writing the record does, for messages: ``"logging metrics at step 3"``."""
    kind = record.get("kind")
    if kind == "metrics":
        return f"logging metrics at step {record['step']}"
    if kind == "tags":
        return "setting tags"
    if kind == "artifact":
        return f"uploading {record['source']}"
    if kind == "register":
        return f"registering model {record['name']!r}"
    if kind == "end":
        return f"ending the run {record['status']}"
    return f"writing a {kind!r} record"


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` says the server is unreachable, stuck or overloaded (try again later)
    rather than that the request itself was refused (it would be refused again)."""
    if isinstance(err, ServerTimeout):
        return True
    code = getattr(err, "error_code", None)
    if code is not None:  # an MlflowException: the server's word, or MLflow's on the transport
        return str(code) in _TRANSIENT_CODES
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(err, (OSError, TimeoutError)) and not isinstance(err, FileNotFoundError)


def _registered_before(client: Any, run_id: str, name: str, artifact_path: str) -> str | None:
    tail = "/" + artifact_path.strip("/")
    for version in client.search_model_versions(f"run_id='{run_id}'"):
        if version.name == name and str(version.source).endswith(tail):
            return str(version.version)
    return None


def apply_record(client: Any, run_id: str, record: Mapping[str, Any],
                 path_of: Callable[[str], Path] = Path, replay: bool = False) -> Any:
    """Write one record to the run.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the run.
        record: built by the functions above.
        path_of: turns an artifact record's ``path`` into a local path (the spool's folder).
        replay: the record may have been written before (a registration then looks for
            its version first instead of creating another).

    Returns:
        The new model version for a registration, else ``None``.
    """
    from mlflow.entities import Metric, RunTag

    kind = record["kind"]
    if kind == "metrics":
        step, stamp = int(record["step"]), int(record["timestamp"])
        metrics = [Metric(k, float(v), stamp, step) for k, v in record["values"].items()]
        size = mlflow_limits()["max_metrics_per_batch"]
        for i in range(0, len(metrics), size):
            client.log_batch(run_id, metrics=metrics[i : i + size])
    elif kind == "tags":
        tags = [RunTag(k, v) for k, v in record["tags"].items()]
        size = mlflow_limits()["max_params_per_batch"]
        for i in range(0, len(tags), size):
            client.log_batch(run_id, tags=tags[i : i + size])
    elif kind == "artifact":
        local = path_of(record["path"])
        if record["dir"]:
            client.log_artifacts(run_id, str(local), record["artifact_path"])
        else:
            client.log_artifact(run_id, str(local), record["artifact_path"])
    elif kind == "register":
        name, path = record["name"], record["artifact_path"]
        version = _registered_before(client, run_id, name, path) if replay else None
        if version is None:
            version = register_artifact(client, run_id, name, path, record.get("description"))
        client.set_tag(run_id, REGISTERED_MODEL_TAG, f"{name}/{version}")
        return version
    elif kind == "end":
        client.set_terminated(run_id, record["status"], end_time=int(record["end_time"]))
    else:
        raise MedsegError(f"unknown tracking record kind {kind!r} (written by a newer medseg?)")
    return None

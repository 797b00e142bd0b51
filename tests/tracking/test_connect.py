"""Tracking URIs and the fail-fast server check."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.tracking.connect import check_tracking_server, local_artifact_root, resolve_tracking_uri


def test_default_is_sqlite_under_runs_dir(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    uri = resolve_tracking_uri(None, runs)
    assert uri == f"sqlite:///{runs.absolute().as_posix()}/mlflow.db"
    assert runs.is_dir()
    assert local_artifact_root(uri) == runs.absolute() / "mlartifacts"
    assert resolve_tracking_uri("", runs) == uri


def test_explicit_uris(tmp_path: Path) -> None:
    assert resolve_tracking_uri("http://mlflow.team:5000/", tmp_path) == "http://mlflow.team:5000"
    assert resolve_tracking_uri("https://mlflow.team", tmp_path) == "https://mlflow.team"
    assert resolve_tracking_uri("postgresql://u@db/mlflow", tmp_path) == "postgresql://u@db/mlflow"
    db = tmp_path / "x.db"
    assert resolve_tracking_uri(str(db), tmp_path) == f"sqlite:///{db.as_posix()}"
    assert local_artifact_root("http://host:5000") is None
    with pytest.raises(MedsegError, match="not understood"):
        resolve_tracking_uri("ftp://host/store", tmp_path)
    with pytest.raises(MedsegError, match="not understood"):
        resolve_tracking_uri("some/folder", tmp_path)


def test_unreachable_server_fails_fast_with_a_clear_message(unused_port: int) -> None:
    uri = f"http://127.0.0.1:{unused_port}"
    start = time.monotonic()
    with pytest.raises(MedsegError) as info:
        check_tracking_server(uri, timeout_s=2)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server at {uri} is not reachable: ")
    assert "refused" in message.lower()
    assert message.endswith("Start it, pass --tracking-uri, or use --tracking-fallback local")


def test_server_that_never_answers_times_out() -> None:
    # Listening without ever accepting: the TCP handshake succeeds, no HTTP reply comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(MedsegError, match="is not reachable: .*timed out"):
            check_tracking_server(uri, timeout_s=1)
        assert time.monotonic() - start < 4


def test_reachable_server_passes(mlflow_server: str) -> None:
    check_tracking_server(mlflow_server, timeout_s=5)
    # An HTTP server that is not MLflow (here: a wrong path prefix) is reported too.
    with pytest.raises(MedsegError, match="is not reachable: HTTP 404"):
        check_tracking_server(mlflow_server + "/no-such-prefix", timeout_s=5)

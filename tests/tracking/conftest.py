"""Fixtures for the tracking tests: a real ``mlflow server``, a local store, a tiny dataset.

The server is started once per session (about 10-20 s on 2 busy cores) as a subprocess
in its own process group, so that its uvicorn worker is stopped with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = float(os.environ.get("MEDSEG_TEST_MLFLOW_START_TIMEOUT", "90"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> str | None:
    beside_python = Path(sys.executable).with_name("mlflow")
    return str(beside_python) if beside_python.exists() else shutil.which("mlflow")


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # uvicorn's graceful shutdown takes ~10 s; the store is a throwaway, so do not wait for it.
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)  # the group holds the server and its uvicorn worker
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a real ``mlflow server`` on a free localhost port and yield its URI."""
    executable = _mlflow_executable()
    if executable is None:
        pytest.skip("the `mlflow` executable is not installed (needed for the tracking-server tests)")
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        executable, "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(uri):
            if process.poll() is not None:
                tail = log_path.read_text()[-3000:]
                pytest.fail(f"mlflow server exited with {process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not answer /health within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                    f"{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.25)
        yield uri
    finally:
        _stop(process)


@pytest.fixture
def unused_port() -> int:
    """A localhost port with no listener, for unreachable-server tests."""
    return free_port()


@pytest.fixture(scope="session")
def local_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``runs/`` folder shared by the tests: creating an sqlite store costs seconds."""
    return tmp_path_factory.mktemp("local_store") / "runs"


@pytest.fixture(params=["local", "server"])
def store(request: pytest.FixtureRequest, local_runs_dir: Path) -> tuple[str | None, Path]:
    """``(uri for open_tracking, runs_dir)`` for the embedded store and the real server."""
    if request.param == "local":
        return None, local_runs_dir
    return request.getfixturevalue("mlflow_server"), local_runs_dir


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A small dataset folder: two cases, a nested file and hidden files to be skipped."""
    root = tmp_path / "dataset"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "case_000.nii.gz").write_bytes(bytes(range(256)) * 8)
    (root / "imagesTr" / "case_001.nii.gz").write_bytes(b"\x01\x02" * 700)
    (root / "labelsTr" / "case_000.nii.gz").write_bytes(b"label-0" * 30)
    (root / "labelsTr" / "case_001.nii.gz").write_bytes(b"label-1" * 30)
    (root / "dataset.json").write_text('{"name": "tiny"}\n')
    (root / ".DS_Store").write_bytes(b"finder")
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"resource fork")
    return root


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=medseg-test", "-c", "user.email=test@example.org", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A clean git repository with one commit (skips if git is not installed)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("LEARNING_RATE = 1e-3\n")
    (repo / ".gitignore").write_text("runs/\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
def git() -> object:
    """Run git in a repository: ``git(repo, "rev-parse", "HEAD")``."""
    return _git

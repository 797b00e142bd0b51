"""Shared fixtures: small synthetic datasets written once per session."""

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

SMALL_SHAPE = (40, 40, 32)

# --- a real MLflow tracking server, shared by the tracking and engine tests ---
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




@pytest.fixture(scope="session")
def brats2021_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny synthetic cases in BraTS 2021 naming (read-only for tests: copy before breaking)."""
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("brats2021")
    write_brats_dataset(out, cases=4, shape=SMALL_SHAPE, seed=7, fmt="brats2021")
    return out


@pytest.fixture
def unused_port() -> int:
    """A localhost port with no listener, for unreachable-server tests."""
    return free_port()


def pytest_configure(config: pytest.Config) -> None:
    """Keep medseg's per-user state (trusted output bundles) out of the real home folder."""
    import tempfile

    os.environ["MEDSEG_HOME"] = tempfile.mkdtemp(prefix="medseg-home-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests unless CUDA is available (they are opt-in: ``-m gpu``)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""What the training tests share: tiny settings, ``--set`` arguments and the real CLI in a subprocess.

Importable from every test folder: pytest puts ``tests/`` (where ``conftest.py`` lives) on
``sys.path``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_attention_unet3d"

# A few seconds per epoch on 2 CPU cores: 3 training cases of 32x32x24 (3 iterations per
# epoch), 1 validation case (1 validation iteration per epoch), 16^3 patches.
TINY = {
    "max_epochs": "3",
    "roi_size": "[16,16,16]",
    "num_workers": "0",
    "deterministic": "true",
    "network_spec#kwargs#features": "[4,8,16]",
    "sw_batch_size": "4",
    "learning_rate": "0.003",
    "warmup_epochs": "1",
}


def set_args(values: dict[str, str]) -> list[str]:
    """``--set k=v`` arguments for ``medseg train``."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


def medseg(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``medseg`` command line (``python -m medseg``) in a subprocess, text output captured."""
    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def monai_run(config_files: list[Path], dataset: Path, out: Path, values: dict[str, str], cwd: Path,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` with several config files merged in order, and ``--id value`` pairs."""
    pairs: list[str] = []
    for key, value in values.items():
        pairs += [f"--{key}", str(value)]
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--dataset_dir",
                           str(dataset), "--output_dir", str(out), *pairs], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def reproduce_exactly(out: Path, data: Path, again: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``medseg reproduce`` the tracked run of output bundle ``out`` into ``again``; every final metric must match.

    The run is looked up in the local MLflow store the training used (``cwd/runs/mlflow.db``).
    """
    run_id = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["mlflow_run_id"]
    result = medseg("reproduce", run_id, "--tracking-uri", f"sqlite:///{cwd / 'runs' / 'mlflow.db'}",
                    "--data", data, "--output", again, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("val_", "train_loss"))]
    assert rows and all(line.rstrip().endswith("yes") for line in rows), result.stdout
    return result


def monai_evaluate(bundle: Path, dest: Path, cwd: Path, timeout: float = 600) -> dict[str, str]:
    """Score an output bundle's best model on its validation split, as the MONAI model zoo does.

    ``python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']"``
    run from the bundle's folder; returns the rows of the ``eval/metrics.csv`` it writes under ``dest``.
    """
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             "['configs/train.json','configs/evaluate.json']", "--meta_file", "configs/metadata.json",
                             "--output_dir", str(dest)], cwd=bundle, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = (dest / "eval" / "metrics.csv").read_text().splitlines()
    return dict(row.split(",", 1) for row in rows)


def final_training(out: Path) -> dict:
    """The ``medseg_training`` record of a finished run's output bundle (final metrics, best metric, run id)."""
    return json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]


def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def kill_after_first_checkpoint(command: list[str], cwd: Path, last: Path, kill: Callable[[int], None] = _sigkill,
                                timeout: float = 300) -> int:
    """Start ``command``; as soon as ``last`` holds a checkpoint of epoch >= 1, ``kill`` its process; return that epoch.

    ``kill`` gets the process id (default: SIGKILL that process; a torchrun job passes one that
    kills the launcher and its ranks). Fails the test if the run ends first or no checkpoint
    appears within ``timeout`` seconds.
    """
    import pytest

    from medseg.checkpoint import load_checkpoint
    from medseg.errors import MedsegError

    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"training ended (status {process.returncode}) before it could be interrupted")
            if last.exists():
                try:
                    epoch = int(load_checkpoint(last)["epoch"])
                except MedsegError:
                    epoch = 0  # caught mid-rename; try again
                if epoch >= 1:
                    kill(process.pid)
                    process.wait(timeout=30)
                    return epoch
            time.sleep(0.05)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if process.poll() is None:
            kill(process.pid)
            process.wait(timeout=30)
    return -1

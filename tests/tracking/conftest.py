"""Fixtures for the tracking tests: a local store, a tiny dataset, git repositories.

The real ``mlflow server`` fixture (``mlflow_server``) lives in ``tests/conftest.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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

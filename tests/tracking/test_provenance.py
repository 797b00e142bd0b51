"""git, package and device provenance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medseg.tracking.provenance import (
    device_description,
    git_diff,
    git_info,
    package_versions,
    provenance_tags,
)


def test_clean_repository(git_repo: Path, git: Callable[..., str]) -> None:
    info = git_info(git_repo)
    assert info == {"commit": git(git_repo, "rev-parse", "HEAD"), "dirty": False, "branch": "main"}
    assert len(info["commit"]) == 40
    assert git_diff(git_repo) == ""
    # A folder inside the repository works too.
    (git_repo / "sub").mkdir()
    assert git_info(git_repo / "sub")["commit"] == info["commit"]


def test_modified_file_makes_the_tree_dirty_and_the_diff_shows_it(git_repo: Path) -> None:
    (git_repo / "train.py").write_text("LEARNING_RATE = 3e-4\n")
    assert git_info(git_repo)["dirty"] is True
    diff = git_diff(git_repo)
    assert "-LEARNING_RATE = 1e-3" in diff
    assert "+LEARNING_RATE = 3e-4" in diff
    assert "untracked" not in diff


def test_untracked_file_is_dirty_and_listed_but_ignored_files_are_not(git_repo: Path) -> None:
    (git_repo / "runs").mkdir()
    (git_repo / "runs" / "log.txt").write_text("ignored by .gitignore")
    assert git_info(git_repo)["dirty"] is False
    (git_repo / "new_module.py").write_text("x = 1\n")
    assert git_info(git_repo)["dirty"] is True
    diff = git_diff(git_repo)
    assert "#   new_module.py" in diff
    assert "log.txt" not in diff


def test_detached_head_and_staged_changes(git_repo: Path, git: Callable[..., str]) -> None:
    git(git_repo, "checkout", "-q", "--detach")
    (git_repo / "train.py").write_text("LEARNING_RATE = 2e-3\n")
    git(git_repo, "add", "train.py")
    info = git_info(git_repo)
    assert info["branch"] == "HEAD" and info["dirty"] is True
    assert "+LEARNING_RATE = 2e-3" in git_diff(git_repo)


def test_not_a_repository_gives_unknown(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None, "branch": "unknown"}
    assert git_info(tmp_path / "does-not-exist")["commit"] == "unknown"
    assert git_diff(tmp_path) == ""


def test_package_versions_and_device() -> None:
    from importlib.metadata import version

    import torch

    versions = package_versions()
    assert set(versions) == {
        "medseg", "monai", "torch", "cuda", "cudnn", "numpy", "nibabel", "mlflow", "python", "platform"
    }  # fmt: skip
    assert versions["monai"] == version("monai")
    assert versions["torch"] == str(torch.__version__)
    assert versions["cuda"] == (torch.version.cuda or "none")
    description = device_description("cpu")
    assert description.startswith("cpu ") and description.endswith("cores)")
    assert device_description(torch.device("cpu")) == description


def test_provenance_tags_for_a_dirty_checkout(git_repo: Path, git: Callable[..., str]) -> None:
    (git_repo / "train.py").write_text("LEARNING_RATE = 5e-4\n")
    prov = provenance_tags(git_repo, seed=1234, device="cpu")
    tags = prov["tags"]
    assert tags["medseg.git_commit"] == tags["mlflow.source.git.commit"] == git(git_repo, "rev-parse", "HEAD")
    assert tags["medseg.git_dirty"] == "true"
    assert tags["medseg.seed"] == "1234"
    assert tags["medseg.version.monai"] == package_versions()["monai"]
    assert "+LEARNING_RATE = 5e-4" in prov["diff"]
    assert provenance_tags(git_repo.parent, None, "cpu")["tags"]["medseg.git_dirty"] == "unknown"

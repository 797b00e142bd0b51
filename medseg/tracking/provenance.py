"""Where a run came from: the git commit, the package versions and the device.

Everything here degrades to ``"unknown"`` instead of raising: a run started from an
unpacked tarball, a machine without ``git`` or a repository owned by another user must
still train. Heavy packages (torch, monai) are only imported inside functions.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
_GIT_TIMEOUT_S = 20


def _git(path: str | os.PathLike[str], *args: str) -> str | None:
    """Run ``git -C path args`` and return stdout, or ``None`` on any failure."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("git %s failed: %s", " ".join(args), err)
        return None
    if done.returncode != 0:
        logger.debug("git %s exited %d: %s", " ".join(args), done.returncode, done.stderr.strip())
        return None
    return done.stdout


def git_info(path: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Describe the git checkout that contains ``path``.

    Untracked files that are not ignored count as dirty: a new module that was never
    committed changes what the run executed just as much as an edited one.

    Args:
        path: any folder inside the repository (default: the working directory).

    Returns:
        ``{"commit": sha or "unknown", "dirty": bool or None, "branch": name, "HEAD"
        when detached, or "unknown"}``; ``dirty`` is ``None`` when ``path`` is not in a
        git repository (or git is missing).
    """
    if not Path(path).exists() or _git(path, "rev-parse", "--is-inside-work-tree") is None:
        return {"commit": UNKNOWN, "dirty": None, "branch": UNKNOWN}
    commit = (_git(path, "rev-parse", "--verify", "--quiet", "HEAD") or "").strip() or UNKNOWN
    branch = (_git(path, "rev-parse", "--abbrev-ref", "HEAD") or "").strip()
    if not branch:
        # No commit yet: rev-parse cannot name the branch, symbolic-ref can.
        branch = (_git(path, "symbolic-ref", "--short", "HEAD") or "").strip() or UNKNOWN
    status = _git(path, "status", "--porcelain", "--untracked-files=normal")
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit, "dirty": dirty, "branch": branch}


def git_diff(path: str | os.PathLike[str] = ".") -> str:
    """The uncommitted changes of the checkout containing ``path``, as a patch.

    Args:
        path: any folder inside the repository.

    Returns:
        ``git diff HEAD`` (staged and unstaged changes to tracked files; binary files
        as git's binary patch), followed by a comment block listing untracked files.
        An empty string when the tree is clean or ``path`` is not in a repository.
    """
    has_head = _git(path, "rev-parse", "--verify", "--quiet", "HEAD") is not None
    # Without a commit there is nothing to diff against; show what is staged instead.
    diff = _git(path, "diff", "HEAD", "--binary") if has_head else _git(path, "diff", "--cached", "--binary")
    untracked = _git(path, "ls-files", "--others", "--exclude-standard")
    parts = [diff or ""]
    names = [n for n in (untracked or "").splitlines() if n.strip()]
    if names:
        parts.append("# untracked files (not in the diff above):\n" + "".join(f"#   {n}\n" for n in names))
    return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts if p)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def package_versions() -> dict[str, str]:
    """The versions that decide whether a run can be reproduced.

    Returns:
        ``{"medseg", "monai", "torch", "cuda", "cudnn", "numpy", "nibabel", "mlflow",
        "python", "platform"}``; ``cuda`` and ``cudnn`` are ``"none"`` on CPU-only
        builds of torch.
    """
    names = ("medseg", "monai", "torch", "numpy", "nibabel", "mlflow")
    versions = {name: _dist_version(name) for name in names}
    versions["cuda"] = versions["cudnn"] = "none"
    try:
        import torch

        versions["torch"] = str(torch.__version__)
        versions["cuda"] = str(torch.version.cuda or "none")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        versions["cudnn"] = str(cudnn or "none")
    except ImportError:
        pass
    versions["python"] = platform.python_version()
    versions["platform"] = platform.platform()
    return dict(sorted(versions.items()))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(device: Any = "cpu") -> str:
    """A human-readable name for the device a run trains on.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``.

    Returns:
        E.g. ``"cuda:0 NVIDIA H100 80GB HBM3 (79.1 GiB)"`` or
        ``"cpu Intel(R) Xeon(R) ... (16 cores)"``.
    """
    text = str(device)
    kind = text.split(":", 1)[0]
    if kind == "cuda":
        try:
            import torch

            index = torch.device(text).index
            index = torch.cuda.current_device() if index is None else index
            props = torch.cuda.get_device_properties(index)
            return f"cuda:{index} {props.name} ({props.total_memory / 2**30:.1f} GiB)"
        except (ImportError, RuntimeError, AssertionError, AttributeError) as err:
            return f"{text} (unavailable: {err})"
    if kind == "mps":
        return f"mps Apple GPU ({platform.machine()})"
    return f"{text} {_cpu_model()} ({os.cpu_count() or '?'} cores)"


def provenance_tags(repo_path: str | os.PathLike[str], seed: int | None, device: Any) -> dict[str, Any]:
    """Collect the provenance of a run as MLflow tags plus the data behind them.

    Args:
        repo_path: a folder inside the code's git checkout.
        seed: the random seed, or ``None``.
        device: the training device.

    Returns:
        ``{"tags": {...}, "environment": {"git", "versions", "device", "seed"},
        "diff": patch text or None}``. Tags: ``medseg.git_commit``, ``medseg.git_dirty``
        (``"true"``, ``"false"``, ``"unknown"``), ``medseg.git_branch``,
        ``mlflow.source.git.commit`` (when known), ``medseg.version.<package>``,
        ``medseg.device`` and ``medseg.seed``. ``diff`` is set only for a dirty checkout.
    """
    git = git_info(repo_path)
    versions = package_versions()
    device_text = device_description(device)
    tags: dict[str, Any] = {
        "medseg.git_commit": git["commit"],
        "medseg.git_dirty": "unknown" if git["dirty"] is None else str(git["dirty"]).lower(),
        "medseg.git_branch": git["branch"],
        "medseg.device": device_text,
        "medseg.seed": "none" if seed is None else str(seed),
        **{f"medseg.version.{name}": value for name, value in versions.items()},
    }
    if git["commit"] != UNKNOWN:
        tags["mlflow.source.git.commit"] = git["commit"]
    environment = {"git": git, "versions": versions, "device": device_text, "seed": seed}
    return {"tags": tags, "environment": environment, "diff": git_diff(repo_path) if git["dirty"] else None}

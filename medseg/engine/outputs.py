"""Where a training run writes: unique default names, refused places, and a lock while in use.

A training output folder must be new or empty, unless the run resumes it (``--resume``) or the
user asks to replace an earlier medseg output bundle there (``--overwrite``). While a run uses
the folder it holds an exclusive ``flock`` on ``.medseg.lock`` inside it, so a second run with
the same ``--output`` is refused instead of mixing its files (and its MLflow artifacts) with the
first one's. The lock goes with the process: a killed run leaves nothing that blocks ``--resume``
(the lock file it leaves is ignored and taken over).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from medseg.errors import MedsegError

LOCK_FILE = ".medseg.lock"
# Files that may sit in an output folder that counts as empty: the lock itself.
_IGNORED = {LOCK_FILE}
_held: dict[Path, tuple[int, bool]] = {}  # folder -> (open lock descriptor, whether this process made the folder)


def unique_run_name() -> str:
    """``YYYYmmdd-HHMMSS-ffffff-xxxx``: the time to the microsecond and a random suffix.

    Under ``torchrun`` every rank gets the same name (the suffix derives from the rendezvous
    run id that all ranks share), so ranks that compute it separately still agree.
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"{stamp}-{hashlib.sha256(elastic.encode()).hexdigest()[:10]}"
    return f"{stamp}-{int(now * 1e6) % 1_000_000:06d}-{secrets.token_hex(2)}"


def _relation(a: Path, b: Path) -> str | None:
    """How folder ``a`` stands to folder ``b``: ``"is"``, ``"inside"``, ``"contains"`` or ``None``."""
    if a == b:
        return "is"
    if b in a.parents:
        return "inside"
    if a in b.parents:
        return "contains"
    return None


def check_output_location(output_dir: str | Path, dataset_dir: str | Path | None = None,
                          source_bundle: str | Path | None = None) -> None:
    """Refuse an output folder that is, lies inside or contains the dataset or the source bundle.

    An output bundle is uploaded to MLflow whole: one that contains the dataset would upload
    the patients' images; one that is the source bundle would rewrite its configs.

    Raises:
        MedsegError: naming both folders.
    """
    out = Path(output_dir).resolve()
    for what, other in (("dataset folder", dataset_dir), ("source bundle", source_bundle)):
        if other is None or str(other) == "":
            continue
        relation = _relation(out, Path(other).resolve())
        if relation:
            verb = {"is": "is", "inside": "is inside", "contains": "contains"}[relation]
            raise MedsegError(f"--output {out} {verb} the {what} {Path(other).resolve()}; "
                              "write the output bundle in a folder of its own (e.g. under runs/)")


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _contents(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in _IGNORED) if folder.is_dir() else []


def _looks_like_output_bundle(folder: Path) -> bool:
    from medseg.engine.trust import SIGNATURE_FILE

    return (folder / SIGNATURE_FILE).is_file() or (folder / "configs" / "train.json").is_file()


def claim_output_dir(output_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Lock ``output_dir`` for this process and check that this run may write there.

    Idempotent within a process (the runner claims first, the bundle's datalist step again).
    Under ``torchrun`` only rank 0 claims; the other ranks write nothing of their own there.

    Args:
        output_dir: the run's output folder (created if missing).
        resume: the run continues the folder's interrupted run.
        overwrite: replace an earlier medseg output bundle in the folder (its files are deleted).

    Returns:
        The resolved folder.

    Raises:
        MedsegError: another process holds the folder, or it holds files and neither
            ``resume`` nor ``overwrite`` allows that.
    """
    folder = Path(output_dir).resolve()
    if folder in _held or not _is_rank_zero():
        return folder
    if folder.exists() and not folder.is_dir():
        raise MedsegError(f"{folder}: --output is a file, not a folder")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    created = not lock.exists()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise MedsegError(f"{folder}: in use by another medseg run (it holds {LOCK_FILE}); "
                          "give this run another --output") from None
    try:
        existing = _contents(folder)
        if existing and not resume:
            if not overwrite:
                raise MedsegError(
                    f"{folder}: --output already holds {len(existing)} file(s) or folder(s) "
                    f"(e.g. {existing[0].name}); medseg writes only into a new or empty folder. "
                    "Use --resume to continue that run, --overwrite to replace an earlier medseg run there, "
                    "or another --output")
            if not _looks_like_output_bundle(folder):
                raise MedsegError(f"{folder}: --overwrite replaces only an earlier medseg output bundle, and this "
                                  "folder is not one (no configs/train.json); choose another --output")
            for path in existing:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        if created:  # refused: leave the user's folder as it was
            lock.unlink(missing_ok=True)
        os.close(fd)
        raise
    _held[folder] = (fd, made)
    return folder


def release_output_dir(output_dir: str | Path) -> None:
    """Give up this process's lock on ``output_dir`` and remove the lock file.

    A folder this process created and left empty (the run stopped before writing anything,
    e.g. on a bad dataset) is removed too, so a refused run leaves no trace.
    """
    folder = Path(output_dir).resolve()
    held = _held.pop(folder, None)
    if held is None:
        return
    fd, made = held
    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        if made and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass  # a lock file or folder that stays is harmless
    finally:
        os.close(fd)

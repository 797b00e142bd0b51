"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A crash, a kill or a full disk can therefore never leave a half-written file under the
final name: readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from medseg.errors import DiskFullError

# errno values that mean "no room": a full disk, an exhausted quota, RLIMIT_FSIZE.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _umask_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (usually 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry itself is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _no_space_error(err: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` behind ``err``, if any.

    Writers wrap it: torch's zip writer raises ``RuntimeError("... unexpected pos ...")``
    with the ``OSError`` of the Python file object as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return current
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.png``) so that
    writers that infer the format from the extension work unchanged. On any exception
    the temporary file is removed and ``target`` is left untouched; a write that ran out
    of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) is re-raised as
    :class:`medseg.errors.DiskFullError`, naming ``target``.

    Args:
        target: the final file path. Its parent folder is created if needed.

    Yields:
        A path in the same folder as ``target`` to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; the final file gets the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        no_space = _no_space_error(err)
        if no_space is not None and not isinstance(err, DiskFullError):
            raise DiskFullError(target, no_space) from err
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically and return the target path."""
    return atomic_write_bytes(target, text.encode(encoding))


def atomic_write_with(target: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``target``.

    Args:
        target: the final path.
        writer: a function that writes the whole file at the path it is given,
            e.g. ``lambda p: nib.save(img, p)``.

    Returns:
        The target path.
    """
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def remove_partial_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_path` writes left in ``folder``.

    A process killed between writing its temporary file and renaming it (SIGKILL, power
    loss) cannot clean up after itself; the files it left are named ``.<target>.<random>.part<suffix>``
    and are never read. Call this only when no other process is writing to ``folder``.

    Args:
        folder: the folder to clean; a missing folder is fine.

    Returns:
        The files removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.part*")):
        if path.is_file() and ".part" in path.name:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed

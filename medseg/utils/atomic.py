"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A crash, a kill or a full disk can therefore never leave a half-written file under the
final name: readers see either the old file or the complete new one.

Temporary files are named ``.<target>.<pid>-<host>.<random>.part<ext>``: hidden, with the
target's extension (writers pick the format from it), and with the writing process's id and
a 6-hex-digit hash of its host name, so that :func:`remove_partial_files` can tell the files
of a killed process from those of a process still writing. ``<target>`` is shortened when
the whole name would exceed the folder's ``NAME_MAX`` (255 bytes on Linux file systems), so
every target name the file system allows can be written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import DiskFullError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "name_max", "remove_partial_files"]

# errno values that mean "no room": a full disk, an exhausted quota, RLIMIT_FSIZE.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DEFAULT_NAME_MAX = 255  # bytes: ext4, xfs, btrfs, tmpfs, NFS
_COMPRESSED = frozenset({".gz", ".bz2", ".xz", ".zst"})
# tempfile's random part: 8 characters of this alphabet.
_RANDOM = r"[a-z0-9_]{8}"
_TEMP = re.compile(rf"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{{6}})\.{_RANDOM}\.part(?P<ext>(\.[^.]+){{1,2}})$")
# Before the process tag: ``.<target>.<random>.part<all of the target's suffixes>``.
_LEGACY_TEMP = re.compile(rf"^\.(?P<target>.+)\.{_RANDOM}\.part(?P<ext>(\.[^.]+)+)$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def name_max(folder: str | os.PathLike[str]) -> int:
    """The longest file name, in bytes, that ``folder``'s file system allows (``NAME_MAX``).

    A folder that does not exist yet is asked through its nearest existing parent; 255
    when the file system does not say.
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def _extension(target: Path) -> str:
    """The extension a writer reads the format from: ``.nii.gz``, ``.png``, ``.pt`` (``.tmp`` for none)."""
    suffixes = target.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPRESSED:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ".tmp"


def _temporary_prefix(target: Path, extension: str) -> str:
    """``.<target>.<pid>-<host>.``, with ``<target>`` cut (at a UTF-8 character) to keep the name under NAME_MAX."""
    tag = f".{os.getpid()}-{_host_tag()}."
    fixed = len(os.fsencode(f".{tag}")) + 8 + len(os.fsencode(f".part{extension}"))
    budget = name_max(target.parent) - fixed
    name = target.name
    while name and len(os.fsencode(name)) > budget:
        name = name[:-1]
    return f".{name or 'x'}{tag}"


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

    The temporary name keeps the target's extension (``.nii.gz``, ``.png``) so that
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
    extension = _extension(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(target, extension), suffix=f".part{extension}",
                                    dir=target.parent)
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


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _left_by_a_dead_process(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_path`'s temporary files whose writer is gone."""
    match = _TEMP.match(name)
    if match:
        # Another host's process cannot be asked; its files stay (they may be in use over NFS).
        return match["host"] == _host_tag() and not _alive(int(match["pid"]))
    legacy = _LEGACY_TEMP.match(name)
    # Written by a medseg without the process tag: its writer cannot still be running.
    return bool(legacy) and (legacy["target"].endswith(legacy["ext"]) or legacy["ext"] == ".tmp")


def remove_partial_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_path` writes left in ``folder``.

    A process killed between writing its temporary file and renaming it (SIGKILL, power
    loss) cannot clean up after itself; the files it left are named
    ``.<target>.<pid>-<host>.<random>.part<ext>`` and are never read. Only files of exactly
    that pattern are removed, and only when the process ``<pid>`` of this host no longer
    runs: a medseg process still writing into ``folder`` keeps its files, and so does any
    other hidden file (a user's ``.notes.part.txt``). Files of another host are kept.

    Args:
        folder: the folder to clean; a missing folder is fine.

    Returns:
        The files removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.glob(".*.part*")):
        if path.is_file() and not path.is_symlink() and _left_by_a_dead_process(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed

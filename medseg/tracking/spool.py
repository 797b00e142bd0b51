"""The local spool: a run's tracking records that the server has not confirmed yet.

Every record a run sends to a tracking *server* during and after training (metrics, tags,
artifacts, registration, the final status) is first appended to
``<runs_dir>/spool/<run_id>/journal.jsonl``; artifacts are staged beside it under
``files/`` (hard links where the file system allows, else copies; JSON files scrubbed of
patient identifiers, as everything that leaves the machine). When the server confirms a
record, a ``{"done": seq}`` line follows, and the staged files go. A run whose records are
all confirmed at ``end_run`` leaves no spool. One whose server stalled or went away keeps
it, and ``medseg tracking sync RUN`` (:mod:`medseg.tracking.sync`) sends the rest later,
in the original order, with the original steps and timestamps.

The journal is append-only, one JSON object per line, so a killed process loses at most
the line it was writing (a torn last line is ignored). While a process writes a spool it
holds an ``flock`` on ``.lock`` in it, so ``sync`` cannot replay a run that is still
training. The journal of the local sqlite store is not kept: that store is this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

SPOOL_DIR_NAME = "spool"
JOURNAL_NAME = "journal.jsonl"
FILES_DIR_NAME = "files"
LOCK_NAME = ".lock"
FORMAT_VERSION = 1
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _folder(root: str | os.PathLike[str], run_id: str) -> Path:
    # The run id becomes a folder name: nothing that could climb out of the spool.
    if not _RUN_ID.fullmatch(run_id):
        raise MedsegError(f"{run_id!r} is not an MLflow run id (letters, digits, '-' and '_' only)")
    return Path(root) / run_id


def spool_root(runs_dir: str | os.PathLike[str]) -> Path:
    """``<runs_dir>/spool``, absolute (it is recorded before the working folder could change)."""
    return Path(runs_dir).absolute() / SPOOL_DIR_NAME


def waiting_runs(root: str | os.PathLike[str]) -> list[str]:
    """The run ids that have records waiting under ``root`` (:func:`spool_root`), sorted."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / JOURNAL_NAME).is_file())


class Spool:
    """The journal of one run. Build it with :meth:`open` (a writing session) or :meth:`load` (sync).

    Thread-safe: training appends records while the background writer marks them done.
    """

    def __init__(self, folder: Path, header: dict[str, Any], records: dict[int, dict[str, Any]],
                 done: set[int]) -> None:
        self.folder = folder
        self.header = header
        self._records = records
        self._done = done
        self._next = max(records, default=-1) + 1
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # spool/ and runs/ when this process created them: removed again if empty

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str], run_id: str, uri: str) -> Spool:
        """Create the spool of ``run_id``, or reopen it (a resumed run), and lock it for this process.

        Raises:
            MedsegError: another process holds the spool.
        """
        folder = _folder(root, run_id)
        made = [p for p in (Path(root), Path(root).parent) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        spool = cls._read(folder) if (folder / JOURNAL_NAME).is_file() else None
        if spool is None:
            header = {"medseg_spool": FORMAT_VERSION, "run_id": run_id, "uri": uri, "created": time.time()}
            spool = cls(folder, header, {}, set())
            spool._write_line(header)
        spool._made = made
        spool._take_lock()
        return spool

    @classmethod
    def load(cls, root: str | os.PathLike[str], run_id: str) -> Spool:
        """The spool of ``run_id``, locked for this process (for ``medseg tracking sync``).

        Raises:
            MedsegError: there is none (the message lists the runs that have one), or a
                training process still writes it.
        """
        folder = _folder(root, run_id)
        if not (folder / JOURNAL_NAME).is_file():
            waiting = waiting_runs(root)
            listed = ", ".join(waiting) if waiting else "none"
            raise MedsegError(f"no tracking records of run {run_id} are waiting in {root} "
                              f"(runs waiting there: {listed})")
        spool = cls._read(folder)
        spool._take_lock()
        return spool

    @classmethod
    def _read(cls, folder: Path) -> Spool:
        header: dict[str, Any] | None = None
        records: dict[int, dict[str, Any]] = {}
        done: set[int] = set()
        lines = (folder / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # a process killed while writing its last line
                    logger.warning("%s: ignoring a torn last line", folder / JOURNAL_NAME)
                    continue
                raise MedsegError(f"{folder / JOURNAL_NAME}: line {number} is not JSON; "
                                  "the spool is damaged") from None
            if "medseg_spool" in entry:
                header = entry
            elif "done" in entry:
                done.add(int(entry["done"]))
            elif "seq" in entry:
                records[int(entry["seq"])] = entry["record"]
        if header is None:
            raise MedsegError(f"{folder / JOURNAL_NAME}: no header line; not a medseg spool")
        return cls(folder, header, records, done)

    def _take_lock(self) -> None:
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MedsegError(f"{self.folder}: in use by another medseg process (a run still training, "
                              "or another sync); try again when it has finished") from None
        self._lock_fd = fd

    def release(self) -> None:
        """Give up this process's lock (the spool itself stays)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- contents ----------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The run the records belong to."""
        return str(self.header["run_id"])

    @property
    def uri(self) -> str:
        """The server the records were meant for."""
        return str(self.header["uri"])

    def _write_line(self, entry: dict[str, Any]) -> None:
        with open(self.folder / JOURNAL_NAME, "a", encoding="utf-8") as journal:
            journal.write(json.dumps(entry, default=str) + "\n")

    def append(self, record: dict[str, Any]) -> int:
        """Journal ``record``; returns its sequence number."""
        with self._lock:
            seq = self._next
            self._next += 1
            self._write_line({"seq": seq, "record": record})
            self._records[seq] = record
        return seq

    def stage_dir(self) -> Path:
        """A new, empty folder under ``files/`` for one artifact record's files."""
        folder = self.folder / FILES_DIR_NAME / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def mark_done(self, seq: int, outcome: str = "ok") -> None:
        """Record that the server took record ``seq`` (``"ok"``) or refused it for good
        (``"rejected"``), and delete its staged files.

        Does nothing once the spool is removed (a writer thread that finished its last
        call after ``end_run`` gave up on it, while ``sync`` already completed the run).
        """
        with self._lock:
            if seq in self._done or not self.folder.is_dir():
                return
            with contextlib.suppress(FileNotFoundError):
                self._write_line({"done": seq, "outcome": outcome})
            self._done.add(seq)
            record = self._records.get(seq, {})
        staged = record.get("staged")
        if staged:
            shutil.rmtree(self.folder / staged, ignore_errors=True)

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        """The records not done yet, in the order they were appended."""
        with self._lock:
            return [(seq, self._records[seq]) for seq in sorted(self._records) if seq not in self._done]

    def resolve(self, path: str) -> Path:
        """An artifact record's ``path``, relative to the spool folder when it was staged here."""
        return self.folder / path if not os.path.isabs(path) else Path(path)

    def remove_if_done(self) -> bool:
        """Delete the spool if every record is done; returns whether it was deleted."""
        if self.pending():
            return False
        self.release()
        shutil.rmtree(self.folder, ignore_errors=True)
        for folder in self._made:  # a run on a healthy server leaves no trace in the working folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        return True

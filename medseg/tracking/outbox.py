"""A run's outbox: what it sends after its start, from the staging of an artifact to the last wait.

It puts together the background writer (:mod:`medseg.tracking.worker`), the run's spool
for a server (:mod:`medseg.tracking.spool`) and the scrubbed artifact views
(:func:`medseg.tracking.upload.scrubbed_view`), so that :class:`~medseg.tracking.session.
TrackingSession` only builds records. In strict mode (tests) there is no thread and no
spool: every record is written at once and a failure raises.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.connect import server_answers
from medseg.tracking.records import apply_record, artifact_record
from medseg.tracking.spool import Spool
from medseg.tracking.timeouts import PROBE_TIMEOUT_S
from medseg.tracking.upload import scrubbed_view
from medseg.tracking.worker import RecordWriter, failure_message

logger = logging.getLogger(__name__)


class Outbox:
    """Sends one run's records.

    Args:
        client: returns the ``MlflowClient`` (read at every record).
        uri: the store's URI (probed while waiting, for a server).
        run_id: the run.
        spool_dir: the spool root for a server; ``None`` for a local store.
        on_error: called with a one-line message for each problem.
        strict: write at once and raise instead.
    """

    def __init__(self, client: Callable[[], Any], uri: str, run_id: str, spool_dir: Path | None,
                 on_error: Callable[[str], None], strict: bool = False) -> None:
        self.client = client
        self.uri = uri
        self.run_id = run_id
        self.spool: Spool | None = None
        self.writer: RecordWriter | None = None
        if strict:
            return
        replay: list[tuple[int, dict[str, Any]]] = []
        probe = None
        if spool_dir is not None:
            self.spool = Spool.open(spool_dir, run_id, uri)
            for seq, record in self.spool.pending():
                if record["kind"] == "end":
                    self.spool.mark_done(seq, "superseded")  # a resumed run ends again
                else:
                    replay.append((seq, record))
            if replay:
                logger.info("run %s: sending %d tracking records kept from before first", run_id, len(replay))
            probe = lambda: server_answers(uri, PROBE_TIMEOUT_S)
        self.writer = RecordWriter(client, run_id, self.spool, on_error, probe, replay)

    def stage(self, local: Path, artifact_path: str | None, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """An artifact record for a scrubbed view of ``local`` taken now (in the spool, to outlive
        this process, for a server; in a temporary folder otherwise)."""
        spool = self.spool
        folder = spool.stage_dir() if spool is not None else Path(tempfile.mkdtemp(prefix="medseg-upload-"))
        try:
            staged = scrubbed_view(local, folder, durable=spool is not None, exclude=exclude)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if spool is None:
            return artifact_record(str(staged), staged.is_dir(), artifact_path, str(local), str(folder))
        return artifact_record(staged.relative_to(spool.folder).as_posix(), staged.is_dir(), artifact_path,
                               str(local), folder.relative_to(spool.folder).as_posix())

    def send(self, record: dict[str, Any]) -> int | None:
        """Queue ``record`` and return its sequence number; in strict mode write it now and return what
        writing it returned."""
        if self.writer is not None:
            return self.writer.submit(record)
        try:
            return apply_record(self.client(), self.run_id, record)
        except Exception as err:
            raise MedsegError(failure_message(record, err)) from err
        finally:
            if record.get("kind") == "artifact":
                shutil.rmtree(record["staged"], ignore_errors=True)

    def send_and_wait(self, record: dict[str, Any], timeout_s: float) -> Any:
        """Queue ``record`` behind the others and wait for it at most ``timeout_s``.

        Returns:
            What writing it returned; ``None`` if it failed or is still queued.
        """
        if self.writer is None:
            return self.send(record)
        seq = self.writer.submit(record)
        if not self.writer.wait(timeout_s, seq):
            return None
        return self.writer.result(seq)

    def close(self, timeout_s: float) -> int:
        """Wait for the queue at most ``timeout_s``, then stop the writer.

        Returns:
            How many records stay in the spool for ``medseg tracking sync`` (0: the spool is gone).
        """
        writer, spool = self.writer, self.spool
        if writer is None:
            return 0
        drained = False
        try:
            drained = writer.wait(timeout_s)
        finally:  # on Ctrl-C too: the thread must not start another call, the spool must not stay locked
            writer.stop()
            if spool is not None and not (drained and spool.remove_if_done()):
                spool.release()
        return len(spool.pending()) if spool is not None and spool.folder.is_dir() else 0

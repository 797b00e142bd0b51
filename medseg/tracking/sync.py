"""``medseg tracking sync RUN``: send what a run kept in its local spool to the tracking server.

When the server stalled or went away during a training, the run's remaining records
(metrics with their steps, tags, artifacts, registration, the final status) stay in
``<runs_dir>/spool/<run_id>`` (:mod:`medseg.tracking.spool`). :func:`sync_run` writes them
to the server in their original order, marks each one done as the server confirms it, and
removes the spool when none is left; the run then gets the tag ``medseg.tracking_synced``
(how many records came late). Interrupted or stopped by the server again, it can simply be
run again: writing a record twice changes nothing (see :mod:`medseg.tracking.records`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from medseg.errors import MedsegError
from medseg.tracking.connect import check_tracking_server, get_run_or_fail, make_client, resolve_tracking_uri
from medseg.tracking.records import apply_record, describe, is_transient
from medseg.tracking.spool import Spool, spool_root, waiting_runs
from medseg.tracking.timeouts import ServerTimeout, call_with_deadline, start_timeout_s
from medseg.tracking.worker import failure_message

__all__ = ["SYNCED_TAG", "SyncReport", "sync_run", "waiting_runs"]

logger = logging.getLogger(__name__)

SYNCED_TAG = "medseg.tracking_synced"


@dataclass(frozen=True)
class SyncReport:
    """What :func:`sync_run` did.

    Attributes:
        run_id: the run.
        uri: the server written to.
        written: records the server took.
        refused: one line per record the server refused for good (not retried).
    """

    run_id: str
    uri: str
    written: int
    refused: list[str] = field(default_factory=list)

    def format(self) -> str:
        """One line per fact, for the command line."""
        lines = [f"run {self.run_id}: {self.written} record(s) written to {self.uri}; nothing left to send"]
        lines += [f"  refused: {line}" for line in self.refused]
        return "\n".join(lines)


def sync_run(run_id: str, tracking_uri: str | None = None, runs_dir: str | os.PathLike[str] = "runs",
             timeout_s: float = 5.0) -> SyncReport:
    """Write the records ``run_id`` kept in its spool to the tracking server, then remove the spool.

    Args:
        run_id: the MLflow run id.
        tracking_uri: the server; ``None``: the one the run was started on (kept in the spool).
        runs_dir: the folder that holds ``spool/`` (the training's ``runs/``).
        timeout_s: the server check's timeout, per request.

    Returns:
        The :class:`SyncReport`.

    Raises:
        MedsegError: no spool for ``run_id`` (the message lists the runs that have one), a
            training still writes it, the server cannot be reached, the run does not exist
            there, or the server stopped answering part way (what is left stays; run again).
    """
    spool = Spool.load(spool_root(runs_dir), run_id)
    try:
        uri = resolve_tracking_uri(tracking_uri, runs_dir) if tracking_uri else spool.uri
        check_tracking_server(uri, timeout_s)
        client = make_client(uri)
        limit = start_timeout_s()
        try:
            call_with_deadline(lambda: get_run_or_fail(client, run_id, uri), limit, f"finding run {run_id}")
        except ServerTimeout as err:
            raise MedsegError(f"MLflow tracking server at {uri}: {err}; try again later") from None
        pending = spool.pending()
        written, refused = 0, []
        for number, (seq, record) in enumerate(pending, 1):
            try:
                # No extra deadline: a large upload may take long, and MLflow's own timeouts are bounded.
                apply_record(client, run_id, record, spool.resolve, replay=True)
            except Exception as err:
                if is_transient(err):
                    raise MedsegError(
                        f"MLflow tracking server at {uri} stopped answering while {describe(record)} (record "
                        f"{number} of {len(pending)}): {failure_message(record, err)}; {len(pending) - number + 1} "
                        f"record(s) still wait in {spool.folder}: run the same command again later") from err
                refused.append(failure_message(record, err))
                spool.mark_done(seq, "rejected")
                continue
            spool.mark_done(seq)
            written += 1
        if written:
            try:
                client.set_tag(run_id, SYNCED_TAG, str(written))
            except Exception as err:  # the records are there; the tag only says they came late
                logger.warning("run %s: could not set %s: %s", run_id, SYNCED_TAG, err)
        spool.remove_if_done()
        return SyncReport(run_id, uri, written, refused)
    finally:
        spool.release()

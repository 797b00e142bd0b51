"""One background thread per run that writes its records to the store, in order.

Training hands records over (:meth:`RecordWriter.submit`) and goes on at once; the thread
writes them one after the other. When the server does not answer (a timeout, a refused
connection, a 5xx after MLflow's own retries: :func:`medseg.tracking.records.is_transient`)
the record stays at the head of the queue, the problem is reported once, and the thread
tries again every :data:`~medseg.tracking.timeouts.RETRY_INTERVAL_S` seconds; the records
are safe meanwhile in the run's spool (:mod:`medseg.tracking.spool`). A record the store
refuses for good (a bad value, a missing artifact) is reported and dropped, as before.

Only :meth:`RecordWriter.wait` blocks the caller (at ``register_model`` and ``end_run``),
and at most its timeout. It stops early when the server is known not to answer: when a
write fails during the wait, or when nothing was written for
:data:`~medseg.tracking.timeouts.PROBE_INTERVAL_S` and a short probe of the server
(``GET /health`` and one API call) gets no answer either. A slow but healthy server that
stores a large checkpoint still answers the probe, so it is given the whole timeout.

Why not MLflow's own ``MLFLOW_ENABLE_ASYNC_LOGGING``: it covers only metrics, params and
tags (not artifacts, registration or the run's end), keeps them in memory only, and its
flush at the end waits without a bound.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medseg.tracking.records import apply_record, describe, is_transient
from medseg.tracking.spool import Spool
from medseg.tracking.timeouts import PROBE_INTERVAL_S, RETRY_INTERVAL_S

logger = logging.getLogger(__name__)


def failure_message(record: dict[str, Any], err: BaseException) -> str:
    """``"MLflow logging metrics at step 3 failed: MlflowException: <first line>"``."""
    first_line = str(err).splitlines()[0] if str(err) else ""
    return f"MLflow {describe(record)} failed: {type(err).__name__}: {first_line}"


class RecordWriter:
    """Write a run's records from a daemon thread.

    Args:
        client: returns the ``MlflowClient`` to use (read at every record).
        run_id: the run.
        spool: the run's spool, for a server; ``None`` for a local store (then every
            failure drops its record, since there is nowhere better to keep it).
        on_error: called with a one-line message for each problem.
        probe: returns whether the server answers a short request; ``None``: no probe.
        replay: records handed over already journaled (a resumed run's leftovers):
            ``(seq, record)`` pairs written first, as replays.
    """

    def __init__(self, client: Callable[[], Any], run_id: str, spool: Spool | None,
                 on_error: Callable[[str], None], probe: Callable[[], bool] | None = None,
                 replay: Iterable[tuple[int, dict[str, Any]]] = ()) -> None:
        self._client = client
        self._run_id = run_id
        self._spool = spool
        self._on_error = on_error
        self._probe = probe
        self._queue: deque[tuple[int, dict[str, Any]]] = deque(replay)
        self._replayed = {seq for seq, _ in self._queue}
        self._cond = threading.Condition()
        self._results: dict[int, Any] = {}
        self._finished: set[int] = set()
        self._next_local = 0
        self._progress = 0  # records finished (written or refused)
        self._failures = 0  # transient failures so far
        self._down = False
        self._retry_at = 0.0
        self._urgent = False  # someone waits: try again now rather than at _retry_at
        self._stopping = False
        self._abandon = False
        self._unanswered = False  # the last wait found the server not answering, and nothing was written since
        self._thread = threading.Thread(target=self._run, name=f"medseg-tracking-writer-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------
    def submit(self, record: dict[str, Any]) -> int:
        """Queue ``record`` (journaled first, for a server); returns its sequence number."""
        with self._cond:
            if self._spool is not None:
                seq = self._spool.append(record)
            else:
                seq, self._next_local = self._next_local, self._next_local + 1
            self._queue.append((seq, record))
            self._cond.notify_all()
        return seq

    @property
    def pending(self) -> int:
        """Records not written yet."""
        with self._cond:
            return len(self._queue)

    @property
    def down(self) -> bool:
        """Whether the last write failed for want of a server."""
        return self._down

    def result(self, seq: int) -> Any:
        """What writing record ``seq`` returned (a registration's version), ``None`` if it failed."""
        with self._cond:
            return self._results.get(seq)

    def wait(self, timeout_s: float, seq: int | None = None) -> bool:
        """Wait until record ``seq`` (``None``: every record) is written or refused.

        Returns:
            ``True`` if it was; ``False`` on timeout or when the server was found not answering.
        """
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            failures_before = self._failures
            self._urgent = True
            self._cond.notify_all()
            # After a wait that found the server silent, probe at once instead of idling first.
            seen, changed = self._progress, start - PROBE_INTERVAL_S if self._unanswered else start
            try:
                while not (seq in self._finished if seq is not None else not self._queue):
                    now = time.monotonic()
                    if self._failures > failures_before:
                        self._unanswered = True
                        return False
                    if now >= deadline:
                        return False
                    if self._progress != seen:
                        seen, changed = self._progress, now
                    elif self._probe is not None and now - changed >= PROBE_INTERVAL_S:
                        self._cond.release()  # the probe takes seconds; the writer goes on meanwhile
                        try:
                            alive = self._probe()
                        finally:
                            self._cond.acquire()
                        if not alive and self._progress == seen:
                            self._unanswered = True
                            return False
                        changed = time.monotonic()
                        continue
                    self._cond.wait(max(0.01, min(deadline, changed + PROBE_INTERVAL_S) - now))
                return True
            finally:
                self._urgent = False

    def stop(self) -> None:
        """Let the thread end: after the queue is empty, or at once (after its current call) if not."""
        with self._cond:
            self._stopping = True
            self._abandon = bool(self._queue)
            self._cond.notify_all()

    # -- the thread ------------------------------------------------------------------------
    def _next(self) -> tuple[int, dict[str, Any]] | None:
        with self._cond:
            while True:
                if self._stopping and (self._abandon or not self._queue):
                    return None
                now = time.monotonic()
                if self._queue and (not self._down or self._urgent or now >= self._retry_at):
                    return self._queue[0]
                wait = max(0.01, self._retry_at - now) if self._queue else None
                self._cond.wait(wait)

    def _run(self) -> None:
        path_of = self._spool.resolve if self._spool is not None else Path
        while (item := self._next()) is not None:
            seq, record = item
            try:
                result = apply_record(self._client(), self._run_id, record, path_of, replay=seq in self._replayed)
            except Exception as err:  # a store, network or file error must never end this thread
                if self._spool is not None and is_transient(err):
                    self._failed(record, err)
                    continue
                self._report(failure_message(record, err))
                self._finish(seq, record, None, "rejected")
            else:
                self._finish(seq, record, result, "ok")

    def _report(self, message: str) -> None:
        try:
            self._on_error(message)
        except Exception:
            logger.exception("reporting a tracking problem failed")

    def _failed(self, record: dict[str, Any], err: BaseException) -> None:
        with self._cond:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + RETRY_INTERVAL_S
            self._failures += 1
            self._urgent = False  # a waiter gets one immediate retry, not a busy loop
            self._cond.notify_all()
        if first and self._spool is not None:
            self._report(f"{failure_message(record, err)}; kept in {self._spool.folder}, "
                         f"trying again every {RETRY_INTERVAL_S:g} s")

    def _finish(self, seq: int, record: dict[str, Any], result: Any, outcome: str) -> None:
        with self._cond:
            if self._spool is not None:
                self._spool.mark_done(seq, outcome)  # before the queue empties: end_run then removes the spool
            self._queue.popleft()
            self._results[seq] = result
            self._finished.add(seq)
            self._progress += 1
            self._down = self._unanswered = False
            self._cond.notify_all()
        staged = record.get("staged")
        if self._spool is None and staged:
            shutil.rmtree(staged, ignore_errors=True)  # a temporary view of a local-store upload

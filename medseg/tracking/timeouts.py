"""Bounds on every wait for a tracking server, so that a stuck server cannot stall training.

A server that answers ``/health`` and then never replies kept ``medseg train`` waiting for
more than 7 minutes per call: MLflow's client waits ``MLFLOW_HTTP_REQUEST_TIMEOUT=120`` s
for each answer and retries ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7`` times. medseg bounds the
waits on three levels:

1. **MLflow's HTTP client** (:func:`apply_http_defaults`): 30 s per socket wait, 2 retries,
   backoff factor 1, so one call gives up after about 95 s at worst (3 x 30 s + 2 s of
   backoff). MLflow reads these variables at every request; medseg only fills in the ones
   the user has not set. 30 s rather than less: after a large checkpoint's last byte, a
   healthy server may need many seconds to store it (e.g. in S3) before it answers.
2. **Start of a run** (:func:`call_with_deadline`, :func:`start_timeout_s`): the calls that
   must succeed (finding the experiment, creating the run, its params and config) run in a
   helper thread and training gives up on them after 30 s with a one-line error.
3. **During and after training**: metrics, tags, artifacts, registration and the end of the
   run go through a background thread (:mod:`medseg.tracking.worker`); only ``end_run``
   waits for it, at most :func:`flush_timeout_s` (120 s, less when a probe finds the server
   not answering). What is not written by then stays in the local spool
   (:mod:`medseg.tracking.spool`) for ``medseg tracking sync``.

``MEDSEG_TRACKING_START_TIMEOUT`` and ``MEDSEG_TRACKING_FLUSH_TIMEOUT`` (seconds) change
levels 2 and 3.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from medseg.errors import InvalidValueError, MedsegError

T = TypeVar("T")

HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
START_TIMEOUT_ENV = "MEDSEG_TRACKING_START_TIMEOUT"
FLUSH_TIMEOUT_ENV = "MEDSEG_TRACKING_FLUSH_TIMEOUT"
DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_FLUSH_TIMEOUT_S = 120.0
# While end_run waits: after this long with nothing written, ask the server whether it still answers.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0
# How often the background thread tries again once the server stopped answering.
RETRY_INTERVAL_S = 30.0


class ServerTimeout(MedsegError):
    """The tracking server did not answer within medseg's bound."""


def apply_http_defaults() -> dict[str, str]:
    """Bound MLflow's HTTP client: set :data:`HTTP_DEFAULTS` where the user has not set a value.

    Returns:
        The effective values of the three variables.
    """
    for name, value in HTTP_DEFAULTS.items():
        if not os.environ.get(name):
            os.environ[name] = value
    return {name: os.environ[name] for name in HTTP_DEFAULTS}


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise InvalidValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def start_timeout_s() -> float:
    """How long a start-of-run call may take: ``$MEDSEG_TRACKING_START_TIMEOUT`` or 30 s."""
    return _seconds(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S)


def flush_timeout_s() -> float:
    """How long ``end_run`` waits for the background writer: ``$MEDSEG_TRACKING_FLUSH_TIMEOUT`` or 120 s."""
    return _seconds(FLUSH_TIMEOUT_ENV, DEFAULT_FLUSH_TIMEOUT_S)


def call_with_deadline(action: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``action`` in a helper thread and wait for it at most ``timeout_s``.

    The helper is a daemon thread: if the server never answers, it stays blocked in
    MLflow's socket (bounded by :func:`apply_http_defaults`) without keeping the process
    alive. (``concurrent.futures`` is not used: its threads are joined at exit.)

    Args:
        action: the call.
        timeout_s: the bound, in seconds.
        what: what the call does, for the message ("creating a run").

    Returns:
        What ``action`` returned.

    Raises:
        ServerTimeout: ``action`` did not finish in time.
        Exception: whatever ``action`` raised.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = action()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name=f"medseg-tracking: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ServerTimeout(f"no answer within {timeout_s:g} s while {what}")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]

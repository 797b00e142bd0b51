"""Open the tracking store for a run: fail fast, or fall back to the local store.

Connecting is kept apart from :mod:`medseg.tracking.session`, which logs to a store once
it is open.
"""

from __future__ import annotations

import logging
import os

from medseg.errors import MedsegError
from medseg.tracking.connect import (
    check_tracking_server,
    ensure_experiment,
    is_server_uri,
    make_client,
    resolve_tracking_uri,
)
from medseg.tracking.session import SERVER_HINT, TrackingSession
from medseg.tracking.spool import spool_root
from medseg.tracking.timeouts import ServerTimeout, call_with_deadline, start_timeout_s

__all__ = ["FALLBACK_CHOICES", "open_tracking"]

logger = logging.getLogger(__name__)

FALLBACK_CHOICES = ("none", "local")


def open_tracking(
    uri: str | None,
    experiment: str,
    fallback: str | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
    timeout_s: float = 5.0,
    strict: bool = False,
) -> TrackingSession:
    """Connect to the tracking store, failing fast, and get the experiment ready.

    Args:
        uri: ``--tracking-uri``; ``None`` for the local store under ``runs_dir``.
        experiment: the experiment name (created if missing).
        fallback: ``"local"`` to use the local store when the server cannot be used;
            ``None`` or ``"none"`` to raise.
        runs_dir: the folder of the local store, and of the spool of a server's runs
            (``<runs_dir>/spool``, see :mod:`medseg.tracking.spool`).
        timeout_s: how long to wait for the server's check, per request (the calls after it
            are bounded by :func:`~medseg.tracking.timeouts.start_timeout_s`).
        strict: passed to :class:`TrackingSession`.

    Returns:
        A :class:`TrackingSession` (``fallback_from`` set when it fell back).

    Raises:
        MedsegError: the store cannot be used and there is no fallback, or ``fallback``
            is not one of ``None``, ``"none"``, ``"local"``.
    """
    if fallback not in (None, *FALLBACK_CHOICES):
        choices = ", ".join(FALLBACK_CHOICES)
        raise MedsegError(f"--tracking-fallback must be one of {choices}, got {fallback!r}")
    resolved = resolve_tracking_uri(uri, runs_dir)
    try:
        return _open(resolved, experiment, None, timeout_s, strict, runs_dir)
    except MedsegError as err:
        if fallback != "local" or not is_server_uri(resolved):
            raise
        local = resolve_tracking_uri(None, runs_dir)
        logger.warning("%s; falling back to the local MLflow store %s", err, local)
        return _open(local, experiment, resolved, timeout_s, strict, runs_dir)


def _open(uri: str, experiment: str, fallback_from: str | None, timeout_s: float, strict: bool,
          runs_dir: str | os.PathLike[str]) -> TrackingSession:
    check_tracking_server(uri, timeout_s)
    server = is_server_uri(uri)
    try:
        client = make_client(uri)
        if server:  # it answered the check, but may stall now: never wait for it unbounded
            limit = start_timeout_s()
            experiment_id = call_with_deadline(lambda: ensure_experiment(client, experiment, uri), limit,
                                               f"getting experiment {experiment!r}")
        else:
            experiment_id = ensure_experiment(client, experiment, uri)
    except ServerTimeout as err:
        raise MedsegError(f"MLflow tracking server at {uri}: {err}; it may be stuck or overloaded. "
                          f"{SERVER_HINT}") from None
    except MedsegError:
        raise
    except Exception as err:  # a database that refuses connections, a bad URI...
        raise MedsegError(f"MLflow store at {uri} cannot be used: {err}") from err
    return TrackingSession(client, uri, experiment, experiment_id, fallback_from=fallback_from, strict=strict,
                           spool_dir=spool_root(runs_dir) if server else None)

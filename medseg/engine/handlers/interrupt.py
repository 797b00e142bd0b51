"""End a training run cleanly on SIGTERM as on Ctrl-C: what SLURM, ``docker stop`` and Kubernetes send.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``, but by default SIGTERM kills the process
at once: the MLflow run stays ``RUNNING`` for ever and nothing says how to go on. While the
trainer runs, :class:`InterruptHandler` turns SIGTERM into :class:`RunInterrupted` (a
``KeyboardInterrupt``), raised in the main thread between two Python operations. Ignite then
fires ``EXCEPTION_RAISED``; the tracking handler marks the run ``KILLED`` with the signal as
the reason; the output folder's lock is released. The checkpoints are already safe: each is
written to a temporary file and renamed, so the newest complete one is what ``--resume`` reads
(the partial epoch is trained again, as after a SIGKILL).

The handler is one-shot: the first SIGTERM puts the previous action back before it raises, so
a second SIGTERM (like a second Ctrl-C) ends the process at once. A run that ends otherwise puts
it back at ``COMPLETED``; after a run that failed it stays until the next SIGTERM, which then
raises :class:`RunInterrupted` wherever the process is (the command line exits with 143).
No ``EXCEPTION_RAISED`` handler is needed, so the handler's place in the chain does not matter.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ignite.engine import Engine, Events

logger = logging.getLogger("medseg.train")

#: Exit status of a run ended by a signal, as a shell reports it (128 + the signal number).
EXIT_STATUS = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


class RunInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal; the run can be resumed from its output folder.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        exit_status: what the command exits with (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_status = EXIT_STATUS.get(signum, 128 + int(signum))
        super().__init__(f"stopped by {self.signal_name}")


def interruption_reason(error: BaseException) -> str | None:
    """Why a run was stopped from outside (``"SIGTERM"``, ``"SIGINT (Ctrl-C)"``), or ``None`` if it failed."""
    if isinstance(error, RunInterrupted):
        return error.signal_name
    if isinstance(error, KeyboardInterrupt):
        return "SIGINT (Ctrl-C)"
    return None


class InterruptHandler:
    """Raise :class:`RunInterrupted` on SIGTERM while the trainer runs; restore the old handler after.

    Only the main thread can install a signal handler; elsewhere (a run started from a worker
    thread) the handler does nothing and SIGTERM keeps its default action.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def attach(self, engine: Engine) -> None:
        """Install at ``STARTED``; restore at ``COMPLETED``."""
        engine.add_event_handler(Events.STARTED, self.install)
        engine.add_event_handler(Events.COMPLETED, self.restore)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.restore()
        logger.warning("received %s: stopping the run (the newest checkpoint is kept; --resume continues it)",
                       signal.Signals(signum).name)
        raise RunInterrupted(signum)

    def install(self, engine: Engine | None = None) -> None:
        """Turn SIGTERM into :class:`RunInterrupted` (main thread only)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        self._installed = True

    def restore(self, engine: Engine | None = None) -> None:
        """Put back the SIGTERM handler that was there before."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

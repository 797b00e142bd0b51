"""A crash-test hook: SIGKILL this process at a named point of training, when asked to.

The reliability tests prove that ``medseg train --resume`` survives a hard kill at any
moment. Killing from outside at "the right time" races the process, so the process kills
itself instead, at a point named by the ``MEDSEG_FAULT_AT`` environment variable::

    MEDSEG_FAULT_AT=train-iteration:5      # after the 5th training iteration (mid-epoch)
    MEDSEG_FAULT_AT=val-iteration:2        # after the 2nd validation iteration (mid-validation)
    MEDSEG_FAULT_AT=checkpoint-write:2     # 2nd training-state checkpoint: the temporary file
                                           # is written, the rename onto last.pt has not happened

Counts are per process and start at 1. The kill is a real ``SIGKILL`` (no handler, no
``finally`` block, no flush runs), the same as the kernel's OOM killer or a pulled plug.
``MEDSEG_FAULT_SIGNAL=TERM`` (or ``INT``) sends that signal instead, through the operating
system as ``docker stop``, SLURM or Ctrl-C would, to test the clean stop.
When the variable is unset (always, outside the tests) every hook is a dictionary lookup
that returns at once and no handler is attached.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

from medseg.errors import InvalidValueError

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FAULT_ENV", "FAULT_POINTS", "SIGNAL_ENV", "attach_fault_points", "fault_point"]

FAULT_ENV = "MEDSEG_FAULT_AT"
SIGNAL_ENV = "MEDSEG_FAULT_SIGNAL"
_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
FAULT_POINTS = ("train-iteration", "val-iteration", "checkpoint-write")
_reached: Counter[str] = Counter()


def _requested() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in FAULT_POINTS or not count.isdigit() or int(count) < 1:
        raise InvalidValueError(f"{FAULT_ENV}={spec!r}: expected POINT:N with POINT one of {list(FAULT_POINTS)} "
                         "and N >= 1")
    return name, int(count)


def fault_point(name: str) -> None:
    """Count one pass through the point ``name``; SIGKILL the process on the requested pass.

    Args:
        name: one of :data:`FAULT_POINTS`.
    """
    requested = _requested()
    if requested is None or requested[0] != name:
        return
    _reached[name] += 1
    if _reached[name] == requested[1]:
        which = os.environ.get(SIGNAL_ENV, "KILL")
        if which not in _SIGNALS:
            raise InvalidValueError(f"{SIGNAL_ENV}={which!r}: expected one of {list(_SIGNALS)}")
        os.kill(os.getpid(), _SIGNALS[which])


def attach_fault_points(trainer: Engine, evaluator: Engine | None = None) -> None:
    """Attach the iteration hooks to the trainer and evaluator, only when :data:`FAULT_ENV` is set.

    Args:
        trainer: the training engine (``train-iteration``).
        evaluator: the validation engine (``val-iteration``), if any.
    """
    if _requested() is None:
        return
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: fault_point("train-iteration"))
    if evaluator is not None:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: fault_point("val-iteration"))

"""Stop a run on a NaN or infinite loss, naming the step and the cases in the batch."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from medseg.errors import MedsegError
from medseg.transforms.keys import CASE_ID


class NonFiniteLossError(MedsegError):
    """The loss became NaN or infinite; the message names the epoch, iteration and cases."""


def _case_ids(batch: object) -> list[str]:
    if isinstance(batch, dict):
        ids = batch.get(CASE_ID)
    elif isinstance(batch, list) and batch and isinstance(batch[0], dict):
        ids = [b.get(CASE_ID) for b in batch]
    else:
        ids = None
    if ids is None:
        return []
    return [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


class NaNGuardHandler:
    """Raise :class:`NonFiniteLossError` as soon as an iteration's loss is not finite.

    The error propagates out of ``trainer.run()`` before any checkpoint of the bad state
    is written, so the last good checkpoint stays intact; the tracking handler marks the
    run FAILED with this message.
    """

    def attach(self, engine: Engine) -> None:
        """Register on the trainer."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) and output else (
            output.get("loss") if isinstance(output, dict) else output)
        value = float(loss.detach().item() if hasattr(loss, "detach") else loss)
        if not math.isfinite(value):
            ids = _case_ids(engine.state.batch)
            raise NonFiniteLossError(
                f"loss is {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                f"cases in the batch: {', '.join(ids) if ids else 'unknown'}. The last good checkpoint is kept."
            )

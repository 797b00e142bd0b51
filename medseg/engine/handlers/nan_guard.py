"""Stop a run on a NaN or infinite loss, naming the step and the cases in the batch."""

from __future__ import annotations

import math

import torch
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
    """Raise :class:`NonFiniteLossError` when an iteration's loss is not finite, naming that iteration and its cases.

    Reading the loss back to the host after every step would make the host wait for the device
    at every step, and the GPU idle while the host then prepares the next one. So where the loss
    lives on a GPU (``lag=None``, the default; ``True`` forces it, for tests on the CPU), each
    iteration only queues a finiteness test on the device, and the previous iteration's result
    is read at the next one: by then the device has finished it and is busy with the current
    step, so nothing waits. The last iteration of every epoch is read at ``EPOCH_COMPLETED``,
    before the run-state handler (later in the handler list) writes a checkpoint, so the error
    still propagates out of ``trainer.run()`` before any checkpoint of the bad state is written
    and the last good checkpoint stays intact; the tracking handler marks the run FAILED with
    this message. A non-finite loss is reported at most one step late, naming the step it
    happened at.

    Args:
        lag: read each step's verdict one step late; ``None``: where the loss is on a GPU.
    """

    def __init__(self, lag: bool | None = None) -> None:
        self.lag = lag
        self._pending: tuple[torch.Tensor, torch.Tensor, int, int, list[str]] | None = None

    def attach(self, engine: Engine) -> None:
        """Register on the trainer (each iteration, and each epoch's end for the last one)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.flush)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) and output else (
            output.get("loss") if isinstance(output, dict) else output)
        step = (engine.state.epoch, engine.state.iteration, _case_ids(engine.state.batch))
        if not isinstance(loss, torch.Tensor):
            self._check(float(loss), *step)
            return
        loss = loss.detach()
        lag = self.lag if self.lag is not None else loss.device.type == "cuda"
        if not lag:
            self._check(float(loss.item()), *step)
            return
        pending, self._pending = self._pending, (torch.isfinite(loss).all(), loss, *step)
        if pending is not None:
            self._read(pending)

    def flush(self, engine: Engine | None = None) -> None:
        """Read the verdict still pending (the epoch's last iteration): waits for the device."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._read(pending)

    def _read(self, pending: tuple[torch.Tensor, torch.Tensor, int, int, list[str]]) -> None:
        finite, loss, epoch, iteration, ids = pending
        if not bool(finite):
            self._pending = None
            self._check(float(loss.float().mean()), epoch, iteration, ids)

    @staticmethod
    def _check(value: float, epoch: int, iteration: int, ids: list[str]) -> None:
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch}, iteration {iteration}; "
                f"cases in the batch: {', '.join(ids) if ids else 'unknown'}. The last good checkpoint is kept."
            )

"""Samples per second, a progress bar with the loss, and one clear log line per epoch."""

from __future__ import annotations

import logging
import sys
import time

from ignite.engine import Engine, Events

logger = logging.getLogger("medseg.train")


def _scalar(value: object) -> float:
    """A Python float from a loss tensor (detached: the trainer's loss still carries its graph)."""
    return float(value.detach().item()) if hasattr(value, "detach") else float(value)


def _detached(value: object) -> object:
    """A loss as float64 without its graph, left on its device (a tensor), or a Python float."""
    return value.detach().double() if hasattr(value, "detach") else float(value)


class ThroughputHandler:
    """Measure samples/s per epoch into ``engine.state.metrics["samples_per_s"]`` and log the epoch.

    Args:
        progress_bar: show a tqdm bar with the running loss (only on a terminal).
    """

    def __init__(self, progress_bar: bool = True) -> None:
        self.progress_bar = progress_bar
        self._bar = None
        self._t0 = 0.0
        self._samples = 0
        self._loss_sum: object = 0.0
        self._shown: object = None

    def attach(self, engine: Engine) -> None:
        """Register on the trainer."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)

    def _start(self, engine: Engine) -> None:
        self._t0, self._samples, self._loss_sum, self._shown = time.perf_counter(), 0, 0.0, None
        if self.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=engine.state.epoch_length, desc=f"epoch {engine.state.epoch}", leave=False)

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        image = items[0].get("image") if isinstance(items[0], dict) else None
        # Decollated output has one dict per sample; batched output one dict per batch.
        self._samples += len(items) if isinstance(output, list) or image is None else int(image.shape[0])
        losses = [_detached(o["loss"]) for o in items if isinstance(o, dict) and "loss" in o]
        if losses:
            # Summed where the loss lives (float64, in the order a Python sum takes): nothing here
            # waits for the device; the sum is read once, at the epoch's end.
            total = sum(losses[1:], losses[0])
            self._loss_sum = self._loss_sum + (total if isinstance(output, list) else total * self._last_batch(items))
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            # The previous iteration's loss: finished on the device by now, so the bar does not wait.
            shown = f"{_scalar(self._shown):.4f}" if self._shown is not None else "?"
            self._bar.set_postfix(loss=shown, samples_s=f"{self._samples / elapsed:.2f}")
            self._bar.update(1)
        self._shown = losses[0] if losses else None

    @staticmethod
    def _last_batch(items: list) -> int:
        image = items[0].get("image") if isinstance(items[0], dict) else None
        return 1 if image is None else int(image.shape[0])

    def _end(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self._samples / elapsed
        mean_loss = _scalar(self._loss_sum) / max(self._samples, 1)
        engine.state.metrics["samples_per_s"] = rate
        engine.state.metrics["train_loss"] = mean_loss
        lr = engine.optimizer.param_groups[0]["lr"] if getattr(engine, "optimizer", None) else float("nan")
        engine.state.metrics["lr"] = lr
        logger.info("epoch %d/%d  loss %.4f  lr %.3g  %.3g samples/s  %.1f s", engine.state.epoch,
                    engine.state.max_epochs, mean_loss, lr, rate, elapsed)

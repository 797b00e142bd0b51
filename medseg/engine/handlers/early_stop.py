"""Early stopping on the validation key metric, with its state kept where checkpoints save it."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from medseg.engine.handlers.record import run_record
from medseg.errors import InvalidValueError

logger = logging.getLogger("medseg.train")


class EarlyStopping:
    """Stop the trainer when the evaluator's key metric has not improved for ``patience`` validations.

    It is listed among the *trainer's* handlers and watches the evaluator it is given,
    so a bundle config needs no reference cycle (trainer -> evaluator -> trainer). Its
    counter and best score live in ``the run record's ``early_stop`` (:mod:`medseg.engine.handlers.record`)``, which
    :class:`~medseg.engine.handlers.run_state.RunStateHandler` saves and restores, so an
    exact resume keeps them.

    Args:
        evaluator: the validation evaluator whose key metric is watched.
        patience: validations without improvement before stopping; ``0`` disables.
        min_delta: the smallest increase that counts as an improvement.
    """

    def __init__(self, evaluator: Engine, patience: int = 0, min_delta: float = 0.0) -> None:
        if patience < 0:
            raise InvalidValueError(f"patience must be >= 0 (0 disables), got {patience}")
        self.evaluator = evaluator
        self.patience = patience
        self.min_delta = min_delta
        self.trainer: Engine | None = None

    def attach(self, trainer: Engine) -> None:
        """Remember the trainer and watch the evaluator's results."""
        self.trainer = trainer
        record = run_record(trainer)
        if not record.early_stop:
            record.early_stop.update({"counter": 0, "best": None})
        if self.patience:
            self.evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        state = run_record(self.trainer).early_stop
        score = float(evaluator.state.metrics[evaluator.state.key_metric_name])
        if state["best"] is None or score > state["best"] + self.min_delta:
            state["best"], state["counter"] = score, 0
            return
        state["counter"] += 1
        if state["counter"] >= self.patience:
            logger.info("early stopping: no improvement over %.4f for %d validations", state["best"], state["counter"])
            self.trainer.terminate()

"""Early stopping on the validation key metric, with its state kept where checkpoints save it."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from medseg.errors import InvalidValueError

logger = logging.getLogger("medseg.train")


class EarlyStopping:
    """Stop the trainer when the evaluator's key metric has not improved for ``patience`` validations.

    It is listed among the *trainer's* handlers and watches the evaluator it is given,
    so a bundle config needs no reference cycle (trainer -> evaluator -> trainer). Its
    counter and best score live in ``trainer.state.early_stop``, which
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
        if not isinstance(getattr(trainer.state, "early_stop", None), dict):
            trainer.state.early_stop = {"counter": 0, "best": None}
        if self.patience:
            self.evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        state = self.trainer.state.early_stop
        score = float(evaluator.state.metrics[evaluator.state.key_metric_name])
        if state["best"] is None or score > state["best"] + self.min_delta:
            state["best"], state["counter"] = score, 0
            return
        state["counter"] += 1
        if state["counter"] >= self.patience:
            logger.info("early stopping: no improvement over %.4f for %d validations", state["best"], state["counter"])
            self.trainer.terminate()

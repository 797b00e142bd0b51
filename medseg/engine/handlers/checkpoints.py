"""The run's checkpoints: ``models/model.pt`` (the best model, or the last weights) and ``models/last.pt``.

Every epoch the complete training state is written atomically to ``models/last.pt`` (the
previous one is kept as ``models/last.prev.pt``): weights, optimizer, LR scheduler, AMP scaler,
the global and per-transform RNG states, the epoch, the best metric, the metric history and the
MLflow run id. When validation improves the key metric, ``models/model.pt`` receives the model
alone, described by the run's :class:`~medseg.checkpoint.ModelSpec`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from medseg.checkpoint import ModelSpec, capture_rng_state, save_checkpoint
from medseg.engine.determinism import transform_rng_states
from medseg.engine.handlers.record import run_record
from medseg.transfer.teacher import student_of

__all__ = ["BEST", "LAST", "PREVIOUS", "CheckpointWriter", "best_so_far"]

logger = logging.getLogger("medseg.train")

LAST = "last.pt"
PREVIOUS = "last.prev.pt"
BEST = "model.pt"


def best_so_far(evaluator: Engine | None) -> tuple[float | None, int]:
    """The evaluator's best key metric and its epoch; ``(None, -1)`` before any score."""
    if evaluator is None:
        return None, -1
    best = getattr(evaluator.state, "best_metric", -1)
    return (None if best == -1 else float(best)), int(getattr(evaluator.state, "best_metric_epoch", -1))


class CheckpointWriter:
    """Write ``model.pt`` when validation improves, ``last.pt`` every epoch, and a usable ``model.pt`` at the end.

    Args:
        models_dir: the output bundle's ``models`` folder.
        network: the trained network (DDP unwrapped and a distillation run's student taken here).
        spec: the model description every checkpoint carries.
        optimizer, lr_scheduler: saved in ``last.pt``.
        evaluator: whose key metric decides the best model.
        train_transform: the training Compose, whose random transforms' states are saved.
        output_names: output channel names, kept in ``extra``.
    """

    def __init__(self, models_dir: str | os.PathLike[str], network: torch.nn.Module, spec: ModelSpec,
                 optimizer: torch.optim.Optimizer, lr_scheduler: Any = None, evaluator: Engine | None = None,
                 train_transform: Any = None, output_names: list[str] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.network = network
        self.spec = spec
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.train_transform = train_transform
        self.output_names = output_names

    @property
    def module(self) -> torch.nn.Module:
        """What the checkpoints hold: the network, DDP unwrapped; a distillation run's student alone."""
        return student_of(self.network)

    def _model(self, engine: Engine, best: float | None, selected: str) -> Path:
        return save_checkpoint(self.models_dir / BEST, self.module, spec=self.spec, epoch=engine.state.epoch,
                               best_metric=best, extra={"output_names": self.output_names, "selected": selected})

    def epoch_completed(self, engine: Engine) -> None:
        """Save the best model if validation improved in this epoch, then the last state."""
        best, best_epoch = best_so_far(self.evaluator)
        validated = self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch \
            and self.evaluator.state.iteration > 0
        scores = "  ".join(f"{k} {v:.4f}" for k, v in run_record(engine).last_metrics.items()
                           if k.startswith("val_")) if validated else ""
        if best is not None and best_epoch == engine.state.epoch:
            self._model(engine, best, "best")
            logger.info("validation %d  %s  new best -> %s", engine.state.epoch, scores, self.models_dir / BEST)
        elif validated:
            logger.info("validation %d  %s  (best %.4f at epoch %d)", engine.state.epoch, scores,
                        best if best is not None else float("nan"), best_epoch)
        self.save_last(engine)

    def completed(self, engine: Engine) -> None:
        """Leave a usable ``models/model.pt``: the best by validation, else the last weights, and say which.

        No score improved when validation never ran (``val_interval`` past ``max_epochs``) or
        every score was NaN; the run's weights are still the model the user trained.
        """
        record = run_record(engine)
        if (self.models_dir / BEST).is_file():
            record.model_selection = "best"
            return
        self._model(engine, best_so_far(self.evaluator)[0], "last")
        record.model_selection = "last"
        logger.warning("no validation score improved during the run: %s holds the last weights (epoch %d)",
                       self.models_dir / BEST, engine.state.epoch)

    def save_last(self, engine: Engine) -> Path:
        """Write the complete training state to ``models/last.pt`` (previous one kept as ``last.prev.pt``)."""
        best, best_epoch = best_so_far(self.evaluator)
        record = run_record(engine)
        scaler = getattr(engine, "scaler", None)
        extra = {
            "iteration": int(engine.state.iteration),
            "best_metric_epoch": best_epoch,
            "history": {k: [[int(e), float(v)] for e, v in vals] for k, vals in record.history.items()},
            "mlflow_run_id": record.mlflow_run_id,
            "transform_rng": transform_rng_states(self.train_transform) if self.train_transform is not None else [],
            "early_stop": dict(record.early_stop),
            "output_names": self.output_names,
        }
        last = self.models_dir / LAST
        if last.exists():
            os.replace(last, self.models_dir / PREVIOUS)
        return save_checkpoint(
            last, self.module, spec=self.spec, epoch=engine.state.epoch, best_metric=best, extra=extra,
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            scaler_state=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            rng_state=capture_rng_state(),
        )

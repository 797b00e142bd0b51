"""Exact resume: continue an interrupted run from its newest valid ``models/last.pt``.

With a resume folder, the newest valid of ``last.pt``/``last.prev.pt`` is loaded when the
trainer starts (an unreadable one is skipped with a warning, and temporary files left by a
write that was killed are removed), and training continues from the following epoch with
identical state: weights, optimizer, scheduler, AMP scaler, global and per-transform RNG
states, epoch and iteration, metric history, early-stopping counter, the best metric and the
MLflow run. ``tests/reliability/test_kill_resume.py`` kills real training processes mid-epoch,
mid-validation and mid-write (:mod:`medseg.utils.faults`) to prove it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from medseg.checkpoint import TrainingState, load_checkpoint, restore_rng_state
from medseg.engine.determinism import restore_transform_rng_states
from medseg.engine.handlers.checkpoints import LAST, PREVIOUS
from medseg.engine.handlers.record import run_record
from medseg.errors import MedsegError
from medseg.transfer.teacher import student_of
from medseg.utils.atomic import remove_partial_files

__all__ = ["ResumeLoader", "newest_valid_checkpoint"]

logger = logging.getLogger("medseg.train")


def newest_valid_checkpoint(models_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Load the newest readable training-state checkpoint in ``models_dir``.

    Raises:
        MedsegError: if neither ``last.pt`` nor ``last.prev.pt`` can be loaded.
    """
    models_dir = Path(models_dir)
    candidates = []
    errors = []
    for name in (LAST, PREVIOUS):
        path = models_dir / name
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
            state = TrainingState.from_checkpoint(ckpt, path)
        except MedsegError as err:
            errors.append(str(err))
            continue
        candidates.append((state.epoch, path, ckpt))
    if not candidates:
        detail = "; ".join(errors) if errors else "no last.pt or last.prev.pt"
        raise MedsegError(f"{models_dir}: no valid checkpoint to resume from ({detail})")
    _, path, ckpt = max(candidates, key=lambda c: c[0])
    for err in errors:
        logger.warning("skipped unusable checkpoint: %s", err)
    return path, ckpt


class ResumeLoader:
    """Restore a run's complete state from ``resume_dir`` when the trainer starts.

    Args:
        resume_dir: the interrupted run's output folder.
        network, optimizer, lr_scheduler, evaluator, train_transform: what the state goes back into.
    """

    def __init__(self, resume_dir: str | os.PathLike[str], network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any = None, evaluator: Engine | None = None, train_transform: Any = None) -> None:
        self.resume_dir = Path(resume_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.train_transform = train_transform

    def __call__(self, engine: Engine) -> None:
        """Restore everything, so the next epoch is the one after the checkpoint's."""
        # A kill during a write leaves its temporary file behind; the last good checkpoint is intact.
        for stale in remove_partial_files(self.resume_dir / "models"):
            logger.warning("removed %s, left by a write that was interrupted", stale)
        path, ckpt = newest_valid_checkpoint(self.resume_dir / "models")
        state = TrainingState.from_checkpoint(ckpt, path)
        student_of(self.network).load_state_dict(state.weights)
        self.optimizer.load_state_dict(state.optimizer)
        if self.lr_scheduler is not None and state.scheduler is not None:
            self.lr_scheduler.load_state_dict(state.scheduler)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        extra = state.extra
        if self.train_transform is not None and extra.get("transform_rng"):
            restore_transform_rng_states(self.train_transform, extra["transform_rng"])
        record = run_record(engine)
        if extra.get("early_stop"):
            record.early_stop.clear()
            record.early_stop.update(extra["early_stop"])
        restore_rng_state(state.rng)
        engine.state.epoch = state.epoch
        engine.state.iteration = int(extra.get("iteration", engine.state.epoch * (engine.state.epoch_length or 0)))
        record.history = {k: [(int(e), float(v)) for e, v in vals] for k, vals in extra.get("history", {}).items()}
        record.mlflow_run_id = extra.get("mlflow_run_id")
        record.resume_pending = False
        if self.evaluator is not None and state.best_metric is not None:
            self.evaluator.state.best_metric = float(state.best_metric)
            self.evaluator.state.best_metric_epoch = int(extra.get("best_metric_epoch", -1))
        logger.info("resumed from %s at epoch %d (best metric %s)", path, engine.state.epoch, state.best_metric)

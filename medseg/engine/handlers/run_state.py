"""Checkpoints and exact resume: the best model, the last state, and everything needed to continue.

Every epoch the complete training state is written atomically to ``models/last.pt``
(the previous one is kept as ``models/last.prev.pt``): weights, optimizer, LR scheduler,
AMP scaler, the global and per-transform RNG states, the epoch, the best metric, the
metric history and the MLflow run id. When validation improves the key metric,
``models/model.pt`` receives a self-describing checkpoint (weights, network name and
arguments, label convention, channels, preprocessing, epoch, metric, versions).

With ``resume_dir`` the newest valid of ``last.pt``/``last.prev.pt`` is loaded when the
trainer starts (an unreadable one is skipped with a warning, and temporary files left by a
write that was killed are removed), and training continues from the following epoch with
identical state. ``tests/reliability/test_kill_resume.py`` kills real training processes
mid-epoch, mid-validation and mid-write (:mod:`medseg.utils.faults`) to prove it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medseg.checkpoint import (
    ModelSpec,
    TrainingState,
    capture_rng_state,
    inference_settings,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medseg.engine.determinism import restore_transform_rng_states, transform_rng_states
from medseg.errors import MedsegError
from medseg.transfer.teacher import student_of
from medseg.utils.atomic import remove_partial_files
from medseg.utils.faults import attach_fault_points

logger = logging.getLogger("medseg.train")

LAST = "last.pt"
PREVIOUS = "last.prev.pt"
BEST = "model.pt"


def newest_valid_checkpoint(models_dir: str | Path) -> tuple[Path, dict[str, Any]]:
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
        except MedsegError as err:
            errors.append(str(err))
            continue
        try:
            state = TrainingState.from_checkpoint(ckpt, path)
        except MedsegError as err:
            errors.append(str(err))
            continue
        candidates.append((state.epoch, path, ckpt))
    if not candidates:
        detail = "; ".join(errors) if errors else "no last.pt or last.prev.pt"
        raise MedsegError(f"{models_dir}: no valid checkpoint to resume from ({detail})")
    epoch, path, ckpt = max(candidates, key=lambda c: c[0])
    for err in errors:
        logger.warning("skipped unusable checkpoint: %s", err)
    return path, ckpt


class RunStateHandler:
    """Save the best and last checkpoints; restore the full state on resume.

    Args:
        output_dir: the run's output bundle folder; checkpoints go to ``output_dir/models``.
        network: the (possibly DDP-wrapped) network being trained.
        network_spec: ``{"name": ..., "kwargs": {...}}`` as given to ``build_network``.
        optimizer: the optimizer.
        lr_scheduler: the LR scheduler, if any.
        evaluator: the validation evaluator whose key metric decides the best model.
        train_transform: the training Compose, whose random transforms' RNG states are saved.
        label_convention: the label convention name stored in checkpoints.
        channel_names: input channel names.
        output_names: output channel names (regions or classes).
        preprocessing: what inference must repeat, stored in the best checkpoint.
        roi_size: the sliding-window size inference uses (the bundle's ``roi_size``; a 2D
            bundle's ``roi_size`` is the network input ``(H, W)``). ``None`` records no
            inference settings.
        sw_batch_size: windows per forward pass (the bundle's ``sw_batch_size``; none in 2D).
        sw_overlap: window overlap (the bundle's ``sw_overlap``; none in 2D).
        resume_dir: an earlier run's output folder to continue from, or ``None``.
        is_main_process: under DDP only rank 0 writes checkpoints; every rank resumes.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        network: torch.nn.Module,
        network_spec: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        train_transform: Any = None,
        label_convention: str | None = None,
        channel_names: list[str] | None = None,
        output_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        resume_dir: str | os.PathLike[str] | None = None,
        is_main_process: bool = True,
        roi_size: Any = None,
        sw_batch_size: int | None = None,
        sw_overlap: float | None = None,
    ) -> None:
        self.is_main_process = is_main_process
        self.models_dir = Path(output_dir) / "models"
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.train_transform = train_transform
        self.label_convention = label_convention
        self.channel_names = list(channel_names) if channel_names else None
        self.output_names = list(output_names) if output_names else None
        self.preprocessing = preprocessing
        settings = inference_settings(roi_size, sw_batch_size, sw_overlap) if roi_size is not None else None
        # the one description of the trained model, written into every checkpoint and the output bundle
        network = {"name": network_spec["name"], "kwargs": dict(network_spec.get("kwargs", {}))}
        self.spec = ModelSpec.create(network, label_convention, self.channel_names, self.output_names,
                                     preprocessing, settings)
        self.resume_dir = Path(resume_dir) if resume_dir else None

    def attach(self, engine: Engine) -> None:
        """Register on the trainer; attach after the validation handler so metrics are fresh."""
        engine.state.history = getattr(engine.state, "history", None) or {}
        engine.state.mlflow_run_id = getattr(engine.state, "mlflow_run_id", None)
        engine.state.model_spec = self.spec  # for OutputBundleHandler's configs/inference.json
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        attach_fault_points(engine, self.evaluator)  # no-op unless MEDSEG_FAULT_AT is set (crash tests)

    @property
    def _module(self) -> torch.nn.Module:
        return student_of(self.network)  # DDP unwrapped; a distillation run's student alone

    def _scalars(self, source: dict[str, Any]) -> dict[str, float]:
        """Metrics as floats; a per-channel tensor becomes one entry per output name."""
        out: dict[str, float] = {}
        for key, value in source.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                names = self.output_names or [str(i) for i in range(value.numel())]
                for name, v in zip(names, value.flatten().tolist()):
                    out[f"{key}_{name}"] = float(v)
            elif isinstance(value, (int, float, torch.Tensor)):
                out[key] = float(value)
        return out

    def _record(self, engine: Engine) -> dict[str, float]:
        metrics = self._scalars(engine.state.metrics)
        # Validation runs only every val_interval epochs: record its metrics only when it ran.
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch \
                and self.evaluator.state.iteration > 0:
            metrics.update(self._scalars(self.evaluator.state.metrics))
        for key, value in metrics.items():
            engine.state.history.setdefault(key, []).append((engine.state.epoch, value))
        engine.state.last_metrics = metrics
        return metrics

    def _best(self) -> tuple[float | None, int]:
        if self.evaluator is None:
            return None, -1
        best = getattr(self.evaluator.state, "best_metric", -1)
        return (None if best == -1 else float(best)), int(getattr(self.evaluator.state, "best_metric_epoch", -1))

    def epoch_completed(self, engine: Engine) -> None:
        """Record metrics, save the best model if validation improved, and save the last state."""
        self._record(engine)
        if not self.is_main_process:
            return
        best, best_epoch = self._best()
        if best is not None and best_epoch == engine.state.epoch:
            save_checkpoint(self.models_dir / BEST, self._module, spec=self.spec, epoch=engine.state.epoch,
                            best_metric=best, extra={"output_names": self.output_names, "selected": "best"})
            logger.info("new best %.4f at epoch %d -> %s", best, best_epoch, self.models_dir / BEST)
        self.save_last(engine)

    def completed(self, engine: Engine) -> None:
        """Leave a usable ``models/model.pt``: the best by validation, else the last weights, and say which.

        No score improved when validation never ran (``val_interval`` past ``max_epochs``) or
        every score was NaN; the run's weights are still the model the user trained.
        """
        if not self.is_main_process:
            return
        if (self.models_dir / BEST).is_file():
            engine.state.model_selection = "best"
            return
        best, _ = self._best()
        save_checkpoint(self.models_dir / BEST, self._module, spec=self.spec, epoch=engine.state.epoch,
                        best_metric=best, extra={"output_names": self.output_names, "selected": "last"})
        engine.state.model_selection = "last"
        logger.warning("no validation score improved during the run: %s holds the last weights (epoch %d)",
                       self.models_dir / BEST, engine.state.epoch)

    def save_last(self, engine: Engine) -> Path:
        """Write the complete training state to ``models/last.pt`` (previous one kept as ``last.prev.pt``)."""
        best, best_epoch = self._best()
        scaler = getattr(engine, "scaler", None)
        extra = {
            "iteration": int(engine.state.iteration),
            "best_metric_epoch": best_epoch,
            "history": {k: [[int(e), float(v)] for e, v in vals] for k, vals in engine.state.history.items()},
            "mlflow_run_id": getattr(engine.state, "mlflow_run_id", None),
            "transform_rng": transform_rng_states(self.train_transform) if self.train_transform is not None else [],
            "early_stop": dict(getattr(engine.state, "early_stop", None) or {}),
            "output_names": self.output_names,
        }
        last = self.models_dir / LAST
        if last.exists():
            os.replace(last, self.models_dir / PREVIOUS)
        return save_checkpoint(
            last, self._module, spec=self.spec, epoch=engine.state.epoch, best_metric=best, extra=extra, optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            scaler_state=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            rng_state=capture_rng_state(),
        )

    def resume(self, engine: Engine) -> None:
        """Restore everything from ``resume_dir`` (no-op for a fresh run)."""
        if self.resume_dir is None:
            return
        # A kill during a write leaves its temporary file behind; the last good checkpoint is intact.
        for stale in remove_partial_files(self.resume_dir / "models"):
            logger.warning("removed %s, left by a write that was interrupted", stale)
        path, ckpt = newest_valid_checkpoint(self.resume_dir / "models")
        state = TrainingState.from_checkpoint(ckpt, path)
        self._module.load_state_dict(state.weights)
        self.optimizer.load_state_dict(state.optimizer)
        if self.lr_scheduler is not None and state.scheduler is not None:
            self.lr_scheduler.load_state_dict(state.scheduler)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        extra = state.extra
        if self.train_transform is not None and extra.get("transform_rng"):
            restore_transform_rng_states(self.train_transform, extra["transform_rng"])
        if extra.get("early_stop"):
            engine.state.early_stop = dict(extra["early_stop"])
        restore_rng_state(state.rng)
        engine.state.epoch = state.epoch
        engine.state.iteration = int(extra.get("iteration", engine.state.epoch * (engine.state.epoch_length or 0)))
        engine.state.history = {k: [(int(e), float(v)) for e, v in vals] for k, vals in extra.get("history", {}).items()}
        engine.state.mlflow_run_id = extra.get("mlflow_run_id")
        if self.evaluator is not None and state.best_metric is not None:
            self.evaluator.state.best_metric = float(state.best_metric)
            self.evaluator.state.best_metric_epoch = int(extra.get("best_metric_epoch", -1))
        logger.info("resumed from %s at epoch %d (best metric %s)", path, engine.state.epoch, state.best_metric)

"""The training run's state on disk: one handler that bundles wire, three jobs behind it.

:class:`RunStateHandler` is what every bundle's ``train.json`` lists. It builds the run's
:class:`~medseg.checkpoint.ModelSpec` and attaches, in this order:

* :class:`~medseg.engine.handlers.resume.ResumeLoader` (``STARTED``, with ``resume_dir``):
  restores the complete state of an interrupted run;
* :class:`~medseg.engine.handlers.history.MetricHistory` (``EPOCH_COMPLETED``): the epoch's metrics
  into the run record;
* :class:`~medseg.engine.handlers.checkpoints.CheckpointWriter` (``EPOCH_COMPLETED``, ``COMPLETED``):
  ``models/model.pt`` and ``models/last.pt``, on rank 0 only.

What they share with the other handlers lives in :class:`~medseg.engine.handlers.record.RunRecord`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medseg.checkpoint import ModelSpec, inference_settings
from medseg.engine.handlers.checkpoints import BEST, LAST, PREVIOUS, CheckpointWriter
from medseg.engine.handlers.history import MetricHistory
from medseg.engine.handlers.record import run_record
from medseg.engine.handlers.resume import ResumeLoader, newest_valid_checkpoint
from medseg.utils.faults import attach_fault_points

__all__ = ["BEST", "LAST", "PREVIOUS", "RunStateHandler", "newest_valid_checkpoint"]


class RunStateHandler:
    """Save the best and last checkpoints, record the metrics, and restore the full state on resume.

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
        described = {"name": network_spec["name"], "kwargs": dict(network_spec.get("kwargs", {}))}
        self.spec = ModelSpec.create(described, label_convention, self.channel_names, self.output_names,
                                     preprocessing, settings)
        self.resume_dir = Path(resume_dir) if resume_dir else None
        self.history = MetricHistory(evaluator, self.output_names)
        self.writer = CheckpointWriter(self.models_dir, self.network, self.spec, optimizer, lr_scheduler, evaluator,
                                       train_transform, self.output_names)
        self.resumer = (ResumeLoader(self.resume_dir, self.network, optimizer, lr_scheduler, evaluator, train_transform)
                        if self.resume_dir is not None else None)

    def attach(self, engine: Engine) -> None:
        """Register the three jobs on the trainer; attach after the validation handler so metrics are fresh."""
        record = run_record(engine)
        record.model_spec = self.spec  # for OutputBundleHandler's configs/inference.json
        if self.resumer is not None:
            record.resume_pending = True
            engine.add_event_handler(Events.STARTED, self.resumer)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        attach_fault_points(engine, self.evaluator)  # no-op unless MEDSEG_FAULT_AT is set (crash tests)

    def epoch_completed(self, engine: Engine) -> None:
        """Record the epoch's metrics; on rank 0 save the best model if validation improved, and the last state."""
        self.history(engine)
        if self.is_main_process:
            self.writer.epoch_completed(engine)

    def completed(self, engine: Engine) -> None:
        """On rank 0, leave a usable ``models/model.pt`` (see :meth:`CheckpointWriter.completed`)."""
        if self.is_main_process:
            self.writer.completed(engine)

    def save_last(self, engine: Engine) -> Path:
        """Write ``models/last.pt`` now (see :meth:`CheckpointWriter.save_last`)."""
        return self.writer.save_last(engine)

    def resume(self, engine: Engine) -> None:
        """Restore the state of ``resume_dir`` now (no-op for a fresh run)."""
        if self.resumer is not None:
            self.resumer(engine)

"""MLflow tracking of a training run, as one ignite handler over :class:`medseg.tracking.TrackingSession`.

Started after the resume handler (so a resumed run continues its MLflow run) and after
the output-bundle handler (so the resolved config exists): it logs the config,
provenance and dataset manifest at start, the metrics every epoch, and at the end the
curves and overlay PNGs, the best checkpoint and the output bundle; it registers the
model when asked, and marks the run FAILED with the reason when training raises.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

import medseg
from medseg.engine.handlers.record import run_record
from medseg.errors import MedsegError
from medseg.tracking import REPRODUCTION_OF_TAG, NullTracker, open_tracking
from medseg.tracking.plots import plot_overlays, plot_training_curves

logger = logging.getLogger("medseg.train")


def _overlay_slices(outputs: list[dict[str, Any]], channel: int) -> tuple[list, list, list, list]:
    """Pick, per validation case, the axial slice with the largest labelled area of ``channel``."""
    images, labels, preds, titles = [], [], [], []
    for i, item in enumerate(outputs[:4]):
        if not isinstance(item, dict) or not all(k in item for k in ("image", "label", "pred")):
            continue
        image = np.asarray(item["image"].detach().cpu())
        label = np.asarray(item["label"].detach().cpu())
        pred = np.asarray(item["pred"].detach().cpu())
        lab = label[channel] if label.shape[0] > 1 else (label[0] > 0)
        prd = pred[channel] if pred.shape[0] > 1 else (pred[0] > 0)
        if lab.ndim == 3:
            z = int(np.argmax(lab.reshape(-1, lab.shape[-1]).sum(0)))
            images.append(image[-1, ..., z])
            labels.append(lab[..., z].astype(np.uint8))
            preds.append(prd[..., z].astype(np.uint8))
        else:
            images.append(image[-1])
            labels.append(lab.astype(np.uint8))
            preds.append(prd.astype(np.uint8))
        titles.append(f"validation case {i}")
    return images, labels, preds, titles


class TrackingHandler:
    """Log a training run to MLflow.

    Args:
        output_dir: the run's output bundle folder.
        dataset_dir: the dataset folder (its manifest is logged).
        seed: the run's seed.
        device: the training device.
        enabled: ``False`` uses a :class:`NullTracker` (an untracked run).
        tracking_uri: MLflow URI; ``None`` for the local sqlite store under ``runs_dir``.
        experiment_name: the MLflow experiment.
        run_name: the run's name.
        fallback: ``"local"`` to fall back to the local store if the server is unreachable.
        register_name: register the best checkpoint in the Model Registry under this name.
        reproduction_of: the original run id when this run reproduces another.
        evaluator: the validation evaluator (for overlays).
        overlay_channel: output channel drawn in the overlays (WT for BraTS regions).
        runs_dir: folder of the local store.
        is_main_process: only rank 0 tracks under DDP.
    """

    def __init__(
        self,
        output_dir: str | Path,
        dataset_dir: str | Path,
        seed: int,
        device: Any = "cpu",
        enabled: bool = True,
        tracking_uri: str | None = None,
        experiment_name: str = "medseg",
        run_name: str | None = None,
        fallback: str | None = None,
        register_name: str | None = None,
        reproduction_of: str | None = None,
        evaluator: Engine | None = None,
        overlay_channel: int = 1,
        runs_dir: str | Path = "runs",
        is_main_process: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.dataset_dir = Path(dataset_dir)
        self.seed = seed
        self.device = device
        self.run_name = run_name
        self.register_name = register_name
        self.reproduction_of = reproduction_of
        self.evaluator = evaluator
        self.overlay_channel = overlay_channel
        # Connect now, while the config is being built: a wrong URI fails before any caching or training.
        if enabled and is_main_process:
            self.session: Any = open_tracking(tracking_uri, experiment_name, fallback=fallback, runs_dir=runs_dir)
        else:
            self.session = NullTracker()

    def attach(self, engine: Engine) -> None:
        """Register on the trainer (after the resume and output-bundle handlers)."""
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once started."""
        return getattr(self.session, "run_id", None)

    def started(self, engine: Engine) -> None:
        """Start (or reopen, on resume) the run; log config, provenance and manifest."""
        tags = {REPRODUCTION_OF_TAG: self.reproduction_of} if self.reproduction_of else {}
        record = run_record(engine)
        if record.resume_pending:
            raise MedsegError("train#handlers: TrackingHandler starts before RunStateHandler has resumed the run, so "
                              "it would open a new MLflow run; list RunStateHandler before TrackingHandler")
        run_id = self.session.start_run(self.run_name, tags=tags, resume_run_id=record.mlflow_run_id)
        record.mlflow_run_id = run_id
        config_path = self.output_dir / "configs" / "train.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.session.log_config(config)
        self.session.log_provenance(Path(medseg.__file__).parent, self.seed, self.device, self.dataset_dir)

    def epoch_completed(self, engine: Engine) -> None:
        """Log the epoch's metrics (loss, Dice per region, lr, samples/s)."""
        metrics = run_record(engine).last_metrics
        if metrics:
            self.session.log_metrics(metrics, step=engine.state.epoch)

    def completed(self, engine: Engine) -> None:
        """Log figures, the best checkpoint and the bundle; register; finish the run."""
        figures = self.output_dir / "figures"
        history = run_record(engine).history
        if history:
            self.session.log_figure_png(plot_training_curves(history, figures / "training_curves.png"))
        if self.evaluator is not None and isinstance(self.evaluator.state.output, list):
            images, labels, preds, titles = _overlay_slices(self.evaluator.state.output, self.overlay_channel)
            if images:
                self.session.log_figure_png(plot_overlays(images, labels, preds, figures / "validation_overlays.png",
                                                          titles))
        best = self.output_dir / "models" / "model.pt"
        if best.is_file():
            self.session.log_artifact(best, "checkpoints")
        self.session.log_artifact(self.output_dir, "bundle")
        if self.register_name and best.is_file():
            self.session.register_model(self.register_name, "checkpoints/model.pt")
        self.session.end_run("FINISHED")

    def failed(self, engine: Engine, error: Exception) -> None:
        """Mark the run FAILED with the reason, then let the error propagate."""
        self.session.end_run("FAILED", reason=f"{type(error).__name__}: {error}")
        raise error

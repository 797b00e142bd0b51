"""MLflow tracking of a training run, as one ignite handler over :class:`medseg.tracking.TrackingSession`.

Started after the resume handler (so a resumed run continues its MLflow run) and after
the output-bundle handler (so the resolved config exists): it logs the config,
provenance and dataset manifest at start, the metrics every epoch, and at the end the
curves and overlay PNGs, the best checkpoint and the output bundle; it registers the
model when asked, and marks the run FAILED with the reason when training raises, or KILLED when
a signal stopped it (:mod:`medseg.engine.handlers.interrupt`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

import medseg
from medseg.engine.handlers.interrupt import interruption_reason
from medseg.engine.handlers.overlays import ValidationSlices
from medseg.engine.handlers.record import run_record
from medseg.errors import MedsegError
from medseg.tracking import REPRODUCTION_OF_TAG, NullTracker, open_tracking
from medseg.tracking.plots import plot_region_overlays, plot_training_curves

logger = logging.getLogger("medseg.train")

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: its UI nests the run under its parent


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
        parent_run_id: the MLflow run this one is a child of (``medseg cv``: each fold is a
            child of the cross-validation's run); tagged ``mlflow.parentRunId``.
        evaluator: the validation evaluator: the overlay figure draws the first
            ``overlay_cases`` cases of its last validation, every region in its colour.
        overlay_channel: accepted and ignored, for output bundles written before every output
            region was drawn (their recorded ``train.json`` still passes it).
        overlay_cases: how many validation cases the overlay figure shows.
        runs_dir: folder of the local store.
        is_main_process: only rank 0 tracks under DDP.
        log_training_state: also upload ``models/last.pt`` (optimizer, scheduler and RNG states,
            to resume elsewhere) as ``training_state/last.pt``; off by default (it is about
            twice the model, and the output folder keeps it).
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
        parent_run_id: str | None = None,
        evaluator: Engine | None = None,
        overlay_channel: int = 1,
        overlay_cases: int = 4,
        runs_dir: str | Path = "runs",
        is_main_process: bool = True,
        log_training_state: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.log_training_state = bool(log_training_state)
        self.dataset_dir = Path(dataset_dir)
        self.seed = seed
        self.device = device
        self.run_name = run_name
        self.register_name = register_name
        self.reproduction_of = reproduction_of
        self.parent_run_id = parent_run_id
        self.evaluator = evaluator
        self.slices = ValidationSlices(max_cases=overlay_cases)
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
        if self.evaluator is not None:
            self.slices.attach(self.evaluator)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once started."""
        return getattr(self.session, "run_id", None)

    def started(self, engine: Engine) -> None:
        """Start (or reopen, on resume) the run; log config, provenance and manifest."""
        tags = {REPRODUCTION_OF_TAG: self.reproduction_of} if self.reproduction_of else {}
        if self.parent_run_id:
            tags[PARENT_RUN_TAG] = self.parent_run_id
        record = run_record(engine)
        if record.resume_pending:
            raise MedsegError("train#handlers: TrackingHandler starts before RunStateHandler has resumed the run, so "
                              "it would open a new MLflow run; list RunStateHandler before TrackingHandler")
        resumed = record.mlflow_run_id
        run_id = self.session.start_run(self.run_name, tags=tags, resume_run_id=resumed)
        record.mlflow_run_id = run_id
        if run_id:
            from medseg.tracking.connect import where_to_look

            look = where_to_look(self.session.uri, getattr(self.session, "experiment_id", None), run_id)
            logger.info("MLflow run %s (%s) in experiment %r at %s; see it with: %s", run_id,
                        "continued" if resumed else "new", getattr(self.session, "experiment", ""), self.session.uri,
                        look)
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
        if self.slices.cases:
            self.session.log_figure_png(self._overlays(engine, figures / "validation_overlays.png"))
        best = self.output_dir / "models" / "model.pt"
        if best.is_file():  # the one copy of the weights: runs:/RUN/checkpoints/model.pt
            self.session.log_artifact(best, "checkpoints")
        # The bundle without models/ (the same weights again, and last.pt: the optimizer state, about
        # twice the model); runs:/RUN/bundle still serves, with the weights from checkpoints/.
        self.session.log_artifact(self.output_dir, "bundle", exclude=("models",))
        last = self.output_dir / "models" / "last.pt"
        if self.log_training_state and last.is_file():
            self.session.log_artifact(last, "training_state")
        if self.register_name and best.is_file():
            self.session.register_model(self.register_name, "checkpoints/model.pt")
        self.session.end_run("FINISHED")

    def _overlays(self, engine: Engine, out_png: Path) -> Path:
        """The last validation's first cases, every output region in its own colour."""
        cases = self.slices.cases
        spec = run_record(engine).model_spec
        names = list(getattr(spec, "output_names", None) or [])
        first = 0
        if (getattr(spec, "preprocessing", None) or {}).get("task") == "multiclass" and cases[0].truth.shape[0] > 1:
            first, names = 1, names[1:]  # one-hot classes: channel 0 is the background
        count = cases[0].truth.shape[0] - first
        if len(names) != count:
            names = [f"output {i}" for i in range(count)]
        titles = [f"{c.case_id} {c.where}".strip() for c in cases]
        return plot_region_overlays([c.image for c in cases], [c.truth[first:] for c in cases],
                                    [c.pred[first:] for c in cases], names, out_png, titles)

    def failed(self, engine: Engine, error: BaseException) -> None:
        """Mark the run KILLED (stopped by a signal) or FAILED, with the reason, then let the error propagate."""
        stopped_by = interruption_reason(error)
        if stopped_by is not None:
            self.session.end_run("KILLED", reason=f"stopped by {stopped_by}; resume with --resume {self.output_dir}")
        else:
            self.session.end_run("FAILED", reason=f"{type(error).__name__}: {error}")
        raise error

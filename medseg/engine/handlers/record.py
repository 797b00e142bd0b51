"""What the training handlers share, declared in one place: :class:`RunRecord` on the trainer's state.

Ignite lets handlers hang anything on ``engine.state``; medseg's handlers share exactly these
fields instead, through :func:`run_record`, which creates the record on first use, so the order
in which ``train.json`` lists the handlers no longer decides whether a field exists.

| field | written by | read by |
|---|---|---|
| ``history``, ``last_metrics`` | :class:`~medseg.engine.handlers.history.MetricHistory` (each epoch), :class:`~medseg.engine.handlers.resume.ResumeLoader` (on resume) | checkpoints, tracking, the output bundle's metadata |
| ``mlflow_run_id`` | :class:`~medseg.engine.handlers.tracking.TrackingHandler`, ``ResumeLoader`` | checkpoints (so a resumed run continues it), metadata |
| ``model_spec`` | :class:`~medseg.engine.handlers.run_state.RunStateHandler` (at attach) | the output bundle's ``inference.json`` |
| ``model_selection`` | :class:`~medseg.engine.handlers.checkpoints.CheckpointWriter` (at the end) | metadata |
| ``early_stop`` | :class:`~medseg.engine.handlers.early_stop.EarlyStopping` | checkpoints, ``ResumeLoader`` |
| ``resume_pending`` | ``RunStateHandler`` (attach), ``ResumeLoader`` (done) | ``TrackingHandler``, which must not start before the resume restored the run id |

One order still matters, because two handlers act on the same event: the resume (at
``STARTED``) must come before tracking starts its run. ``resume_pending`` turns a wrong order in
a config into a clear error instead of a silently new MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "run_record"]


@dataclass
class RunRecord:
    """The training run's shared state (see the module docstring for who writes and reads each field).

    Attributes:
        history: metric name -> ``[(epoch, value), ...]``.
        last_metrics: the latest epoch's metrics, as floats.
        mlflow_run_id: the MLflow run, once tracking started (or restored from a checkpoint).
        model_spec: the :class:`~medseg.checkpoint.ModelSpec` every checkpoint is written with.
        model_selection: what ``models/model.pt`` holds at the end: ``"best"`` or ``"last"``.
        early_stop: the early-stopping counter and best score, kept across a resume.
        resume_pending: a resume is configured and has not run yet.
    """

    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    model_spec: Any = None
    model_selection: str | None = None
    early_stop: dict[str, Any] = field(default_factory=dict)
    resume_pending: bool = False


def run_record(engine: Any) -> RunRecord:
    """The :class:`RunRecord` of ``engine`` (created empty on first use)."""
    record = getattr(engine.state, "run_record", None)
    if not isinstance(record, RunRecord):
        record = RunRecord()
        engine.state.run_record = record
    return record

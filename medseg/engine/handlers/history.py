"""Per-epoch metrics of a training run: the trainer's and, when validation ran, the evaluator's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine

from medseg.engine.handlers.record import run_record

__all__ = ["MetricHistory", "scalar_metrics"]


def scalar_metrics(source: dict[str, Any], output_names: Sequence[str] | None = None) -> dict[str, float]:
    """Metrics as floats; a per-channel tensor becomes one entry per output name (``val_dice_WT``)."""
    out: dict[str, float] = {}
    for key, value in source.items():
        if isinstance(value, torch.Tensor) and value.numel() > 1:
            names = list(output_names) if output_names else [str(i) for i in range(value.numel())]
            for name, v in zip(names, value.flatten().tolist()):
                out[f"{key}_{name}"] = float(v)
        elif isinstance(value, (int, float, torch.Tensor)):
            out[key] = float(value)
    return out


class MetricHistory:
    """Record each epoch's metrics into the run record's ``history`` and ``last_metrics``.

    Args:
        evaluator: the validation evaluator; its metrics count only in epochs where it ran
            (``val_interval``).
        output_names: names of the output channels, for per-channel metrics.
    """

    def __init__(self, evaluator: Engine | None = None, output_names: Sequence[str] | None = None) -> None:
        self.evaluator = evaluator
        self.output_names = list(output_names) if output_names else None

    def __call__(self, engine: Engine) -> dict[str, float]:
        """Record the epoch just completed; returns its metrics."""
        metrics = scalar_metrics(engine.state.metrics, self.output_names)
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch \
                and self.evaluator.state.iteration > 0:
            metrics.update(scalar_metrics(self.evaluator.state.metrics, self.output_names))
        record = run_record(engine)
        for key, value in metrics.items():
            record.history.setdefault(key, []).append((engine.state.epoch, value))
        record.last_metrics = metrics
        return metrics

"""Keep a few validation cases' slices, every region of each, for the run's overlay figure.

The evaluator's ``state.output`` holds only its last batch, so the figure showed one case and
one region. :class:`ValidationSlices` watches every validation iteration instead and keeps, for
the first ``max_cases`` cases of the newest validation, one 2D slice each: the image (its last
channel: FLAIR for BraTS), and every output's truth and prediction masks (the axial slice with
the most truth of any output, for 3D). Only these small slices are kept, never volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

__all__ = ["CaseSlice", "ValidationSlices"]


@dataclass
class CaseSlice:
    """One validation case, as drawn: ``image`` ``(H, W)``; ``truth``/``pred`` ``(outputs, H, W)`` booleans."""

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    where: str = ""


def _array(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)


def _masks(value: np.ndarray) -> np.ndarray:
    """``(C, *S)`` masks of each output: one channel of a 1-channel map is ``> 0``."""
    return value.astype(bool) if value.shape[0] > 1 else (value > 0)


@dataclass
class ValidationSlices:
    """Collect :class:`CaseSlice` s from the evaluator's iterations (reset when a validation starts).

    Args:
        max_cases: how many cases to keep.
    """

    max_cases: int = 4
    cases: list[CaseSlice] = field(default_factory=list)

    def attach(self, evaluator: Engine) -> None:
        """Reset at each validation's start; collect after each of its iterations."""
        evaluator.add_event_handler(Events.EPOCH_STARTED, self.reset)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the previous validation's cases."""
        self.cases = []

    def collect(self, engine: Engine) -> None:
        """Keep the slices of the batch's cases until ``max_cases`` are kept."""
        outputs, batch = engine.state.output, engine.state.batch
        if not isinstance(outputs, list):
            return
        batch = batch if isinstance(batch, list) else [{}] * len(outputs)
        for item, source in zip(outputs, batch):
            if len(self.cases) >= self.max_cases:
                return
            if isinstance(item, dict) and all(k in item for k in ("image", "label", "pred")):
                case_id = source.get("case_id") if isinstance(source, dict) else None
                self.cases.append(self._slice(item, str(case_id or f"case {len(self.cases) + 1}")))

    def _slice(self, item: dict[str, Any], case_id: str) -> CaseSlice:
        image, truth, pred = _array(item["image"]), _masks(_array(item["label"])), _masks(_array(item["pred"]))
        if truth.ndim == 4:  # (C, X, Y, Z): the axial slice with the most truth of any output
            z = int(np.argmax(truth.any(axis=0).reshape(-1, truth.shape[-1]).sum(0)))
            return CaseSlice(case_id, image[-1, ..., z], truth[..., z], pred[..., z], where=f"z={z}")
        return CaseSlice(case_id, image.mean(axis=0), truth, pred)  # 2D: the RGB channels' mean

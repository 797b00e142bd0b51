"""Evaluation figures: a box plot of the per-case metrics and a worst/best-case montage.

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``, as in
:mod:`medseg.tracking.plots`. Its ``plot_overlays`` is not reused because it takes
grey-scale slices only, and the ISIC montage shows the RGB dermoscopy image; the contour
colours are the same (truth solid green, prediction dashed red).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InvalidValueError
from medseg.utils.figures import new_figure as _new_figure
from medseg.utils.figures import save_png as _save


@dataclass(frozen=True)
class MontagePanel:
    """One panel of the montage.

    Attributes:
        image: ``(H, W)`` grey-scale or ``(H, W, 3)`` RGB image.
        truth: ``(H, W)`` integer label map.
        pred: ``(H, W)`` integer label map.
        title: the panel title (case id and score).
    """

    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    title: str


def plot_boxplots(
    panels: Mapping[str, Mapping[str, Sequence[float]]], out_png: str | os.PathLike[str], title: str = ""
) -> Path:
    """Box plots of per-case metrics, one panel per group.

    Args:
        panels: panel title -> {metric name -> the value of every evaluated case}, e.g.
            ``{"Dice": {"dice_WT": [...], ...}, "HD95 (mm)": {...}}``. Non-finite values are left out.
        out_png: the file to write.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no panel has any value.
    """
    kept = {name: {m: [float(v) for v in vals if math.isfinite(v)] for m, vals in metrics.items()}
            for name, metrics in panels.items()}
    kept = {name: {m: v for m, v in metrics.items() if v} for name, metrics in kept.items()}
    kept = {name: metrics for name, metrics in kept.items() if metrics}
    if not kept:
        raise InvalidValueError(f"plot_boxplots: no finite values to plot for {out_png}")
    fig = _new_figure(max(4.0, 1.1 * sum(len(m) for m in kept.values()) + 1.5 * len(kept)), 4.0)
    for i, (name, metrics) in enumerate(kept.items()):
        ax = fig.add_subplot(1, len(kept), i + 1)
        ax.boxplot(list(metrics.values()), showmeans=True)
        ax.set_xticks(range(1, len(metrics) + 1), list(metrics), rotation=30, ha="right", fontsize="small")
        ax.set_title(name, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    return _save(fig, out_png)


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    image = np.asarray(image, dtype=np.float64)
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    scaled = np.clip((np.nan_to_num(image, nan=low) - low) / (high - low), 0.0, 1.0)
    return scaled, (None if image.ndim == 3 else "gray")


def _contours(ax: Any, labels: np.ndarray, color: str, style: str) -> None:
    for value in np.unique(labels):
        region = (labels == value).astype(float)
        if value != 0 and 0 < region.sum() < region.size:  # a constant array has no contour
            ax.contour(region, levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)


def plot_montage(
    rows: Mapping[str, Sequence[MontagePanel]], out_png: str | os.PathLike[str], title: str = ""
) -> Path:
    """Contours of truth (solid green) and prediction (dashed red) over images, one row per group.

    Args:
        rows: row label (``"worst"``, ``"best"``) -> its panels; empty rows are skipped.
        out_png: the file to write.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no panels, or a panel whose image, truth and prediction sizes differ.
    """
    rows = {label: list(panels) for label, panels in rows.items() if panels}
    if not rows:
        raise InvalidValueError(f"plot_montage: no panels to draw for {out_png}")
    cols = max(len(p) for p in rows.values())
    fig = _new_figure(3.0 * cols, 3.2 * len(rows) + 0.4)
    for r, (label, panels) in enumerate(rows.items()):
        for c, panel in enumerate(panels):
            if panel.image.shape[:2] != panel.truth.shape or panel.truth.shape != panel.pred.shape:
                raise InvalidValueError(f"plot_montage panel {panel.title!r}: image {panel.image.shape}, truth "
                                 f"{panel.truth.shape} and prediction {panel.pred.shape} differ in size")
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            image, cmap = _display(panel.image)
            ax.imshow(image, cmap=cmap, interpolation="nearest")
            _contours(ax, panel.truth, "lime", "solid")
            _contours(ax, panel.pred, "red", "dashed")
            ax.set_title(f"{label}: {panel.title}", fontsize="x-small")
            ax.set_axis_off()
    legend = "truth: solid green, prediction: dashed red"
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize="small")
    return _save(fig, out_png)

"""Evaluation figures: a box plot of the per-case metrics, a worst/best-case montage, and a
scatter of each reference lesion's volume against its Dice (lesion-wise evaluations).

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``, as in
:mod:`medseg.tracking.plots`, with the same colour per region
(:data:`medseg.utils.figures.REGION_COLOURS`): truth solid, prediction dashed, a legend naming
the regions. The montage also shows the RGB dermoscopy images of ISIC.
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
from medseg.utils.figures import REGION_COLOURS
from medseg.utils.figures import new_figure as _new_figure
from medseg.utils.figures import save_png as _save


@dataclass(frozen=True)
class MontagePanel:
    """One panel of the montage.

    Attributes:
        image: ``(H, W)`` grey-scale or ``(H, W, 3)`` RGB image.
        truth: ``(R, H, W)`` boolean masks, one per region of the montage's ``region_names``.
        pred: ``(R, H, W)`` boolean masks.
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
        parts = ax.boxplot(list(metrics.values()), showmeans=True)
        ax.set_xticks(range(1, len(metrics) + 1), list(metrics), rotation=30, ha="right", fontsize="small")
        ax.set_title(name, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:  # what the marks are: the box is the middle half, whiskers 1.5 IQR, circles beyond
            ax.legend([parts["medians"][0], parts["means"][0]], ["median", "mean"], fontsize="x-small",
                      loc="best")
    if title:
        fig.suptitle(title, fontsize="medium")
    return _save(fig, out_png)


@dataclass(frozen=True)
class LesionPoints:
    """The reference lesions of one region, for :func:`plot_lesion_scatter`.

    Attributes:
        volumes: each lesion's volume in mm^3.
        dice: each lesion's Dice.
        counted: whether each lesion enters the lesion-wise scores.
    """

    volumes: Sequence[float]
    dice: Sequence[float]
    counted: Sequence[bool]


def plot_lesion_scatter(
    regions: Mapping[str, LesionPoints], out_png: str | os.PathLike[str], threshold: float | None = None,
    title: str = "",
) -> Path:
    """Each reference lesion's volume (log scale) against its Dice, one panel per region.

    Counted lesions are filled dots; lesions under the volume threshold (left out of the
    scores) are hollow, left of a dashed line at ``threshold``.

    Args:
        regions: region name -> its lesions over every case; regions without lesions are skipped.
        out_png: the file to write.
        threshold: the volume threshold in mm^3, or ``None`` for none.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no region has a lesion with a positive, finite volume.
    """
    kept = {}
    for name, points in regions.items():
        rows = [(float(v), float(d), bool(c)) for v, d, c in zip(points.volumes, points.dice, points.counted)
                if math.isfinite(v) and v > 0 and math.isfinite(d)]
        if rows:
            kept[name] = rows
    if not kept:
        raise InvalidValueError(f"plot_lesion_scatter: no lesion to plot for {out_png}")
    from matplotlib.ticker import NullFormatter

    fig = _new_figure(max(4.0, 3.6 * len(kept)), 3.8)
    for i, (name, rows) in enumerate(kept.items()):
        ax = fig.add_subplot(1, len(kept), i + 1)
        for counted, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "none",
                                                                         "edgecolors": "tab:gray"})):
            chosen = [(v, d) for v, d, c in rows if c == counted]
            if chosen:
                volumes, dice = zip(*chosen)
                ax.scatter(volumes, dice, s=14, label="counted" if counted else "under the threshold", **style)
        if threshold:
            ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g} mm³")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^2, 3x10^2 ... overlap on narrow panels
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("lesion volume (mm³)")
        ax.set_ylabel("lesion Dice")
        ax.set_title(f"{name}: {len(rows)} lesions", fontsize="medium")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="x-small", loc="lower right")
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


def _contour(ax: Any, mask: np.ndarray, color: str, style: str) -> None:
    region = np.asarray(mask, dtype=float)
    if 0 < region.sum() < region.size:  # a constant array has no contour
        ax.contour(region, levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)


def plot_montage(
    rows: Mapping[str, Sequence[MontagePanel]], out_png: str | os.PathLike[str], region_names: Sequence[str],
    title: str = "",
) -> Path:
    """Each region's truth (solid) and prediction (dashed) contours over images, a colour per region.

    Args:
        rows: row label (``"worst"``, ``"best"``, ``"all cases"``) -> its panels; empty rows are skipped.
        out_png: the file to write.
        region_names: the regions the panels' masks hold, in order (``("TC", "WT", "ET")``); the
            legend names them.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no panels, or a panel whose image, truth and prediction sizes differ.
    """
    rows = {label: list(panels) for label, panels in rows.items() if panels}
    if not rows:
        raise InvalidValueError(f"plot_montage: no panels to draw for {out_png}")
    if not 1 <= len(region_names) <= len(REGION_COLOURS):
        raise InvalidValueError(f"plot_montage: 1 to {len(REGION_COLOURS)} regions, got {list(region_names)}")
    from matplotlib.lines import Line2D

    cols = max(len(p) for p in rows.values())
    fig = _new_figure(3.0 * cols, 3.2 * len(rows) + 0.4)
    for r, (label, panels) in enumerate(rows.items()):
        for c, panel in enumerate(panels):
            if (panel.truth.shape != (len(region_names), *panel.image.shape[:2])
                    or panel.truth.shape != panel.pred.shape):
                raise InvalidValueError(f"plot_montage panel {panel.title!r}: image {panel.image.shape}, truth "
                                 f"{panel.truth.shape} and prediction {panel.pred.shape} differ in size")
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            image, cmap = _display(panel.image)
            ax.imshow(image, cmap=cmap, interpolation="nearest")
            for k, colour in enumerate(REGION_COLOURS[: len(region_names)]):
                _contour(ax, panel.truth[k], colour, "solid")
                _contour(ax, panel.pred[k], colour, "dashed")
            ax.set_title(f"{label}: {panel.title}", fontsize="x-small")
            ax.set_axis_off()
    handles = [Line2D([], [], color=c, label=name) for name, c in zip(region_names, REGION_COLOURS)]
    handles += [Line2D([], [], color="black", label="truth"),
                Line2D([], [], color="black", linestyle="dashed", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title, fontsize="small")
    return _save(fig, out_png)

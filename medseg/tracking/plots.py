"""PNG figures logged with a run: training curves and validation overlays.

The figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, not
through ``pyplot``: no global backend switch, no figure registry to leak memory over a
long run, and safe from a handler thread. Files are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.utils.figures import REGION_COLOURS
from medseg.utils.figures import new_figure as _new_figure
from medseg.utils.figures import save_png as _save

_PANELS = ("loss", "dice", "lr", "other")
_TITLES = {"loss": "Loss", "dice": "Validation Dice", "lr": "Learning rate", "other": "Other"}


def _panel_of(name: str) -> str:
    lower = name.lower()
    if "loss" in lower:
        return "loss"
    if "dice" in lower:
        return "dice"
    if lower in {"lr", "learning_rate"} or lower.endswith(("/lr", ".lr", "_lr", "learning_rate")):
        return "lr"
    return "other"


def plot_training_curves(
    history: Mapping[str, Sequence[tuple[int, float]]], out_png: str | os.PathLike[str]
) -> Path:
    """Plot metric histories in one PNG: loss, Dice per region, learning rate, others.

    Series are grouped by name: names containing ``loss`` share a panel, names
    containing ``dice`` (e.g. ``val_dice/TC``) another, ``lr``/``learning_rate`` a
    log-scale panel, and anything else (``samples_per_s``) a last one. Empty panels are
    left out.

    Args:
        history: ``{metric name: [(epoch, value), ...]}``, e.g. from
            ``MlflowClient.get_metric_history``.
        out_png: the file to write.

    Returns:
        The path written.

    Raises:
        MedsegError: ``history`` has no points at all.
    """
    groups: dict[str, list[str]] = {p: [] for p in _PANELS}
    for name, points in history.items():
        if len(points):
            groups[_panel_of(name)].append(name)
    panels = [p for p in _PANELS if groups[p]]
    if not panels:
        raise MedsegError(f"plot_training_curves: no metric points to plot for {out_png}")
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(6.0 * cols, 3.6 * rows)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name in sorted(groups[panel]):
            steps, values = zip(*sorted((int(s), float(v)) for s, v in history[name]))
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
        ax.set_title(_TITLES[panel])
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if panel == "lr" and all(v > 0 for n in groups[panel] for _, v in history[n]):
            ax.set_yscale("log")
        if panel == "dice":
            ax.set_ylim(0.0, 1.0)
        ax.legend(fontsize="small")
    return _save(fig, out_png)


def _normalise(image: np.ndarray) -> np.ndarray:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image, dtype=float)
    low, high = np.percentile(finite, [1, 99])
    if high <= low:
        high = low + 1.0
    return np.clip((np.nan_to_num(image, nan=low) - low) / (high - low), 0.0, 1.0)


def _contours(ax: Any, mask: np.ndarray, color: str, style: str) -> None:
    for value in np.unique(mask):
        if value == 0:
            continue
        region = (mask == value).astype(float)
        if 0 < region.sum() < region.size:  # a constant array has no contour to draw
            ax.contour(region, levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)


def plot_overlays(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    out_png: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
) -> Path:
    """Draw ground-truth and prediction contours over 2D image slices, one panel each.

    Truth is drawn as solid green lines and the prediction as dashed red lines; every
    non-zero label value gets its own contour. Pick the slices beforehand (for 3D,
    e.g. the axial slice with the largest label area).

    Args:
        images: 2D arrays ``(H, W)``; intensities are rescaled to the 1st-99th percentile.
        labels: 2D integer label maps ``(H, W)``, one per image.
        preds: 2D integer predicted label maps ``(H, W)``, one per image.
        out_png: the file to write.
        titles: one title per panel (e.g. case ids and Dice); default ``"case i"``.

    Returns:
        The path written.

    Raises:
        MedsegError: the sequences differ in length, are empty, or a slice is not 2D
            or differs in shape from its label or prediction.
    """
    n = len(images)
    if n == 0 or len(labels) != n or len(preds) != n or (titles is not None and len(titles) != n):
        raise MedsegError(
            f"plot_overlays needs equally many images, labels, preds and titles, got "
            f"{n}, {len(labels)}, {len(preds)}, {'-' if titles is None else len(titles)}"
        )
    arrays = []
    for i, (img, lab, pred) in enumerate(zip(images, labels, preds)):
        img, lab, pred = (np.asarray(a) for a in (img, lab, pred))
        if img.ndim != 2 or img.shape != lab.shape or img.shape != pred.shape:
            raise MedsegError(
                f"plot_overlays slice {i}: image, label and pred must be 2D of one shape, got "
                f"{img.shape}, {lab.shape}, {pred.shape}"
            )
        arrays.append((img, lab, pred))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(3.2 * cols, 3.4 * rows)
    for i, (img, lab, pred) in enumerate(arrays):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_normalise(img.astype(float)), cmap="gray", interpolation="nearest")
        _contours(ax, lab, "lime", "solid")
        _contours(ax, pred, "red", "dashed")
        ax.set_title(titles[i] if titles is not None else f"case {i}", fontsize="small")
        ax.set_axis_off()
    fig.suptitle("truth: solid green, prediction: dashed red", fontsize="small")
    return _save(fig, out_png)


def plot_region_overlays(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    region_names: Sequence[str],
    out_png: str | os.PathLike[str],
    titles: Sequence[str],
) -> Path:
    """Draw every region's truth and prediction contours over 2D slices, a colour per region.

    Truth is a solid line and prediction a dashed one, in the region's colour; the legend names
    the regions. Nested regions (BraTS WT ⊃ TC ⊃ ET) stay readable because each has its own
    colour.

    Args:
        images: 2D arrays ``(H, W)``; intensities are rescaled to the 1st-99th percentile.
        truths: boolean masks ``(R, H, W)``, one per image, in ``region_names`` order.
        preds: the predicted masks, shaped as ``truths``.
        region_names: the R region names.
        out_png: the file to write.
        titles: one per panel (the case id and slice).

    Returns:
        The path written.

    Raises:
        MedsegError: the sequences differ in length or are empty, or a panel's shapes disagree.
    """
    from matplotlib.lines import Line2D

    n = len(images)
    if n == 0 or not len(truths) == len(preds) == len(titles) == n:
        raise MedsegError(f"plot_region_overlays needs equally many images, truths, preds and titles, got "
                          f"{n}, {len(truths)}, {len(preds)}, {len(titles)}")
    if len(region_names) > len(REGION_COLOURS):
        raise MedsegError(f"plot_region_overlays draws at most {len(REGION_COLOURS)} regions, got {len(region_names)}")
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(3.2 * cols, 3.4 * rows + 0.6)
    for i, (img, truth, pred) in enumerate(zip(images, truths, preds)):
        img, truth, pred = np.asarray(img), np.asarray(truth), np.asarray(pred)
        if img.ndim != 2 or truth.shape != pred.shape or truth.shape != (len(region_names), *img.shape):
            raise MedsegError(f"plot_region_overlays panel {i}: image {img.shape}, truth {truth.shape}, pred "
                              f"{pred.shape} for {len(region_names)} regions")
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_normalise(img.astype(float)), cmap="gray", interpolation="nearest")
        for r, colour in enumerate(REGION_COLOURS[: len(region_names)]):
            _contours(ax, truth[r].astype(np.uint8), colour, "solid")
            _contours(ax, pred[r].astype(np.uint8), colour, "dashed")
        ax.set_title(titles[i], fontsize="small")
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, label=name) for name, c in zip(region_names, REGION_COLOURS)]
    handles += [Line2D([], [], color="black", linestyle="solid", label="truth"),
                Line2D([], [], color="black", linestyle="dashed", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small", frameon=False)
    return _save(fig, out_png)

"""Training-curve and overlay PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.errors import MedsegError
from medseg.tracking.plots import plot_overlays, plot_training_curves


def test_training_curves_png(tmp_path: Path) -> None:
    history = {
        "loss": [(0, 1.0), (1, 0.6), (2, 0.4)],
        "val_dice/TC": [(0, 0.2), (1, 0.5), (2, 0.7)],
        "val_dice/WT": [(0, 0.3), (1, 0.6), (2, 0.8)],
        "lr": [(0, 1e-3), (1, 5e-4), (2, 2.5e-4)],
        "samples_per_s": [(0, 10.0), (1, 11.0), (2, 11.5)],
    }
    out = plot_training_curves(history, tmp_path / "figs" / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 720)  # 2 x 2 panels of 6 x 3.6 inches at 100 dpi
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]
    single = plot_training_curves({"loss": [(0, 1.0)]}, tmp_path / "one.png")
    with Image.open(single) as image:
        assert image.size == (600, 360)
    with pytest.raises(MedsegError, match="no metric points"):
        plot_training_curves({"loss": []}, tmp_path / "empty.png")


def test_overlay_png_draws_contours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (48, 64))
    label = np.zeros((48, 64), dtype=np.int64)
    label[10:30, 20:40] = 1
    label[15:20, 25:30] = 2
    pred = np.zeros_like(label)
    pred[12:32, 22:44] = 1
    empty = np.zeros_like(label)
    out = plot_overlays(
        [image, image], [label, empty], [pred, empty], tmp_path / "overlay.png", ["c0 Dice 0.8", "c1"]
    )
    with Image.open(out) as png:
        assert png.format == "PNG"
        rgb = np.asarray(png.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 100) & (rgb[..., 2] < 100)
    assert red.sum() > 50 and green.sum() > 50  # both contours were drawn


def test_overlay_rejects_mismatched_inputs(tmp_path: Path) -> None:
    a = np.zeros((8, 8))
    with pytest.raises(MedsegError, match="equally many"):
        plot_overlays([a], [a, a], [a], tmp_path / "x.png")
    with pytest.raises(MedsegError, match=r"slice 0: .* got \(8, 8\), \(8, 9\), \(8, 8\)"):
        plot_overlays([a], [np.zeros((8, 9))], [a], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()

"""Evaluation figures: honest worst/best rows, a colour per region with a legend, a box-plot legend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medseg.errors import MedsegError
from medseg.evaluation.figures import MontagePanel, plot_boxplots, plot_montage
from medseg.evaluation.runner import montage_rows
from medseg.utils.figures import REGION_COLOURS


def test_worst_and_best_only_when_they_are_different_cases():
    three = [(0.2, "a"), (0.5, "b"), (0.9, "c")]
    assert montage_rows(three, 3) == {"all cases": three}
    assert montage_rows(three, 1) == {"worst 1": [(0.2, "a")], "best 1": [(0.9, "c")]}
    seven = [(i / 10, f"c{i}") for i in range(7)]
    rows = montage_rows(seven, 3)
    assert [c for _, c in rows["worst 3"]] == ["c0", "c1", "c2"] and [c for _, c in rows["best 3"]] == ["c6", "c5", "c4"]
    assert montage_rows(seven[:6], 3) == {"all cases": seven[:6]}  # 6 = 2n: worst and best would meet


def _colour_pixels(path, colour: str) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(1) < 30).sum())


def test_montage_draws_each_region_in_its_own_colour(tmp_path):
    truth = np.zeros((3, 48, 48), dtype=bool)
    truth[1, 6:42, 6:42] = True  # WT
    truth[0, 14:34, 14:34] = True  # TC
    truth[2, 20:28, 20:28] = True  # ET
    panel = MontagePanel(np.random.default_rng(0).normal(size=(48, 48)), truth, np.roll(truth, 2, axis=1), "BraTS_1")
    out = plot_montage({"all cases": [panel, panel]}, tmp_path / "m.png", ["TC", "WT", "ET"], title="t")
    for colour in REGION_COLOURS[:3]:
        assert _colour_pixels(out, colour) > 20, colour
    with pytest.raises(MedsegError, match="differ in size"):
        plot_montage({"x": [MontagePanel(np.zeros((8, 8)), truth, truth, "bad")]}, tmp_path / "x.png", ["TC", "WT", "ET"])


def test_boxplot_has_a_legend_for_median_and_mean(tmp_path):
    from matplotlib.legend import Legend

    import medseg.utils.figures as figures

    seen = []
    original = figures.save_png

    def keep(fig, out_png):
        seen.extend(a.get_legend() for a in fig.axes)
        return original(fig, out_png)

    import medseg.evaluation.figures as evaluation_figures

    evaluation_figures._save, saved = keep, evaluation_figures._save
    try:
        plot_boxplots({"Dice": {"dice_WT": [0.1, 0.5, 0.9], "dice_TC": [0.2, 0.4, 0.8]}}, tmp_path / "b.png")
    finally:
        evaluation_figures._save = saved
    legends = [lg for lg in seen if isinstance(lg, Legend)]
    assert legends and [t.get_text() for t in legends[0].get_texts()] == ["median", "mean"]

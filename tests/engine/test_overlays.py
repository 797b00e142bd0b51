"""The run's overlay figure: several validation cases with their ids, every region in its own colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from medseg.engine.handlers.overlays import ValidationSlices
from medseg.errors import MedsegError
from medseg.tracking.plots import REGION_COLOURS, plot_region_overlays


def _case(z_with_truth: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    label = np.zeros((3, 12, 10, 8), dtype=np.float32)
    label[1, 3:9, 2:8, z_with_truth] = 1  # WT
    label[0, 4:7, 3:6, z_with_truth] = 1  # TC inside it
    pred = np.roll(label, 1, axis=1)
    return {"image": torch.from_numpy(rng.normal(size=(4, 12, 10, 8)).astype(np.float32)),
            "label": torch.from_numpy(label), "pred": torch.from_numpy(pred)}


def test_slices_keep_the_first_cases_of_the_newest_validation_with_their_ids():
    batches = [[_case(z, i)] for i, z in enumerate([2, 5, 1, 6, 3])]
    ids = iter(f"BraTS_{i:03d}" for i in range(100))

    def step(engine, batch):
        engine.state.batch = [{"case_id": next(ids)}]
        return batch

    evaluator = Engine(step)
    slices = ValidationSlices(max_cases=3)
    slices.attach(evaluator)
    evaluator.run(batches, max_epochs=1)
    assert [c.case_id for c in slices.cases] == ["BraTS_000", "BraTS_001", "BraTS_002"]
    assert [c.where for c in slices.cases] == ["z=2", "z=5", "z=1"]  # the slice with the most truth
    assert slices.cases[0].truth.shape == (3, 12, 10) and slices.cases[0].truth.dtype == bool
    np.testing.assert_array_equal(slices.cases[1].image, batches[1][0]["image"].numpy()[-1, ..., 5])
    evaluator.run(batches, max_epochs=2)  # a later validation replaces them
    assert [c.case_id for c in slices.cases] == ["BraTS_005", "BraTS_006", "BraTS_007"]


def test_region_overlays_draw_each_region_in_its_colour_with_a_legend(tmp_path):
    truth = np.zeros((3, 40, 40), dtype=bool)
    truth[1, 5:35, 5:35] = True
    truth[0, 12:28, 12:28] = True
    truth[2, 16:24, 16:24] = True
    pred = np.roll(truth, 3, axis=2)
    image = np.random.default_rng(0).normal(size=(40, 40))
    out = plot_region_overlays([image, image], [truth, truth], [pred, pred], ["TC", "WT", "ET"],
                               tmp_path / "o.png", ["BraTS_001 z=40", "BraTS_002 z=41"])
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    for colour in REGION_COLOURS[:3]:  # every region's colour is on the figure
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 30).sum() > 20, colour
    with pytest.raises(MedsegError, match="panel 0"):
        plot_region_overlays([image], [truth[:2]], [pred[:2]], ["TC", "WT", "ET"], tmp_path / "x.png", ["a"])
    with pytest.raises(MedsegError, match="equally many"):
        plot_region_overlays([image], [truth], [pred], ["TC", "WT", "ET"], tmp_path / "x.png", [])

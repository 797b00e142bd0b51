"""A plan's preprocessing: per-channel normalisation, separate-axis resampling, and its linear inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medseg.errors import InvalidValueError
from medseg.transforms.planned import InvertProbabilitiesd, NormalizeChannelsd, nonzero, resampling_steps

PROPS = {"mean": 50.0, "std": 20.0, "percentile_00_5": -10.0, "percentile_99_5": 110.0}


def test_ct_clips_to_the_dataset_percentiles_and_zscores_with_its_statistics():
    image = torch.tensor([[[[-1000.0, 0.0, 50.0, 90.0, 3000.0]]]])
    out = NormalizeChannelsd("image", ["ct"], [PROPS])({"image": image})["image"]
    expected = (np.clip([-1000.0, 0.0, 50.0, 90.0, 3000.0], -10.0, 110.0) - 50.0) / 20.0
    np.testing.assert_allclose(out.flatten().numpy(), expected, rtol=1e-6)


def test_each_channel_gets_its_own_scheme():
    rng = np.random.default_rng(0)
    mr = rng.normal(300, 40, (6, 6, 6)).astype(np.float32)
    mr[:2] = 0  # background outside the non-zero box
    ct = rng.normal(40, 30, (6, 6, 6)).astype(np.float32)
    image = torch.from_numpy(np.stack([mr, ct, mr]))
    out = NormalizeChannelsd("image", ["zscore_nonzero", "ct", "zscore"], [PROPS, PROPS, PROPS])(
        {"image": image})["image"].numpy()
    inside = mr[2:]
    np.testing.assert_allclose(out[0, 2:], (inside - inside.mean()) / inside.std(), rtol=1e-4, atol=1e-4)
    assert np.all(out[0, :2] == 0)
    np.testing.assert_allclose(out[1], (np.clip(ct, -10, 110) - 50) / 20, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2], (mr - mr.mean()) / mr.std(), rtol=1e-4, atol=1e-4)


def test_a_channel_count_other_than_planned_is_refused():
    with pytest.raises(InvalidValueError, match="2 channel"):
        NormalizeChannelsd("image", ["zscore"])({"image": torch.zeros(2, 4, 4, 4)})
    with pytest.raises(InvalidValueError, match="intensity_properties"):
        NormalizeChannelsd("image", ["ct"])


def test_crop_mask_keeps_negative_values():
    assert nonzero(torch.tensor([-1000.0, 0.0, 5.0])).tolist() == [True, False, True]


def _volume(spacing=(0.9, 0.9, 4.0), shape=(40, 40, 10)):
    rng = np.random.default_rng(1)
    image = MetaTensor(torch.from_numpy(rng.normal(size=(1, *shape)).astype(np.float32)),
                       affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))
    label = MetaTensor((image > 0.5).float(), affine=image.affine.clone())
    return image, label


def test_the_separate_axis_is_resampled_alone_with_nearest_neighbour():
    image, label = _volume()
    steps = Compose(resampling_steps(("image", "label"), [0.9, 0.9, 2.0], {
        "image_order": 3, "label_order": 0, "separate_axis": 2, "separate_axis_order": 0}))
    out = steps({"image": image, "label": label})
    assert out["image"].pixdim.tolist() == pytest.approx([0.9, 0.9, 2.0])
    assert out["image"].shape[1:] == (40, 40, 19)  # MONAI: (10 - 1) * 4 / 2 + 1 centres
    # In-plane spacing unchanged, z by nearest neighbour: every output slice is an input slice.
    for z in range(19):
        assert any(torch.allclose(out["image"][0, :, :, z], image[0, :, :, k], atol=1e-4) for k in range(10))
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_without_a_separate_axis_one_spline_resampling():
    image, label = _volume(spacing=(1.0, 1.0, 1.0), shape=(12, 12, 12))
    steps = resampling_steps(("image", "label"), [2.0, 2.0, 2.0], {
        "image_order": 3, "label_order": 0, "separate_axis": None, "separate_axis_order": 0})
    assert len(steps) == 1
    out = Compose(steps)({"image": image, "label": label})
    assert out["image"].shape[1:] == (6, 6, 6)


def test_probabilities_are_inverted_linearly_and_stay_within_zero_and_one():
    image, _ = _volume()
    pipeline = Compose(resampling_steps(("image",), [0.6, 0.6, 2.0], {
        "image_order": 3, "label_order": 0, "separate_axis": 2, "separate_axis_order": 0}))
    prepared = pipeline({"image": image})["image"]
    rng = np.random.default_rng(2)
    probs = MetaTensor(torch.from_numpy(rng.random((2, *prepared.shape[1:])).astype(np.float32)))
    out = InvertProbabilitiesd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=False)(
        {"image": prepared, "pred": probs})["pred"]
    assert out.shape[1:] == image.shape[1:]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # The image's own record is left as it was: a spline, not the linear copy used for the inverse.
    assert prepared.applied_operations[0]["extra_info"]["mode"] == 3

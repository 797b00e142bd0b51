"""2D transforms: checked ISIC loading, resize / letterbox round trips, augmentations, colour jitter, CutMix."""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.data.synth.isic import write_isic_dataset
from medseg.errors import DataError
from medseg.transforms.color import RandColorJitterd, adjust_color
from medseg.transforms.mixing import CutMixHandler
from medseg.transforms.planar import (
    IMAGENET_MEAN, LoadImage2Dd, fit_geometry, from_network_size, read_mask, to_network_size, train_transforms_2d,
    val_transforms_2d,
)


@pytest.fixture(scope="module")
def isic_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("isic")
    image = write_isic_dataset(root, cases=1, size=(120, 80), seed=5)[0]
    mask = root / "ISIC2018_Task1_Training_GroundTruth" / f"{image.stem}_segmentation.png"
    return image, mask


def test_load_reads_rgb_and_mask_in_height_width_order(isic_pair):
    image, mask = isic_pair
    d = LoadImage2Dd()({"image": str(image), "label": str(mask)})
    assert d["image"].shape == (3, 80, 120) and d["label"].shape == (1, 80, 120)
    assert 0 <= float(d["image"].min()) and float(d["image"].max()) <= 1
    assert set(torch.unique(d["label"]).tolist()) == {0.0, 1.0}
    assert d["image_hw"].tolist() == [80, 120] and d["image_path"] == str(image)


def test_a_mask_of_another_size_is_an_error_not_a_resize(isic_pair, tmp_path):
    image, mask = isic_pair
    wrong = tmp_path / "wrong_segmentation.png"
    Image.open(mask).resize((60, 40)).save(wrong)
    with pytest.raises(DataError, match=r"wrong_segmentation.png: mask size mismatch \(mask is 60x40, the image of "
                                        rf"{image.name} is 120x80"):
        LoadImage2Dd()({"image": str(image), "label": str(wrong)})
    grey = tmp_path / "grey_segmentation.png"
    Image.fromarray(np.full((80, 120), 128, np.uint8)).save(grey)
    with pytest.raises(DataError, match="mask values"):
        read_mask(grey, (80, 120))


def test_letterbox_keeps_the_aspect_ratio_and_inverts():
    g = fit_geometry((100, 200), (64, 64), "letterbox")
    assert g.resized == (32, 64) and g.pad == (16, 0)
    assert fit_geometry((100, 200), (64, 64), "stretch").resized == (64, 64)
    yy, xx = np.mgrid[:100, :200]
    mask = torch.from_numpy(((yy - 50) ** 2 / 30**2 + (xx - 120) ** 2 / 60**2 < 1).astype(np.float32))[None]
    for mode in ("letterbox", "stretch"):
        geometry = fit_geometry((100, 200), (64, 64), mode)
        small = to_network_size(mask, geometry, "bilinear")
        assert small.shape == (1, 64, 64)
        if mode == "letterbox":  # the padding is empty, the lesion sits in the middle band
            assert float(small[:, :16].abs().sum()) == 0 and float(small[:, 48:].abs().sum()) == 0
        back = from_network_size(small, geometry, (100, 200)) > 0.5
        assert back.shape == (1, 100, 200)
        iou = float((back & (mask > 0)).sum() / (back | (mask > 0)).sum())
        assert iou > 0.95, (mode, iou)
    with pytest.raises(ValueError, match="resize mode must be one of"):
        fit_geometry((10, 10), (8, 8), "crop")


def test_train_pipeline_shapes_and_reproducibility(isic_pair):
    image, mask = isic_pair
    tr = train_transforms_2d((64, 64), normalize="imagenet", elastic_prob=1.0, noise_prob=1.0)
    outs = []
    for _ in range(2):
        tr.set_random_state(seed=3)
        outs.append(tr({"image": str(image), "label": str(mask)}))
    a, b = outs
    assert a["image"].shape == (3, 64, 64) and a["label"].shape == (1, 64, 64)
    assert set(torch.unique(a["label"]).tolist()) <= {0.0, 1.0}  # nearest for masks, even after elastic
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    tr.set_random_state(seed=4)
    c = tr({"image": str(image), "label": str(mask)})
    assert not torch.equal(a["image"], c["image"])
    with pytest.raises(ValueError, match="rot90 needs a square image_size"):
        train_transforms_2d((64, 96))
    assert train_transforms_2d((64, 96), rot90_prob=0)({"image": str(image), "label": str(mask)})["image"].shape \
        == (3, 64, 96)


def test_val_pipeline_imagenet_normalisation(isic_pair):
    image, mask = isic_pair
    raw = val_transforms_2d((64, 64))({"image": str(image), "label": str(mask)})["image"]
    norm = val_transforms_2d((64, 64), normalize="imagenet")({"image": str(image), "label": str(mask)})["image"]
    expected = (raw[0] - IMAGENET_MEAN[0]) / 0.229
    assert torch.allclose(norm[0], expected, atol=1e-5)


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, size=(3, 5, 7)).astype(np.float32)
    shifted = adjust_color(torch.from_numpy(rgb), hue=0.2).numpy()
    for y in range(5):
        for x in range(7):
            h, s, v = colorsys.rgb_to_hsv(*rgb[:, y, x])
            expected = colorsys.hsv_to_rgb((h + 0.2) % 1.0, s, v)
            np.testing.assert_allclose(shifted[:, y, x], expected, atol=1e-5)


def test_colour_adjustments():
    img = torch.rand(3, 8, 8)
    assert torch.allclose(adjust_color(img), img)
    grey = adjust_color(img, saturation=0.0)
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    flat = adjust_color(img, contrast=0.0)
    assert float(flat.std()) < 1e-6
    assert float(adjust_color(img, brightness=0.0).max()) == 0.0
    with pytest.raises(ValueError, match="hue must be in"):
        adjust_color(img, hue=0.7)
    jitter = RandColorJitterd(keys="image", prob=1.0)
    jitter.set_random_state(seed=1)
    a = jitter({"image": img})["image"]
    jitter.set_random_state(seed=1)
    assert torch.equal(a, jitter({"image": img})["image"]) and not torch.allclose(a, img)


def test_cutmix_pastes_the_same_box_into_image_and_mask():
    # Each image equals its mask, so after mixing they must still be equal pixel for pixel.
    label = (torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    handler = CutMixHandler(prob=1.0, alpha=1.0, seed=0)
    torch.manual_seed(0)  # MONAI's CutMix draws the box corner from torch's generator
    changed = 0
    for _ in range(5):
        batch = {"image": label.repeat(1, 3, 1, 1).clone(), "label": label.clone()}
        engine = SimpleNamespace(state=SimpleNamespace(batch=batch))
        handler(engine)
        mixed = engine.state.batch
        assert torch.equal(mixed["image"][:, :1], mixed["label"])
        assert set(torch.unique(mixed["label"]).tolist()) <= {0.0, 1.0}
        changed += int((mixed["label"] != label).sum())
    assert changed > 0  # boxes were pasted
    with pytest.raises(ValueError, match="prob"):
        CutMixHandler(prob=2.0)

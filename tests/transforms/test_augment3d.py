"""nnU-Net's 3D augmentation (``medseg.transforms.augment3d``) and the light preset it sits beside."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from medseg.data.synth.writers import write_brats_dataset
from medseg.engine.determinism import _randomizable, restore_transform_rng_states, transform_rng_states
from medseg.errors import InvalidTypeError, InvalidValueError
from medseg.transforms import builders, train_transforms
from medseg.transforms.augment3d import LIGHT, NNUNET, augmentation_spec, crop_size, random_steps
from medseg.transforms.random3d import (
    RandContrastd,
    RandGammad,
    RandGaussianBlurd,
    RandLowResolutiond,
    RandSpatialCenterCropd,
    affine_matrix,
    warp_center,
)

KEYS = ("image", "label")
ROI = (16, 16, 16)


def _all(p: float, **extra: object) -> dict:
    """The nnU-Net preset with every probability set to ``p``."""
    return {**{k: p for k in NNUNET if k.startswith("p_")}, **extra}


def _sample(shape: tuple[int, ...] = (24, 24, 24), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, *shape)
    label[:, 6:14, 8:16, 5:12] = 1
    label[:, 9:11, 10:13, 7:9] = 4
    label[:, 14:18, 4:9, 10:20] = 2
    return {"image": torch.randn(2, *shape, generator=g), "label": label}


@pytest.fixture(scope="module")
def brats_item(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("aug_brats")
    case = write_brats_dataset(root, cases=1, shape=(32, 32, 24), seed=3)[0]
    return {"image": [str(case / f"{case.name}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")],
            "label": str(case / f"{case.name}_seg.nii.gz")}


def test_presets_and_overrides():
    spec = augmentation_spec(None)
    assert spec == NNUNET == augmentation_spec("nnunet") == json.loads(json.dumps(NNUNET))
    spec["rotation_deg"][0] = 0.0
    assert NNUNET["rotation_deg"] == [-30.0, 30.0]  # a copy, not the preset itself
    assert augmentation_spec("light") == LIGHT
    assert augmentation_spec({"p_rotation": 0.3}) == {**NNUNET, "p_rotation": 0.3}
    assert augmentation_spec({"preset": "light", "p_mirror": 0.2}) == {**LIGHT, "p_mirror": 0.2}
    assert augmentation_spec({**NNUNET, "scale_range": (0.8, 1)}) == {**NNUNET, "scale_range": [0.8, 1.0]}


@pytest.mark.parametrize(("value", "message"), [
    ({"p_rotaton": 0.3}, r"unknown augmentation key\(s\) \['p_rotaton'\] for preset 'nnunet'"),
    ({"preset": "light", "p_rotation": 0.1}, r"\['p_rotation'\] for preset 'light'"),
    ({"p_noise": 1.5}, r"'p_noise' must be a probability in \[0, 1\], got 1.5"),
    ({"p_blur": -0.1}, r"'p_blur' must be a probability in \[0, 1\], got -0.1"),
    ({"p_mirror": True}, r"'p_mirror' must be a probability in \[0, 1\], got True"),
    ({"p_gamma": "0.3"}, r"'p_gamma' must be a probability in \[0, 1\], got '0.3'"),
    ({"scale_range": [1.4, 0.7]}, r"'scale_range' must be \[min, max\] with min <= max, both > 0, got \[1.4, 0.7\]"),
    ({"blur_sigma": [-1.0, 1.0]}, r"'blur_sigma' must be .* > 0, got \[-1.0, 1.0\]"),
    ({"gamma_range": [0.7]}, r"'gamma_range' must be \[min, max\]"),
    ({"lowres_zoom": [0.5, 2.0]}, r"'lowres_zoom' must be .* in \(0, 1\]"),
    ({"rotation_deg": [-30, "x"]}, r"'rotation_deg' must be"),
    ({"noise_std": -0.1}, r"'noise_std' must be a number >= 0, got -0.1"),
    ({"preset": "heavy"}, r"'preset' must be one of \['light', 'nnunet'\], got 'heavy'"),
    ({"preset": ["light"]}, r"'preset' must be one of \['light', 'nnunet'\], got \['light'\]"),
    ("heavy", r"preset must be one of \['light', 'nnunet'\], got 'heavy'"),
])
def test_bad_settings_name_the_key_and_the_value(value, message):
    with pytest.raises(InvalidValueError, match=message):
        augmentation_spec(value)


def test_a_setting_that_is_no_preset_or_mapping_is_a_type_error():
    with pytest.raises(InvalidTypeError, match="preset name or a mapping, got int: 3"):
        augmentation_spec(3)


def test_crop_size_follows_nnunet_get_patch_size():
    assert crop_size("light", (128, 128, 128)) == (128, 128, 128)
    assert crop_size({"p_rotation": 0.0, "p_scale": 0.0}, (128, 96, 64)) == (128, 96, 64)
    # get_patch_size: a 30 degree rotation about one axis stretches 128 to 128 (cos 30 + sin 30) = 174.9
    assert crop_size({"p_scale": 0.0}, (128, 128, 128)) == (176, 176, 176)  # 175, margin made even
    # then / 0.85 (nnU-Net's fixed scale_range=(0.85, 1.25)): 174.9 / 0.85 = 205.8 -> 206, nnU-Net's 205 made even
    assert crop_size("nnunet", (128, 128, 128)) == (206, 206, 206)
    assert crop_size({"p_rotation": 0.0}, (16, 16, 16)) == (20, 20, 20)  # 16 / 0.85 = 18.8 -> 19 -> even
    size = crop_size("nnunet", (64, 48, 32))
    assert all(s > r and (s - r) % 2 == 0 for s, r in zip(size, (64, 48, 32)))
    # the rotated box about x spans 48 cos + 32 sin in y: more than nnU-Net's |48 cos - 32 sin|
    assert size[1] >= math.ceil((48 * math.cos(math.pi / 6) + 32 * math.sin(math.pi / 6)) / 0.85)


def _old_train_transforms(roi: tuple[int, ...]) -> Compose:
    """``train_transforms('regions', roi, convention='brats2021')`` as it was before augmentation presets."""
    keys = KEYS
    return Compose(builders._deterministic(keys, "regions", "brats2021", None, crop_foreground=True) + [
        SpatialPadd(keys=keys, spatial_size=roi),
        FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
        builders.EnsureTyped(keys=keys, track_meta=False),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi, pos=0.5, neg=0.5, num_samples=1,
                               fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
                               allow_smaller=False),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ])


def _signature(pipeline: Compose) -> list:
    out = []
    for t in pipeline.transforms:
        args = {name: value for name, value in vars(t).items()
                if isinstance(value, (int, float, str, tuple, list, bool, type(None))) and name != "R"}
        for inner in ("flipper", "scaler", "shifter", "cropper", "padder"):
            if hasattr(t, inner):
                args[inner] = {k: v for k, v in vars(getattr(t, inner)).items()
                               if isinstance(v, (int, float, str, tuple, list, bool, type(None)))}
        out.append((type(t), args))
    return out


def test_light_is_exactly_the_old_pipeline(brats_item):
    old = _old_train_transforms(ROI)
    new = [train_transforms("regions", ROI, convention="brats2021"),
           train_transforms("regions", ROI, convention="brats2021", augmentation="light"),
           train_transforms("regions", ROI, convention="brats2021", augmentation={"preset": "light"})]
    for pipeline in new:
        assert _signature(pipeline) == _signature(old)
        assert len(_randomizable(pipeline)) == 9
    outputs = []
    for pipeline in (old, new[0]):
        pipeline.set_random_state(seed=11)
        outputs.append([pipeline(brats_item)[0] for _ in range(3)])
    for a, b in zip(*outputs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    flips = train_transforms("regions", ROI, convention="brats2021", flip_prob=0.2, intensity_aug=0.3,
                             augmentation={"preset": "light", "intensity_shift": 0.05})
    assert [t.prob for t in flips.transforms if isinstance(t, RandFlipd)] == [0.2] * 3
    assert [t.scaler.factors for t in flips.transforms if isinstance(t, RandScaleIntensityd)] == [(-0.3, 0.3)]
    assert [t.shifter.offsets for t in flips.transforms if isinstance(t, RandShiftIntensityd)] == [(-0.05, 0.05)]


@pytest.mark.parametrize("spec", ["nnunet", _all(1.0), _all(1.0, p_elastic=0.0, rotation_deg=[45.0, 90.0])])
def test_output_is_the_roi_with_float_image_and_input_label_values(spec):
    steps = Compose(random_steps(spec, KEYS, ROI))
    steps.set_random_state(seed=2)
    data = _sample(crop_size(spec, ROI))
    values = set(torch.unique(data["label"]).tolist())
    for _ in range(4):
        out = steps(data)
        assert out["image"].shape == (2, *ROI) and out["label"].shape == (1, *ROI)
        assert out["image"].dtype == torch.float32 and torch.isfinite(out["image"]).all()
        assert set(torch.unique(out["label"]).tolist()) <= values


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_each_step_fires_at_its_probability():
    n, channels = 400, 4
    steps = random_steps("nnunet", KEYS, ROI)
    Compose(steps).set_random_state(seed=5)
    spatial, noise, blur, brightness, contrast, lowres, gamma_inv, gamma, *flips = steps
    assert isinstance(spatial, RandSpatialCenterCropd) and isinstance(noise, RandGaussianNoised)
    assert isinstance(brightness, RandScaleIntensityd) and brightness.scaler.channel_wise
    rotations, scales, elastic = [], [], 0
    for _ in range(n):
        spatial.randomize()
        rotations += [] if spatial.angles is None else [spatial.angles]
        scales += [] if spatial.scale is None else [spatial.scale]
        elastic += spatial.elastic is not None
    assert _within(len(rotations), n, 0.2) and _within(len(scales), n, 0.2) and elastic == 0
    assert np.abs(np.rad2deg(rotations)).max() <= 30 and 0.7 <= min(scales) and max(scales) <= 1.4
    for t, p in [(noise, 0.1), (brightness, 0.15), *[(f, 0.5) for f in flips]]:
        fired = 0
        for _ in range(n):
            t.randomize(None)
            fired += t._do_transform
        assert _within(fired, n, p), (type(t).__name__, fired)
    for t, p, p_channel, (lo, hi) in [(blur, 0.2, 0.5, (0.5, 1.0)), (contrast, 0.15, 1.0, (0.75, 1.25)),
                                      (lowres, 0.25, 0.5, (0.5, 1.0)), (gamma_inv, 0.1, 1.0, (0.7, 1.5)),
                                      (gamma, 0.3, 1.0, (0.7, 1.5))]:
        fired, drawn = 0, []
        for _ in range(n):
            t.randomize(channels)
            fired += t._do_transform
            drawn += list(t.channel_params.values())
        assert _within(fired, n, p), (type(t).__name__, fired)
        assert _within(len(drawn), fired * channels, p_channel), (type(t).__name__, len(drawn), fired)
        values = np.asarray(drawn, dtype=float)
        assert lo <= values.min() and values.max() <= hi
    assert gamma_inv.invert_image and not gamma.invert_image and gamma_inv.retain_stats and gamma.retain_stats
    # BGContrast: half the gammas below 1 (a uniform draw over (0.7, 1.5) would give 3/8)
    gamma.prob = 1.0
    below = 0
    for _ in range(n):
        gamma.randomize(1)
        below += gamma.channel_params[0] < 1
    assert _within(below, n, 0.5) and not _within(below, n, 0.375)


def test_a_step_changes_only_what_it_draws():
    data = _sample()
    for t in (RandGaussianBlurd("image", prob=1.0, p_per_channel=1.0), RandContrastd("image", prob=1.0),
              RandLowResolutiond("image", (0.5, 0.5), prob=1.0, p_per_channel=1.0),
              RandGammad("image", prob=1.0), RandGammad("image", prob=1.0, invert_image=True)):
        t.set_random_state(seed=0)
        out = t(data)
        assert out["image"].shape == data["image"].shape and not torch.allclose(out["image"], data["image"])
        assert out["label"] is data["label"]
        t.prob, t.p_per_channel = 1.0, 0.0
        assert torch.equal(t(data)["image"], data["image"])
    gamma = RandGammad("image", prob=1.0)
    out = gamma(data)["image"]
    for c in range(2):  # retain_stats: each channel keeps its mean and standard deviation
        assert torch.allclose(out[c].mean(), data["image"][c].mean(), atol=1e-4)
        assert torch.allclose(out[c].std(), data["image"][c].std(), rtol=1e-3)
    contrast = RandContrastd("image", prob=1.0)(data)["image"]
    assert contrast.min() >= data["image"].min() and contrast.max() <= data["image"].max()  # range preserved


def _centre_of_mass(x: torch.Tensor) -> np.ndarray:
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in x.shape[1:]], indexing="ij"))
    return ((grid * x[0]).flatten(1).sum(1) / x[0].sum()).numpy() - (np.asarray(x.shape[1:]) - 1) / 2


def test_affine_matrix_is_nnunets():
    """batchgeneratorsv2's ``create_affine_matrix_3d``: ``Rz @ Ry @ Rx @ S``."""
    a, b, c, s = 0.3, -0.4, 0.5, 1.2
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    matrix = affine_matrix((a, b, c), s)
    assert np.allclose(matrix[:3, :3], rz @ ry @ rx @ np.diag([s] * 3)) and np.allclose(matrix[3], (0, 0, 0, 1))


def test_rotation_moves_an_off_centre_cube():
    cube = torch.zeros(1, 25, 25, 25)
    cube[:, 17:22, 10:15, 10:15] = 1  # centre of mass at +7 along the first axis
    assert np.allclose(_centre_of_mass(cube), (7, 0, 0))
    # output voxel q samples input A q: a 90 degree turn about the last axis moves +x to -y
    turned = warp_center(cube, (25, 25, 25), affine_matrix((0.0, 0.0, math.pi / 2)), mode="nearest")
    assert np.allclose(_centre_of_mass(turned), (0, -7, 0), atol=1e-4)
    spatial = RandSpatialCenterCropd(KEYS, (25, 25, 25), p_rotation=1.0, rotation_deg=(90, 90), p_scale=0.0)
    out = spatial({"image": cube, "label": cube})
    expected = affine_matrix(np.deg2rad([90, 90, 90]))[:3, :3].T @ np.array([7.0, 0.0, 0.0])
    assert np.allclose(_centre_of_mass(out["label"]), expected, atol=1e-4)
    assert not np.allclose(expected, (7, 0, 0))


def test_scaling_is_isotropic_and_an_unwarped_patch_is_the_exact_centre():
    cube = torch.zeros(1, 24, 24, 24)
    cube[:, 9:15, 9:15, 9:15] = 1
    zoom = RandSpatialCenterCropd(KEYS, (24, 24, 24), p_rotation=0.0, p_scale=1.0, scale_range=(0.5, 0.5))
    label = zoom({"image": cube, "label": cube})["label"][0]
    assert [int(label.amax(dim=other).sum()) for other in ((1, 2), (0, 2), (0, 1))] == [12, 12, 12]
    random_zoom = RandSpatialCenterCropd(KEYS, (24, 24, 24), p_rotation=0.0, p_scale=1.0, scale_range=(0.6, 0.9))
    random_zoom.set_random_state(seed=4)
    for _ in range(3):
        label = random_zoom({"image": cube, "label": cube})["label"][0]
        extents = [int(label.amax(dim=other).sum()) for other in ((1, 2), (0, 2), (0, 1))]
        assert len(set(extents)) == 1 and extents[0] > 6, extents
    still = RandSpatialCenterCropd(KEYS, ROI, p_rotation=0.0, p_scale=0.0)
    data = _sample((26, 24, 20))
    out = still(data)
    assert torch.equal(out["image"], data["image"][:, 5:21, 4:20, 2:18])
    # the identity matrix samples the same voxels (up to the rounding of grid_sample's normalised coordinates)
    assert torch.allclose(warp_center(data["image"], ROI, np.eye(4)), out["image"], atol=1e-5)
    with pytest.raises(InvalidValueError, match=r"at least \(16, 16, 16\), got shape \(2, 26, 24, 8\)"):
        still({"image": torch.zeros(2, 26, 24, 8)})


def test_elastic_deformation_is_an_option():
    spec = {"p_rotation": 0.0, "p_scale": 0.0, "p_elastic": 1.0, "elastic_sigma": [2.0, 2.0],
            "elastic_magnitude": [30.0, 30.0]}
    spatial = random_steps(spec, KEYS, ROI)[0]
    spatial.set_random_state(seed=1)
    data = _sample(ROI)
    out = spatial(data)
    assert out["image"].shape == (2, *ROI) and not torch.allclose(out["image"], data["image"])
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0, 4.0}


def test_same_seed_same_patches_and_exact_resume():
    spec = _all(0.5)
    data = _sample(crop_size(spec, ROI))
    pipelines = [Compose(random_steps(spec, KEYS, ROI)) for _ in range(2)]
    runs = []
    for i, pipeline in enumerate(pipelines):
        pipeline.set_random_state(seed=3)
        np.random.seed(i)  # the global generators must not matter
        torch.manual_seed(i)
        runs.append([pipeline(data) for _ in range(4)])
    for a, b in zip(*runs):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])

    pipeline = pipelines[0]
    states = transform_rng_states(pipeline)
    assert len(states) == len(_randomizable(pipeline)) == 13  # 11 steps + the noise and scale array transforms
    first = [pipeline(data) for _ in range(5)]
    np.random.seed(99)
    torch.manual_seed(99)
    restore_transform_rng_states(pipeline, states)
    again = [pipeline(data) for _ in range(5)]
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not all(torch.equal(a["image"], b["image"]) for a, b in itertools.pairwise(first))


def test_train_pipeline_on_a_synthetic_brats_case(brats_item):
    for augmentation, expected_states in (("nnunet", 15), ("light", 9), ({"p_rotation": 1.0, "p_scale": 1.0}, 15)):
        pipeline = train_transforms("regions", ROI, convention="brats2021", augmentation=augmentation)
        assert len(transform_rng_states(pipeline)) == expected_states
        pipeline.set_random_state(seed=0)
        for _ in range(3):
            out = pipeline(brats_item)[0]
            assert out["image"].shape == (4, *ROI) and out["label"].shape == (3, *ROI)
            assert out["image"].dtype == torch.float32
            assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_padding_the_cut_patch_equals_padding_the_volume():
    """The builder pads the cached volume to the ROI only and each larger patch after it is cut."""
    img = torch.zeros(2, 40, 20, 18)
    img[:, 2:38, 2:18, 2:16] = torch.rand(2, 36, 16, 14, generator=torch.Generator().manual_seed(0)) + 0.1
    label = torch.zeros(1, 40, 20, 18)
    label[:, 10:14, 5:9, 6:12] = 1
    crop = (30, 30, 30)

    def pipeline(first_pad: tuple[int, ...], allow_smaller: bool, then_pad: bool) -> Compose:
        return Compose([
            SpatialPadd(KEYS, first_pad), FgBgToIndicesd("label", image_key="image", image_threshold=0.0),
            RandCropByPosNegLabeld(KEYS, "label", crop, fg_indices_key="label_fg_indices",
                                   bg_indices_key="label_bg_indices", allow_smaller=allow_smaller),
            *([SpatialPadd(KEYS, crop)] if then_pad else []),
        ])

    volume, patch = pipeline(crop, False, False), pipeline(ROI, True, True)
    volume.set_random_state(seed=5)
    patch.set_random_state(seed=5)
    for _ in range(10):
        a, b = volume({"image": img, "label": label})[0], patch({"image": img, "label": label})[0]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


@pytest.mark.gpu
def test_nnunet_steps_run_on_the_gpu():
    steps = Compose(random_steps(_all(1.0), KEYS, ROI))
    data = {k: v.cuda() for k, v in _sample(crop_size(_all(1.0), ROI)).items()}
    out = steps(data)
    assert out["image"].device.type == "cuda" and out["label"].device.type == "cuda"
    assert out["image"].shape == (2, *ROI) and out["image"].dtype == torch.float32

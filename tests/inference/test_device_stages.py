"""Preprocessing, inversion and labels on the network's device (:mod:`medseg.inference.device_stages`, issue #18).

The device path must give what the CPU path gives: the preprocessed image of
:func:`~medseg.inference.preprocess.prepare_case`, the maps of
:func:`~medseg.inference.preprocess.restore_geometry` and the labels of
:func:`~medseg.inference.postprocess.probabilities_to_labels`, for inputs in RAS, in LPS, with
permuted axes and resampled to a training spacing. On the CPU device they are identical; on
CUDA (``-m gpu``) the resampling rounds differently, so a few labels may differ there.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import POINTWISE, make_bundle, pydicom_dir

from medseg.data.conventions import BRATS2021, BRATS2023, MSD_BRAIN, LabelConvention
from medseg.errors import DataError
from medseg.inference import volume_task
from medseg.inference.device_stages import LoadedCase, load_case, preprocess_on_device, restore_on_device
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.model import InferenceModel, load_inference_model
from medseg.inference.options import InferenceOptions
from medseg.inference.postprocess import probabilities_to_labels, tensor_to_labels
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import prepare_case, restore_geometry
from medseg.inference.volume_task import VolumeRun, predict_case

CHANNELS = ["t1", "t1ce", "t2", "flair"]
REGIONS = ["TC", "WT", "ET"]
SHAPE = (24, 20, 16)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
#: Voxel-to-world matrices: RAS, LPS (the first two axes flipped), and axes stored in another order.
AFFINES = {
    "ras": np.array([[1.5, 0, 0, -20.0], [0, 1.0, 0, -30.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]]),
    "lps": np.array([[-1.5, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]]),
    "permuted": np.array([[0, 0, 2.0, -5.0], [-1.5, 0, 0, 20.0], [0, 1.0, 0, -30.0], [0, 0, 0, 1]]),
}


def _region_bundle(root: Path, pixdim: list[float] | None, convention: str = "brats2021") -> Path:
    """A pointwise region model (TC/WT/ET from the four channels) with fixed random weights."""
    generator = torch.Generator().manual_seed(3)
    network = {"name": POINTWISE, "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}}
    state = {"weight": torch.randn(3, 4, 1, 1, 1, generator=generator) * 3, "bias": torch.tensor([-1.0, 0.5, -2.0])}
    prep = {"task": "regions", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": pixdim,
            "channels": CHANNELS}
    return make_bundle(root, network, state, convention=convention, channels=CHANNELS, preprocessing=prep,
                       output_names=REGIONS)


def _volume(seed: int, nan: bool = False) -> np.ndarray:
    """An int16 ``(X, Y, Z, 4)`` volume with a zero border, as scanners write them."""
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 1000, size=(*SHAPE, 4)).astype(np.int16)
    array[:3] = 0
    if nan:
        array = array.astype(np.float32)
        array[5, 5, 5, 2] = np.nan
    return array


def _case(path: Path, array: np.ndarray, affine: np.ndarray, model: InferenceModel) -> InferenceCase:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    (case,) = expand_inputs([path], model)
    return case


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InferenceModel]:
    """The region model at the native spacing and at a training spacing of 2 mm (resampled)."""
    root = tmp_path_factory.mktemp("device_stages")
    return {"native": load_inference_model(_region_bundle(root / "native", None)),
            "resampled": load_inference_model(_region_bundle(root / "resampled", [2.0, 2.0, 2.0]))}


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", ["ras", "lps", "permuted", "resampled"])
def test_device_path_matches_the_cpu_path(models, tmp_path, device, geometry):
    """Preprocessed image, inverted maps and labels of the device path equal today's CPU path's."""
    target = _device(device)
    model = models["resampled" if geometry == "resampled" else "native"]
    case = _case(tmp_path / "scan.nii.gz", _volume(1), AFFINES["lps" if geometry == "resampled" else geometry], model)
    today = prepare_case(case, model)
    loaded = load_case(case, model, target, cpu_threshold=10**9)
    assert isinstance(loaded, LoadedCase) and loaded.image.dtype == torch.int16  # read as stored: half the bytes
    prepared = preprocess_on_device(case, loaded, model, target)
    assert prepared.image.device.type == target.type and prepared.image.dtype == torch.float32
    assert prepared.image.shape == today.image.shape
    np.testing.assert_allclose(prepared.image.cpu().numpy(), today.image.numpy(), rtol=0,
                               atol=1e-5 if device == "cpu" else 1e-4)
    np.testing.assert_allclose(prepared.image.affine.numpy(), today.image.affine.numpy(), atol=1e-6)
    # The same maps on both grids, so that only the inversion and the labels are compared.
    predictor = SlidingWindowPredictor(model.network, model.roi_size, model.sw_batch_size, model.overlap,
                                       activation=model.activation, device="cpu")
    maps = predict_case(today, model, predictor, InferenceOptions(device="cpu", save_prob=True))
    restored = restore_geometry(maps, today)
    result = restore_on_device(prepared, maps.to(target), model, save_prob=True)
    labels = probabilities_to_labels(restored[: model.out_channels], model)
    assert result.maps is not None and result.maps.dtype == np.float32 and result.maps.shape == restored.shape
    assert result.labels.dtype == labels.dtype and result.labels.shape == SHAPE
    assert len(np.unique(labels)) > 2  # the comparison covers several label values
    if device == "cpu":
        np.testing.assert_array_equal(result.maps, restored)
        np.testing.assert_array_equal(result.labels, labels)
    elif geometry == "resampled":
        np.testing.assert_allclose(result.maps, restored, atol=1e-3)
        assert np.mean(result.labels != labels) <= 0.005
    else:  # a reorientation is exact on any device
        np.testing.assert_array_equal(result.maps, restored)
        np.testing.assert_array_equal(result.labels, labels)


#: A plan's preprocessing: crop to the non-zero box, CT normalisation, spline resampling with a separate axis.
PLANNED = {"normalization": ["ct"],
           "intensity_properties": [{"mean": 40.0, "std": 60.0, "percentile_00_5": -150.0, "percentile_99_5": 250.0}],
           "resampling": {"image_order": 3, "label_order": 0, "separate_axis": 2, "separate_axis_order": 0},
           "crop_foreground": True}


def _smooth(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth CT-like volume: on white noise a nearest-neighbour step that rounds a tie the other way on
    CUDA changes a voxel's value entirely, which no scan does."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return (40 + 150 * np.sin(x / 3.0) * np.cos(y / 4.0) + 10 * z).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_planned_preprocessing_and_dicom_match_the_cpu_path(tmp_path, device, kind):
    """A plan's steps (crop, CT clip, spline resampling) and a DICOM series (pydicom's CT5N) on the device path."""
    target = _device(device)
    network = {"name": POINTWISE, "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}}
    state = {"weight": torch.tensor([0.0, 2.0, -2.0])[:, None, None, None, None], "bias": torch.tensor([0.0, -1.0, -1.0])}
    prep = {"task": "multiclass", "orientation": "RAS", "pixdim": [0.7, 0.7, 1.2], "label_values": [0, 1, 2],
            "channels": ["CT"], "planned": PLANNED}
    model = load_inference_model(make_bundle(tmp_path / "bundle", network, state, convention="toy", channels=["CT"],
                                             preprocessing=prep, roi=[16, 16, 8]))
    if kind == "dicom":
        pytest.importorskip("itk")  # MONAI's ITKReader reads DICOM series
        (case,) = expand_inputs([pydicom_dir("dicomdirtests", "98892001", "CT5N")], model)
    else:
        volume = _smooth((22, 18, 12))
        volume[:3] = 0  # cropped away by the plan
        case = _case(tmp_path / "ct.nii.gz", volume, AFFINES["permuted"], model)
    today = prepare_case(case, model)
    loaded = load_case(case, model, target, cpu_threshold=10**9)
    prepared = preprocess_on_device(case, loaded, model, target)
    assert prepared.image.shape == today.image.shape
    np.testing.assert_allclose(prepared.image.cpu().numpy(), today.image.numpy(), rtol=0,
                               atol=1e-5 if device == "cpu" else 1e-3)
    predictor = SlidingWindowPredictor(model.network, model.roi_size, model.sw_batch_size, model.overlap,
                                       activation=model.activation, device="cpu")
    maps = predict_case(today, model, predictor, InferenceOptions(device="cpu"))
    restored = restore_geometry(maps, today)
    result = restore_on_device(prepared, maps.to(target), model, save_prob=False)
    labels = probabilities_to_labels(restored, model)
    assert result.maps is None and result.labels.shape == tuple(today.reference.shape)
    if device == "cpu":
        np.testing.assert_array_equal(result.labels, labels)
    else:
        assert np.mean(result.labels != labels) <= 0.005


def _models_for_labels(root: Path) -> dict[str, InferenceModel]:
    class_network = {"name": POINTWISE, "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 4}}
    class_state = {"weight": torch.zeros(4, 4, 1, 1, 1), "bias": torch.zeros(4)}
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "channels": CHANNELS}
    return {
        "brats2021": load_inference_model(_region_bundle(root / "r2021", None, "brats2021")),
        "brats2023": load_inference_model(_region_bundle(root / "r2023", None, "brats2023")),
        "classes": load_inference_model(make_bundle(
            root / "classes", class_network, class_state, convention="brats2021", channels=CHANNELS,
            preprocessing={**prep, "label_values": [0, 1, 2, 4]})),
        "toy": load_inference_model(make_bundle(
            root / "toy", class_network, class_state, convention="toy", channels=CHANNELS,
            preprocessing={**prep, "label_values": [0, 3, 7, 300]})),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("kind", "convention"), [
    ("brats2021", None), ("brats2021", BRATS2023), ("brats2021", MSD_BRAIN),
    ("brats2023", None), ("brats2023", BRATS2021),
    ("classes", None), ("classes", BRATS2023), ("toy", None),
])
def test_tensor_labels_equal_numpy_labels(tmp_path, device, kind, convention: LabelConvention | None):
    """Regions (with conversions), classes of a region convention (converted) and plain classes (uint16 values)."""
    target = _device(device)
    model = _models_for_labels(tmp_path)[kind]
    rng = np.random.default_rng(4)
    probabilities = rng.uniform(0, 1, size=(model.out_channels, 12, 10, 8)).astype(np.float32)
    probabilities[:, 0, 0, 0] = 0.5  # at the threshold exactly, and a tie between every class
    expected = probabilities_to_labels(probabilities, model, convention=convention)
    labels = tensor_to_labels(torch.from_numpy(probabilities).to(target), model, convention=convention)
    assert labels.dtype == expected.dtype
    np.testing.assert_array_equal(labels, expected)


def test_non_finite_input_names_the_file(models, tmp_path):
    """A NaN is found on the device after preprocessing, and reported as the CPU path reports it."""
    model = models["native"]
    case = _case(tmp_path / "scan.nii.gz", _volume(2, nan=True), AFFINES["lps"], model)
    with pytest.raises(DataError) as today:
        prepare_case(case, model)
    loaded = load_case(case, model, torch.device("cpu"), cpu_threshold=10**9)
    with pytest.raises(DataError) as device:
        preprocess_on_device(case, loaded, model, torch.device("cpu"))
    assert str(device.value) == str(today.value)
    assert "scan.nii.gz" in str(device.value) and "non-finite" in str(device.value)


def test_large_volumes_keep_the_cpu_path(models, tmp_path):
    """Above ``cpu_threshold`` (on the resampled grid) the reading thread preprocesses, as prepare_case does."""
    model = models["resampled"]
    case = _case(tmp_path / "scan.nii.gz", _volume(3), AFFINES["ras"], model)
    grid = 18 * 10 * 16  # 24x20x16 at 1.5/1/2 mm, resampled to 2 mm
    assert isinstance(load_case(case, model, torch.device("cpu"), cpu_threshold=grid), LoadedCase)
    prepared = load_case(case, model, torch.device("cpu"), cpu_threshold=grid - 1)
    assert not isinstance(prepared, LoadedCase)
    np.testing.assert_array_equal(prepared.image.numpy(), prepare_case(case, model).image.numpy())


def test_auto_is_on_for_cuda_only(models, tmp_path):
    model = models["native"]
    case = _case(tmp_path / "scan.nii.gz", _volume(4), AFFINES["ras"], model)
    assert not VolumeRun(model, [case], InferenceOptions(device="cpu")).device_stages
    assert VolumeRun(model, [case], InferenceOptions(device="cpu", device_stages=True)).device_stages


@pytest.mark.parametrize("bundle", ["native", "resampled"])
def test_cli_device_stages_on_writes_what_off_writes(tmp_path, infer_cli, monkeypatch, bundle):
    """``medseg infer --device-stages on`` and ``off``: the same masks and maps, in the inputs' geometry."""
    root = _region_bundle(tmp_path / "bundle", [2.0, 2.0, 2.0] if bundle == "resampled" else None)
    inputs = tmp_path / "inputs"
    for name, seed in (("lps", 5), ("permuted", 6), ("ras", 7)):
        inputs.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(_volume(seed), AFFINES[name]), str(inputs / f"{name}.nii.gz"))
    loads = []
    real_load = volume_task.load_case
    monkeypatch.setattr(volume_task, "load_case", lambda *a, **k: loads.append(a[0].case_id) or real_load(*a, **k))
    for mode in ("on", "off"):
        assert infer_cli(root, "--input", inputs, "--output", tmp_path / mode, "--device", "cpu",
                         "--device-stages", mode, "--save-prob") == 0
    assert sorted(loads) == ["lps", "permuted", "ras"]  # only the 'on' run read for the device
    for name in ("lps", "permuted", "ras"):
        source = nib.load(str(inputs / f"{name}.nii.gz"))
        on, off = (nib.load(str(tmp_path / mode / f"{name}.nii.gz")) for mode in ("on", "off"))
        assert on.shape == SHAPE and np.allclose(on.affine, source.affine)
        assert on.get_data_dtype() == off.get_data_dtype()
        np.testing.assert_array_equal(np.asarray(on.dataobj), np.asarray(off.dataobj))
        assert len(np.unique(np.asarray(on.dataobj))) > 2
        for suffix in ("_prob", "_uncertainty"):
            maps = [np.asarray(nib.load(str(tmp_path / mode / f"{name}{suffix}.nii.gz")).dataobj) for mode in ("on", "off")]
            np.testing.assert_array_equal(*maps)

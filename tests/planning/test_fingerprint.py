"""The dataset fingerprint (medseg.planning.fingerprint) on small NIfTI datasets written here.

Every expected value is worked out by hand from the volumes written, and the RAS shapes,
spacings and crop boxes are checked against MONAI's own ``Orientationd`` and
``CropForegroundd``, the transforms the training pipeline runs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.synth.isic import write_isic_dataset
from medseg.data.synth.writers import write_brats_dataset
from medseg.errors import DataError, InvalidValueError, MedsegError
from medseg.planning import fingerprint as fp_module
from medseg.planning.fingerprint import (
    FINGERPRINT_FORMAT,
    extract_fingerprint,
    read_fingerprint,
    write_fingerprint,
)

SHAPE = (20, 18, 12)
# x -> L (1.5 mm), y -> P (1 mm), z -> S (2.5 mm): only flips from RAS.
LPS = np.array([[-1.5, 0, 0, 30.0], [0, -1.0, 0, 20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
# file axis 0 -> S (2 mm), axis 1 -> R (0.8 mm), axis 2 -> A (1.2 mm): RAS order is (1, 2, 0).
PERMUTED = np.array([[0, 0.8, 0, -5.0], [0, 0, 1.2, 3.0], [2.0, 0, 0, 7.0], [0, 0, 0, 1]])
LABELS = {"background": 0, "organ": 1, "tumour": 2}


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, affine).to_filename(str(path))
    return path


def write_dataset(root: Path, cases: dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]],
                  channels: tuple[str, ...] = ("CT", "PET"), name: str | None = "Toy") -> Path:
    """An nnU-Net v2 dataset: ``cases`` maps id -> (channel volumes, label, affine)."""
    meta = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": LABELS,
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    if name:
        meta["name"] = name
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for cid, (images, label, affine) in cases.items():
        for c, image in enumerate(images):
            _save(image.astype(np.float32), affine, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        _save(label.astype(np.uint8), affine, root / "labelsTr" / f"{cid}.nii.gz")
    return root


def toy_cases() -> dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]]:
    """Three cases with known boxes and labels (see the expected values in the tests)."""
    rng = np.random.default_rng(7)
    a0, a1, label_a = np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE)
    a0[2:15, 3:11, 1:9] = rng.uniform(1, 100, (13, 8, 8))
    a1[4:18, 5:9, 2:10] = rng.uniform(-50, -1, (14, 4, 8))
    label_a[5:10, 4:8, 2:6] = 1    # 80 voxels
    label_a[10:12, 4:6, 2:4] = 2   # 8 voxels
    b0, b1, label_b = np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE)
    b0[:, 6:10, 3:7] = rng.uniform(200, 300, (20, 4, 4))
    label_b[0:3, 6:8, 3:5] = 1     # 12 voxels
    empty = np.zeros(SHAPE)
    return {"case_000": ([a0, a1], label_a, LPS), "case_001": ([b0, b1], label_b, PERMUTED),
            "case_002": ([empty, empty], empty, LPS)}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "Dataset001_Toy", toy_cases())


def test_fields_exact(toy: Path) -> None:
    calls: list[tuple[int, int]] = []
    fp = extract_fingerprint(toy, workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert fp["format"] == FINGERPRINT_FORMAT
    assert fp["dataset"] == {"name": "Toy", "layout": "generic", "convention": "Toy", "num_cases": 3}
    assert fp["channels"] == [{"index": 0, "name": "CT"}, {"index": 1, "name": "PET"}]
    assert fp["labels"] == {"0": "background", "1": "organ", "2": "tumour"}
    assert fp["samples_per_case"] == 10_000 and fp["seed"] == 0
    assert fp["cases"] == [
        {"id": "case_000", "shape": [20, 18, 12], "spacing": [1.5, 1.0, 2.5], "orientation": "LPS",
         "cropped_shape": [16, 8, 9], "nonzero_fraction": 16 * 8 * 9 / (20 * 18 * 12),
         "class_voxels": {"1": 80, "2": 8}},
        {"id": "case_001", "shape": [18, 12, 20], "spacing": [0.8, 1.2, 2.0], "orientation": "SRA",
         "cropped_shape": [4, 4, 20], "nonzero_fraction": 4 * 4 * 20 / (20 * 18 * 12),
         "class_voxels": {"1": 12, "2": 0}},
        {"id": "case_002", "shape": [20, 18, 12], "spacing": [1.5, 1.0, 2.5], "orientation": "LPS",
         "cropped_shape": [20, 18, 12], "nonzero_fraction": 1.0, "class_voxels": {"1": 0, "2": 0}},
    ]


def test_intensity_is_numpy_over_all_foreground(toy: Path) -> None:
    """With more samples per case than foreground voxels, every foreground voxel is taken once."""
    fp = extract_fingerprint(toy, workers=1, samples_per_case=1000)
    cases = toy_cases()
    for channel in (0, 1):
        values = np.concatenate([images[channel].astype(np.float32)[label > 0]
                                 for images, label, _ in cases.values()]).astype(np.float64)
        low, median, high = np.percentile(values, [0.5, 50, 99.5])
        assert fp["intensity"][channel] == {
            "channel": channel, "name": ("CT", "PET")[channel], "mean": float(values.mean()),
            "std": float(values.std()), "median": float(median), "min": float(values.min()),
            "max": float(values.max()), "percentile_00_5": float(low), "percentile_99_5": float(high),
            "num_samples": 100}


def test_ras_geometry_matches_monai(toy: Path) -> None:
    """Shape, spacing and non-zero box as MONAI's Orientationd("RAS") and CropForegroundd see them."""
    from monai.transforms import Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd

    fp = extract_fingerprint(toy, workers=1)
    load = Compose([LoadImaged(keys=["c0", "c1"]), EnsureChannelFirstd(keys=["c0", "c1"]),
                    Orientationd(keys=["c0", "c1"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))])
    for case in fp["cases"][:2]:
        data = load({f"c{c}": toy / "imagesTr" / f"{case['id']}_000{c}.nii.gz" for c in (0, 1)})
        image = np.concatenate([np.asarray(data["c0"]), np.asarray(data["c1"])])
        assert list(image.shape[1:]) == case["shape"]
        assert np.allclose(np.asarray(data["c0"].pixdim), case["spacing"])
        cropped = CropForegroundd(keys=["image"], source_key="image", select_fn=lambda x: x != 0,
                                  allow_smaller=True)({"image": image})["image"]
        assert list(cropped.shape[1:]) == case["cropped_shape"]


def test_sampling_is_deterministic_and_worker_independent(toy: Path) -> None:
    one = extract_fingerprint(toy, workers=1, samples_per_case=20, seed=3)
    assert [s["num_samples"] for s in one["intensity"]] == [20 + 12, 20 + 12]  # case_001 has 12, case_002 none
    assert extract_fingerprint(toy, workers=1, samples_per_case=20, seed=3) == one
    assert extract_fingerprint(toy, workers=2, samples_per_case=20, seed=3) == one
    other = extract_fingerprint(toy, workers=1, samples_per_case=20, seed=4)
    assert other["intensity"] != one["intensity"] and other["cases"] == one["cases"]


def test_every_file_is_read_once(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: Counter[str] = Counter()
    real = fp_module.read_nifti

    def counting(path: str, **kwargs: object) -> object:
        reads[Path(path).name] += 1
        return real(path, **kwargs)

    monkeypatch.setattr(fp_module, "read_nifti", counting)
    extract_fingerprint(toy, workers=1)
    files = sorted(p.name for p in toy.rglob("*.nii.gz"))
    assert sorted(reads) == files and set(reads.values()) == {1}


def test_round_trip_without_local_paths(toy: Path, tmp_path: Path) -> None:
    fp = extract_fingerprint(toy, workers=1)
    out = write_fingerprint(fp, tmp_path / "out" / "fingerprint.json")
    text = out.read_text()
    assert str(tmp_path) not in text and "\n  \"dataset\": {" in text
    assert read_fingerprint(out) == fp


def test_name_defaults_to_the_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "Dataset002_Liver", dict(list(toy_cases().items())[:1]), name=None)
    assert extract_fingerprint(root, workers=1)["dataset"]["name"] == "Dataset002_Liver"


def test_write_refuses_to_overwrite(toy: Path, tmp_path: Path) -> None:
    fp = extract_fingerprint(toy, workers=1)
    path = tmp_path / "fingerprint.json"
    path.write_text("keep me")
    with pytest.raises(MedsegError, match=str(path)):
        write_fingerprint(fp, path)
    assert path.read_text() == "keep me"
    write_fingerprint(fp, path, overwrite=True)
    assert read_fingerprint(path) == fp
    with pytest.raises(InvalidValueError, match="intensity"):
        write_fingerprint({k: v for k, v in fp.items() if k != "intensity"}, tmp_path / "other.json")


@pytest.mark.parametrize(("content", "rule"), [
    ({"format": "nnunet-fingerprint", "cases": []}, "not a fingerprint"),
    ({"format": FINGERPRINT_FORMAT, "dataset": {}}, "invalid fingerprint"),
    ("[1, 2", "unreadable fingerprint"),
])
def test_read_refuses(tmp_path: Path, content: object, rule: str) -> None:
    path = tmp_path / "fingerprint.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as caught:
        read_fingerprint(path)
    assert (caught.value.path, caught.value.rule) == (str(path), rule)


def test_truncated_file_is_named(toy: Path) -> None:
    bad = toy / "imagesTr" / "case_001_0000.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        extract_fingerprint(toy, workers=2)
    assert caught.value.path == str(bad) and caught.value.rule == "unreadable"


@pytest.mark.parametrize(("what", "rule"), [("label shape", "shape mismatch"), ("label affine", "affine mismatch"),
                                            ("channel shape", "shape mismatch"),
                                            ("label value", "unexpected label values")])
def test_mismatches_are_named(tmp_path: Path, what: str, rule: str) -> None:
    cases = toy_cases()
    images, label, affine = cases["case_000"]
    root = write_dataset(tmp_path / "ds", cases)
    if what == "label shape":
        bad = _save(label[..., :-1].astype(np.uint8), affine, root / "labelsTr" / "case_000.nii.gz")
    elif what == "label affine":
        shifted = affine.copy()
        shifted[0, 3] += 0.01
        bad = _save(label.astype(np.uint8), shifted, root / "labelsTr" / "case_000.nii.gz")
    elif what == "channel shape":
        bad = _save(images[1][..., :-1].astype(np.float32), affine, root / "imagesTr" / "case_000_0001.nii.gz")
    else:
        bad = _save(np.where(label == 2, 5, label).astype(np.uint8), affine, root / "labelsTr" / "case_000.nii.gz")
    with pytest.raises(DataError) as caught:
        extract_fingerprint(root, workers=1)
    assert caught.value.path == str(bad) and caught.value.rule == rule


def test_no_foreground_is_refused(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", {"case_002": toy_cases()["case_002"]})
    with pytest.raises(DataError, match="no foreground"):
        extract_fingerprint(root, workers=1)


def test_2d_and_unlabelled_datasets_are_refused(tmp_path: Path) -> None:
    write_isic_dataset(tmp_path / "isic", 2, size=(40, 32))
    with pytest.raises(DataError) as caught:
        extract_fingerprint(tmp_path / "isic", workers=1)
    assert caught.value.rule == "not 3D" and "isic" in caught.value.detail
    write_brats_dataset(tmp_path / "brats", 1, (16, 16, 16))
    for seg in (tmp_path / "brats").rglob("*_seg.nii.gz"):
        seg.unlink()
    with pytest.raises(DataError) as caught:
        extract_fingerprint(tmp_path / "brats", workers=1)
    assert caught.value.rule == "no labelled case"


def test_dicom_is_refused() -> None:
    pydicom = pytest.importorskip("pydicom")
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    with pytest.raises(DataError) as caught:
        extract_fingerprint(source, workers=1)
    assert caught.value.rule == "unsupported layout" and "NIfTI" in caught.value.detail


def test_bad_arguments(toy: Path) -> None:
    for kwargs in ({"workers": 0}, {"samples_per_case": 0}, {"seed": -1}):
        with pytest.raises(InvalidValueError):
            extract_fingerprint(toy, **kwargs)


def test_synthetic_brats_nnunet_and_msd(tmp_path: Path) -> None:
    """Four channels in the layout's names; MSD's 4D files are reordered into the canonical channels."""
    write_brats_dataset(tmp_path / "nnunet", 2, (32, 32, 24), fmt="nnunet")
    write_brats_dataset(tmp_path / "msd", 2, (32, 32, 24), fmt="msd")
    nnunet = extract_fingerprint(tmp_path / "nnunet", workers=1)
    msd = extract_fingerprint(tmp_path / "msd", workers=1)
    assert [c["name"] for c in nnunet["channels"]] == ["T1", "T1ce", "T2", "FLAIR"]
    assert [c["name"] for c in msd["channels"]] == ["t1", "t1ce", "t2", "flair"]
    assert nnunet["dataset"]["num_cases"] == 2 and [c["id"] for c in nnunet["cases"]] == ["case_000", "case_001"]
    label = np.asarray(nib.load(str(tmp_path / "nnunet" / "labelsTr" / "case_000.nii.gz")).dataobj)
    values, counts = np.unique(label[label > 0], return_counts=True)
    assert nnunet["cases"][0]["class_voxels"] == {str(int(v)): int(n) for v, n in zip(values, counts)}
    assert nnunet["cases"][0]["shape"] == [32, 32, 24] and nnunet["cases"][0]["orientation"] == "LPS"
    # The same phantoms with the same foreground: the same statistics, channel for channel.
    strip = [{k: v for k, v in s.items() if k != "name"} for s in msd["intensity"]]
    assert strip == [{k: v for k, v in s.items() if k != "name"} for s in nnunet["intensity"]]
    assert [c["shape"] for c in msd["cases"]] == [c["shape"] for c in nnunet["cases"]]

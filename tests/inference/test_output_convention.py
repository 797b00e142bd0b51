"""Masks carry the input's label values, not the training data's (issue #15 item 4).

One model trained on BraTS 2021 (its checkpoint says ``brats2021``) segments the three
layouts: a BraTS 2023 folder must get 0/1/2/3 (never 4), an MSD file MSD's values, a plain
NIfTI file the model's own 0/1/2/4; each mask is then scored by ``medseg evaluate`` against
its own truth, which refuses any value outside the truth's convention. The model is a
pointwise region network (:mod:`infer_helpers`), so the regions of every voxel are known
from the input and each label value is checked at the voxels of its own region. MONAI's
runner, with the bundle's own ``configs/inference.json``, must do the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import pointwise_bundle, zscore
from tiny_training import REPO

import medseg.cli.main as cli_main
from medseg.checkpoint import save_checkpoint
from medseg.data.conventions import BRATS2021, BRATS2023, MSD_BRAIN, LabelConvention
from medseg.data.synth.writers import write_brats_dataset
from medseg.networks import build_network

CHANNELS = ["t1", "t1ce", "t2", "flair"]
REGIONS = ("TC", "WT", "ET")
# The region model's thresholds on the z-scored T1ce: WT > 0.3, TC > 0.8, ET > 1.5 (nested, every label present).
THRESHOLDS = {"TC": 0.8, "WT": 0.3, "ET": 1.5}
SHAPE = (32, 28, 20)
CASE_2023 = "BraTS-GLI-00000-000"


@pytest.fixture(scope="module")
def region_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BraTS-2021-trained region model: ``region r`` is ``10 * (z(T1ce) - THRESHOLDS[r])`` at every voxel."""
    weight = [[10.0 if c == 1 else 0.0 for c in range(4)] for _ in REGIONS]
    bias = [-10.0 * THRESHOLDS[r] for r in REGIONS]
    return pointwise_bundle(tmp_path_factory.mktemp("bundle_regions"), weight, bias, convention="brats2021",
                            channels=CHANNELS, task="regions", output_names=list(REGIONS))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``brats2023/`` (2 cases), ``msd/`` (MSD Task01, 1 case), ``plain/scan.nii.gz`` (4D, no dataset.json) with its truth."""
    root = tmp_path_factory.mktemp("layouts")
    write_brats_dataset(root / "brats2023", cases=2, shape=SHAPE, seed=5, fmt="brats2023")
    write_brats_dataset(root / "msd", cases=1, shape=SHAPE, seed=6, fmt="msd")
    (case,) = write_brats_dataset(root / "source2021", cases=1, shape=SHAPE, seed=7, fmt="brats2021")
    images = [nib.load(str(case / f"{case.name}_{c}.nii.gz")) for c in CHANNELS]
    stacked = np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in images], axis=-1)
    (root / "plain").mkdir()
    nib.save(nib.Nifti1Image(stacked, images[0].affine), str(root / "plain" / "scan.nii.gz"))
    (root / "plain_truth").mkdir()
    seg = nib.load(str(case / f"{case.name}_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), seg.affine), str(root / "plain_truth" / "scan_seg.nii.gz"))
    return root


def _t1ce(data: Path, layout: str, case: str) -> np.ndarray:
    """The T1ce channel of a case as stored (MSD: channel 2 of (FLAIR, T1w, t1gd, T2w); plain: canonical order)."""
    if layout == "brats2023":
        return np.asarray(nib.load(str(data / "brats2023" / case / f"{case}-t1c.nii.gz")).dataobj, np.float32)
    path, channel = (data / "msd" / "imagesTr" / f"{case}.nii.gz", 2) if layout == "msd" else \
        (data / "plain" / "scan.nii.gz", 1)
    return np.asarray(nib.load(str(path)).dataobj, np.float32)[..., channel]


def _expected(t1ce: np.ndarray, convention: LabelConvention) -> tuple[np.ndarray, np.ndarray]:
    """The labels the region model must write in ``convention``, and the voxels away from a threshold."""
    z = zscore(t1ce)
    regions = np.stack([z > THRESHOLDS[r] for r in convention.region_names]).astype(np.uint8)
    clear = np.all([np.abs(z - t) > 0.02 for t in THRESHOLDS.values()], axis=0)
    return convention.from_regions(regions), clear


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _evaluate(pred: Path, truth: Path, out: Path, *convention: str) -> dict:
    """``medseg evaluate --task brats``; returns its summary after checking that every case was scored."""
    code = cli_main.main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--task", "brats",
                          "--out", str(out / "metrics.csv"), "--montage-cases", "0", *convention])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary
    return summary


def _check(mask: np.ndarray, t1ce: np.ndarray, convention: LabelConvention) -> None:
    """Only ``convention``'s values, each one at the voxels of its own regions, and every one of them present."""
    assert set(np.unique(mask).tolist()) <= convention.valid_values, (convention.name, np.unique(mask))
    expected, clear = _expected(t1ce, convention)
    assert mask.shape == t1ce.shape and clear.mean() > 0.9
    np.testing.assert_array_equal(mask[clear], expected[clear])
    assert set(np.unique(mask[clear]).tolist()) == convention.valid_values, np.unique(mask[clear])


def test_each_layout_gets_its_own_label_values_and_evaluates(region_bundle, data, infer_cli, tmp_path):
    # BraTS 2023 folder: 2023 values (ET is 3, never 4), scored against the 2023 truth.
    preds = tmp_path / "preds2023"
    assert infer_cli(region_bundle, "--input", data / "brats2023", "--output", preds) == 0
    for index in range(2):
        case = f"BraTS-GLI-{index:05d}-000"
        mask = _mask(preds / f"{case}.nii.gz")
        assert 4 not in mask and 3 in mask
        _check(mask, _t1ce(data, "brats2023", case), BRATS2023)
    summary = _evaluate(preds, data / "brats2023", tmp_path / "eval2023")
    assert summary["convention"] == "brats2023" and summary["n_evaluated"] == 2

    # One MSD file given alone: MSD's values (1 edema, 2 non-enhancing, 3 enhancing), from the dataset.json above it.
    preds = tmp_path / "preds_msd"
    assert infer_cli(region_bundle, "--input", data / "msd" / "imagesTr" / "BRATS_001.nii.gz", "--output", preds) == 0
    _check(_mask(preds / "BRATS_001.nii.gz"), _t1ce(data, "msd", "BRATS_001"), MSD_BRAIN)
    summary = _evaluate(preds, data / "msd", tmp_path / "eval_msd")
    assert summary["convention"] == "msd_brain" and summary["n_evaluated"] == 1

    # A plain NIfTI file says nothing about its labels: the model's own (BraTS 2021) values.
    preds = tmp_path / "preds_plain"
    assert infer_cli(region_bundle, "--input", data / "plain" / "scan.nii.gz", "--output", preds) == 0
    _check(_mask(preds / "scan.nii.gz"), _t1ce(data, "plain", "scan"), BRATS2021)
    summary = _evaluate(preds, data / "plain_truth", tmp_path / "eval_plain", "--convention", "brats2021")
    assert summary["convention"] == "brats2021" and summary["n_evaluated"] == 1


def test_labels_forces_a_convention(region_bundle, data, infer_cli, tmp_path):
    own, forced = tmp_path / "own", tmp_path / "forced"
    assert infer_cli(region_bundle, "--input", data / "brats2023", "--output", own) == 0
    assert infer_cli(region_bundle, "--input", data / "brats2023", "--output", forced, "--labels", "brats2021") == 0
    mask = _mask(forced / f"{CASE_2023}.nii.gz")
    assert 4 in mask and 3 not in mask
    _check(mask, _t1ce(data, "brats2023", CASE_2023), BRATS2021)
    # The same regions, in the other convention's values, voxel for voxel.
    np.testing.assert_array_equal(BRATS2021.to_regions(mask), BRATS2023.to_regions(_mask(own / f"{CASE_2023}.nii.gz")))
    # And the other way: a plain file in BraTS 2023 values.
    plain = tmp_path / "plain2023"
    assert infer_cli(region_bundle, "--input", data / "plain" / "scan.nii.gz", "--output", plain,
                     "--labels", "brats2023") == 0
    _check(_mask(plain / "scan.nii.gz"), _t1ce(data, "plain", "scan"), BRATS2023)


@pytest.mark.parametrize("labels, named", [
    ("isic", ["brats2021", "isic"]),          # a region model's regions have no ISIC values
    ("brats2019", ["brats2019", "valid"]),    # no such convention
])
def test_impossible_labels_is_one_line_before_any_work(region_bundle, data, infer_cli, tmp_path, capsys, labels,
                                                        named):
    out = tmp_path / "out"
    assert infer_cli(region_bundle, "--input", data / "brats2023", "--output", out, "--labels", labels) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("medseg infer: error: --labels"), err
    assert all(word in err for word in named), err
    assert not out.exists()


def test_unknown_labels_is_refused_before_the_model_is_read(data, infer_cli, tmp_path, capsys):
    assert infer_cli(tmp_path / "no_bundle", "--input", data / "brats2023", "--output", tmp_path / "out",
                     "--labels", "brats2019") == 2
    err = capsys.readouterr().err.strip()
    assert "--labels brats2019: unknown label convention" in err and "no_bundle" not in err, err


def test_a_class_model_without_regions_cannot_be_relabelled(multiclass_bundle, data, infer_cli, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer_cli(multiclass_bundle, "--input", data / "plain", "--output", out, "--labels", "brats2023") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'toy'" in err and "brats2023" in err, err
    assert not out.exists()


def test_a_class_model_of_brats_labels_converts_through_the_regions(data, infer_cli, tmp_path):
    """Softmax over BraTS 2021's 0/1/2/4: its labels are that convention's regions, so 2023 values are well-defined."""
    weight = [[0.0] * 4, [0.0, 10.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 20.0, 0.0, 0.0]]
    bundle = pointwise_bundle(tmp_path / "bundle", weight, [0.0, -8.0, -1.5, -30.0], convention="brats2021",
                              channels=CHANNELS, task="multiclass", label_values=[0, 1, 2, 4])
    own, forced = tmp_path / "own", tmp_path / "forced"
    assert infer_cli(bundle, "--input", data / "brats2023", "--output", own) == 0
    assert infer_cli(bundle, "--input", data / "brats2023", "--output", forced, "--labels", "brats2021") == 0
    mask, mask2021 = _mask(own / f"{CASE_2023}.nii.gz"), _mask(forced / f"{CASE_2023}.nii.gz")
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3} and set(np.unique(mask2021).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(BRATS2023.to_regions(mask), BRATS2021.to_regions(mask2021))


# --- MONAI's runner: the bundle's own configs/inference.json, as an output bundle holds it ---------------------

def _monai_bundle(root: Path, case: Path) -> Path:
    """An output bundle of ``bundles/brats_segresnet`` with a tiny 2021-trained UNet whose regions each cover
    about half of ``case`` (the last layer's bias is set at the median of its logits), so every label appears."""
    from monai.inferers import sliding_window_inference

    from medseg.transforms import IMAGE, infer_transforms

    network = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                          "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"}}
    torch.manual_seed(0)
    net = build_network(network["name"], **network["kwargs"]).eval()
    image = infer_transforms()({IMAGE: [str(case / f"{case.name}-{s}.nii.gz") for s in ("t1n", "t1c", "t2w", "t2f")]})
    with torch.no_grad():
        logits = sliding_window_inference(image[IMAGE][None], (16, 16, 16), 4, net, overlap=0.5, mode="gaussian")
        net.model[2].conv.bias.sub_(logits.as_tensor()[0].flatten(1).median(dim=1).values)
    config = json.loads((REPO / "bundles" / "brats_segresnet" / "configs" / "inference.json").read_text())
    assert not str(config["label_convention"]).startswith("brats")  # follows the input, not hard-coded
    # What the output-bundle handler does: this run's network and window, the output folder as bundle_root.
    config.update(network_spec=network, roi_size=[16, 16, 16], bundle_root=str(root))
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    save_checkpoint(root / "models" / "model.pt", net, network=network, label_convention="brats2021",
                    channel_names=CHANNELS, extra={"output_names": list(REGIONS)},
                    preprocessing={"task": "regions", "orientation": "RAS", "normalize": "nonzero_channel_wise",
                                   "channels": CHANNELS})
    return root


def _monai_run(bundle: Path, dataset: Path, out: Path, *extra: str) -> list[Path]:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(bundle / "configs" / "inference.json"), "--dataset_dir", str(dataset),
                             "--output_dir", str(out), "--dataloader#num_workers", "0", *extra],
                            cwd=out.parent, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return sorted(out.glob("*.nii.gz"))


def test_monai_runner_writes_the_inputs_label_values(data, infer_cli, tmp_path):
    bundle = _monai_bundle(tmp_path / "bundle", data / "brats2023" / CASE_2023)
    written = _monai_run(bundle, data / "brats2023", tmp_path / "monai")
    assert len(written) == 2
    values = set().union(*(np.unique(_mask(p)).tolist() for p in written))
    assert values == {0, 1, 2, 3}, values
    # The same masks as medseg infer's (same weights, windows and blending).
    ours = tmp_path / "ours"
    assert infer_cli(bundle, "--input", data / "brats2023", "--output", ours) == 0
    # Named as medseg infer names them (<case id>.nii.gz), not after the first input file (<id>_t1_seg).
    assert [p.name for p in written] == sorted(p.name for p in ours.glob("*.nii.gz"))
    theirs = _mask(tmp_path / "monai" / f"{CASE_2023}.nii.gz")
    assert (theirs == _mask(ours / f"{CASE_2023}.nii.gz")).mean() > 0.99
    # So medseg evaluate pairs the MONAI runner's predictions with their truth cases.
    csv = tmp_path / "eval" / "metrics.csv"
    result = subprocess.run([sys.executable, "-m", "medseg", "evaluate", "--pred", str(tmp_path / "monai"),
                             "--truth", str(data / "brats2023"), "--task", "brats", "--out", str(csv)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((csv.parent / "summary.json").read_text())["n_evaluated"] == 2
    assert "prediction without a truth case" not in result.stderr
    # MONAI's own override of the id still forces a convention.
    forced = _monai_run(bundle, data / "brats2023", tmp_path / "monai2021", "--label_convention", "brats2021")
    values = set().union(*(np.unique(_mask(p)).tolist() for p in forced))
    assert values == {0, 1, 2, 4}, values

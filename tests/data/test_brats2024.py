"""The BraTS 2024+ labels (1 NETC, 2 SNFH, 3 ET, 4 RC): convention, regions, detection, data check and datalist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli.main import main
from medseg.data.checks import check_dataset
from medseg.data.conventions import (
    BRATS2021,
    BRATS2023,
    BRATS2024,
    conventions_allowing,
    get_convention,
    labels_hint,
)
from medseg.data.datalist import build_datalist
from medseg.data.discovery import discover
from medseg.data.layouts.brats import brats_convention_for_values
from medseg.data.synth.writers import write_brats_dataset
from medseg.transforms.labels import LabelToRegionsd, RegionsToLabelsd

SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def brats2024_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic BraTS 2024+ cases in the 2023 naming; cases 0 and 2 have a resection cavity."""
    out = tmp_path_factory.mktemp("brats2024")
    write_brats_dataset(out, cases=4, shape=SHAPE, seed=0, fmt="brats2024")
    return out


def _seg(case_dir: Path) -> np.ndarray:
    return np.asarray(nib.load(str(case_dir / f"{case_dir.name}-seg.nii.gz")).dataobj)


@pytest.mark.parametrize("value,expected", [(0, (0, 0, 0, 0)), (1, (1, 1, 0, 0)), (2, (0, 1, 0, 0)),
                                            (3, (1, 1, 1, 0)), (4, (0, 0, 0, 1))])
def test_rc_is_a_region_of_its_own_outside_the_tumour(value: int, expected: tuple[int, ...]) -> None:
    assert BRATS2024.region_names == ("TC", "WT", "ET", "RC")  # the first three as every BraTS model
    label = np.zeros((2, 3, 2), np.uint8)
    label[1, 2, 1] = value
    regions = BRATS2024.to_regions(label)
    assert tuple(regions[:, 1, 2, 1]) == expected and regions[:, 0, 0, 0].sum() == 0


def test_regions_invert_and_tumour_wins_over_cavity() -> None:
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2, 3, 4], size=(6, 5, 4)).astype(np.uint8)
    assert np.array_equal(BRATS2024.from_regions(BRATS2024.to_regions(label)), label)
    both = np.zeros((4, 1, 1, 2), np.float32)
    both[:, 0, 0, 0] = (0.9, 0.9, 0.9, 0.9)  # a model that says ET and RC at once
    both[3, 0, 0, 1] = 0.9                   # RC alone
    assert BRATS2024.from_regions(both)[0, 0].tolist() == [3, 4]


def test_region_transforms_give_four_channels_and_back() -> None:
    """The training target of a brats2024 dataset: (TC, WT, ET, RC), as the bundles' transforms build it."""
    label = np.zeros((1, 4, 4, 4), np.float32)
    label[0, 0, 0, :] = [1, 2, 3, 4]
    regions = LabelToRegionsd(keys="label", convention="brats2024")({"label": torch.as_tensor(label)})["label"]
    assert tuple(regions.shape) == (4, 4, 4, 4)
    assert regions[:, 0, 0, 3].tolist() == [0, 0, 0, 1] and regions[:, 0, 0, 2].tolist() == [1, 1, 1, 0]
    back = RegionsToLabelsd(keys="pred", convention="brats2024")({"pred": regions})["pred"]
    assert np.asarray(back)[0].astype(int).tolist() == label[0].astype(int).tolist()


def test_hints_name_the_convention_that_reads_the_values() -> None:
    assert conventions_allowing({0, 1, 2, 3, 4}) == ["brats2024"]
    assert conventions_allowing({0, 1, 2, 4}) == ["brats2021", "brats2024"]
    assert "pass --labels brats2024" in labels_hint({0, 1, 2, 3, 4}, "brats2023")
    assert "resection cavity" in labels_hint({0, 3, 4}, "brats2023")
    assert labels_hint({0, 7}, "brats2023") == "" and labels_hint({0, 4}, "msd_brain") == ""
    assert get_convention("brats2024") is BRATS2024


def test_synth_brats2024_puts_a_cavity_in_every_other_case(brats2024_dir: Path) -> None:
    cases = sorted(p for p in brats2024_dir.iterdir() if p.is_dir())
    assert [c.name for c in cases] == [f"BraTS-GLI-{i:05d}-000" for i in range(4)]
    values = [set(np.unique(_seg(c)).tolist()) for c in cases]
    assert [4 in v for v in values] == [True, False, True, False]
    assert all(v <= {0, 1, 2, 3, 4} for v in values) and 3 in set().union(*values)


def test_data_check_detects_brats2024_from_the_cavity(brats2024_dir: Path) -> None:
    assert discover(brats2024_dir).convention is BRATS2023  # the naming alone cannot tell
    report = check_dataset(brats2024_dir)
    assert report.ok, report.format_table()
    assert report.dataset.convention is BRATS2024
    assert "label 4 (resection cavity) in 2 of 4 labelled cases: read as brats2024" in report.warnings[0]
    assert "brats2023 naming, brats2024 labels" in report.format_table()
    datalist = build_datalist(report.dataset, brats2024_dir, folds=2)
    assert datalist["label_convention"] == "brats2024"
    assert list(datalist["regions"]) == ["TC", "WT", "ET", "RC"] and datalist["regions"]["RC"] == [4]
    chosen = check_dataset(brats2024_dir, labels="brats2024")
    assert chosen.ok and chosen.dataset.convention is BRATS2024 and chosen.warnings == []


def test_data_check_under_brats2023_rejects_the_4_suggesting_brats2024(
    brats2024_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["data", "check", str(brats2024_dir), "--labels", "brats2023"])
    out = capsys.readouterr().out
    assert status == 1
    rows = [line for line in out.splitlines() if "unexpected label values" in line]
    assert len(rows) == 2 and all("-seg.nii.gz" in row for row in rows)
    assert "values [4] not in [0, 1, 2, 3] (brats2023); they fit brats2024" in rows[0]
    assert "pass --labels brats2024" in rows[0]
    assert main(["data", "check", str(brats2024_dir)]) == 0
    assert "read as brats2024" in capsys.readouterr().out


def test_brats2023_data_stay_brats2023(tmp_path: Path) -> None:
    write_brats_dataset(tmp_path, cases=2, shape=SHAPE, seed=1, fmt="brats2023")
    report = check_dataset(tmp_path)
    assert report.ok and report.dataset.convention is BRATS2023 and report.warnings == []


def test_labels_choice_is_checked(brats2024_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="not a BraTS label convention"):
        discover(brats2024_dir, labels="msd_brain")
    write_brats_dataset(tmp_path / "msd", cases=1, shape=SHAPE, seed=0, fmt="msd")
    with pytest.raises(ValueError, match="applies to BraTS case folders"):
        discover(tmp_path / "msd", labels="brats2024")
    out = tmp_path / "datalist.json"
    assert main(["data", "list", str(brats2024_dir), "--out", str(out), "--folds", "2", "--labels", "brats2024"]) == 0
    assert json.loads(out.read_text())["label_convention"] == "brats2024"
    with pytest.raises(SystemExit) as stop:  # argparse refuses a name that is no BraTS convention
        main(["data", "check", str(brats2024_dir), "--labels", "brats2025"])
    assert stop.value.code == 2 and "invalid choice: 'brats2025'" in capsys.readouterr().err


def test_a_4_without_any_3_is_not_taken_for_brats2024(brats2024_dir: Path, tmp_path: Path) -> None:
    """Values {0, 1, 2, 4} fit BraTS 2021 labels (ET = 4) as well as 2024+ ones: nothing is guessed."""
    assert brats_convention_for_values(BRATS2023, {0, 1, 2, 3, 4}) is BRATS2024
    assert brats_convention_for_values(BRATS2023, {0, 1, 2, 4}) is BRATS2023
    assert brats_convention_for_values(BRATS2023, {0, 1, 3, 4, 5}) is BRATS2023
    assert brats_convention_for_values(BRATS2021, {0, 1, 2, 3, 4}) is BRATS2021
    data = tmp_path / "no_et"
    shutil.copytree(brats2024_dir, data)
    for seg in data.glob("*/*-seg.nii.gz"):
        image = nib.load(str(seg))
        label = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.where(label == 3, 1, label).astype(np.uint8), image.affine), str(seg))
    report = check_dataset(data)
    assert report.dataset.convention is BRATS2023 and not report.ok
    assert "they fit brats2021 and brats2024: pass --labels brats2021 or brats2024" in report.problems[0].detail

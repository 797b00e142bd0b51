"""``medseg evaluate --task brats-lesionwise`` as a user runs it: real NIfTI files, the CLI, bad input.

The ``brats2025`` test runs the official package's own commands (``brats-evaluate`` and
``brats-parse-metrics``, as ``python -m``) on the same files and compares every number.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from eval_helpers import read_csv_rows, save_label
from scipy import ndimage

from medseg.data.synth.writers import write_brats_dataset
from medseg.evaluation.brats_official import PARSED_COLUMNS

# A BraTS-like affine: axes 0 and 1 flipped, 1 mm voxels, not the identity.
AFFINE = np.array([[-1.0, 0, 0, 47], [0, -1.0, 0, 39], [0, 0, 1.0, -10], [0, 0, 0, 1]])
SHAPE = (48, 40, 36)
COLUMNS = ["lesionwise_dice", "lesionwise_hd95", "tp", "fn", "fp", "legacy_dice", "legacy_hd95"]


def _medseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _tumour() -> np.ndarray:
    """2023 labels: a 10^3 tumour (oedema 2, core 1, a 2^3 enhancing 3) and a 27-voxel oedema far off."""
    label = np.zeros(SHAPE, np.uint8)
    label[10:20, 10:20, 10:20] = 2
    label[12:18, 12:18, 12:18] = 1
    label[14:16, 14:16, 14:16] = 3
    label[35:38, 30:33, 25:28] = 2
    return label


def _prediction() -> np.ndarray:
    """The big tumour right but its ET called core, the small lesion missed, a one-voxel island."""
    label = _tumour()
    label[label == 3] = 1
    label[35:38, 30:33, 25:28] = 0
    label[40, 5, 30] = 2
    return label


def test_cli_scores_a_constructed_case_and_reports_bad_files(tmp_path: Path) -> None:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for case in ("case_a", "case_b", "case_c", "case_d"):
        save_label(_tumour(), AFFINE, truth / f"{case}.nii.gz")
    save_label(_prediction(), AFFINE, pred / "case_a.nii.gz")           # scored
    save_label(_prediction()[:, :, :30], AFFINE, pred / "case_c.nii.gz")  # wrong shape
    bad = _prediction()
    bad[1, 1, 1] = 7
    save_label(bad, AFFINE, pred / "case_d.nii.gz")                    # a value outside the convention
    out = tmp_path / "res" / "metrics.csv"                               # case_b: no prediction
    run = _medseg("evaluate", "--task", "brats-lesionwise", "--rules", "brats2023", "--pred", str(pred),
                  "--truth", str(truth), "--out", str(out))
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    rows = {r["case_id"]: r for r in read_csv_rows(out)}
    assert list(rows["case_a"]) == ["case_id", "status", *(f"{r}_{c}" for r in ("WT", "TC", "ET") for c in COLUMNS),
                                     "error"]
    a = {k: float(v) for k, v in rows["case_a"].items() if k not in ("case_id", "status", "error")}
    # WT: the big lesion perfect, the 27 mm^3 one under the threshold, the island a false positive.
    assert (a["WT_tp"], a["WT_fn"], a["WT_fp"]) == (1, 0, 1)
    assert (a["WT_lesionwise_dice"], a["WT_lesionwise_hd95"]) == (0.5, 187.0)
    assert a["WT_legacy_dice"] == pytest.approx(2 * 1000 / (1027 + 1001))
    assert (a["TC_lesionwise_dice"], a["TC_lesionwise_hd95"], a["TC_tp"], a["TC_fp"]) == (1, 0, 1, 0)
    # ET: the only lesion (8 mm^3) is under the threshold: nothing to count, Dice 1 and HD95 0;
    # the whole-region (legacy) scores see it missed.
    assert (a["ET_lesionwise_dice"], a["ET_lesionwise_hd95"], a["ET_tp"], a["ET_fn"]) == (1, 0, 0, 0)
    assert (a["ET_legacy_dice"], a["ET_legacy_hd95"]) == (0, 374)
    errors = {cid: rows[cid]["error"] for cid in ("case_b", "case_c", "case_d")}
    assert all(rows[cid]["status"] == "failed" and rows[cid]["WT_tp"] == "" for cid in errors)
    assert "no prediction found" in errors["case_b"]
    assert str(pred / "case_c.nii.gz") in errors["case_c"] and "shape differs from truth" in errors["case_c"]
    assert str(pred / "case_d.nii.gz") in errors["case_d"] and "label values outside the convention" in errors["case_d"]
    assert "found [7], brats2023 allows [0, 1, 2, 3]" in errors["case_d"]
    for cid in errors:
        assert f"FAILED {cid}: " in run.stdout

    lesions = read_csv_rows(out.parent / "lesions.csv")
    wt = sorted((float(r["volume_mm3"]), r["counted"], r["matched"]) for r in lesions
                if r["case_id"] == "case_a" and r["region"] == "WT")
    assert wt == [(27.0, "0", "0"), (1000.0, "1", "1")]
    summary = json.loads((out.parent / "summary.json").read_text())
    assert (summary["task"], summary["rules"], summary["challenge"], summary["convention"]) == \
        ("brats-lesionwise", "brats2023", "GLI", "brats2023")
    assert summary["rule_set"]["dilation"] == 3 and summary["rule_set"]["volume_threshold_mm3"] == 50.0
    assert (summary["n_cases"], summary["n_evaluated"], summary["n_failed"]) == (4, 1, 3)
    assert summary["lesions"]["WT"] == {"reference": 2, "counted": 1, "matched": 1}
    assert summary["metrics"]["WT_lesionwise_dice"]["mean"] == 0.5
    for name in ("boxplot.png", "lesion_scatter.png"):
        assert (out.parent / name).stat().st_size > 1000


def test_brats2023_named_truth_with_a_cavity_is_read_as_brats2024(tmp_path: Path, cli) -> None:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    case = "BraTS-GLI-00007-000"
    label = _tumour()
    label[25:30, 25:30, 25:30] = 4  # a resection cavity
    for name in ("t1n", "t1c", "t2w", "t2f"):
        save_label(np.zeros(SHAPE, np.uint8), AFFINE, truth / case / f"{case}-{name}.nii.gz")
    save_label(label, AFFINE, truth / case / f"{case}-seg.nii.gz")
    save_label(label, AFFINE, pred / f"{case}.nii.gz")
    out = tmp_path / "lw.csv"
    assert cli(["evaluate", "--task", "brats-lesionwise", "--rules", "brats2023", "--pred", str(pred),
                "--truth", str(truth), "--out", str(out)]) == 0
    row, = read_csv_rows(out)
    assert (row["WT_lesionwise_dice"], row["WT_tp"], row["WT_fp"]) == ("1", "1", "0")  # 27 mm^3: matched, not counted
    assert json.loads((tmp_path / "lw_summary.json").read_text())["convention"] == "brats2024"
    assert cli(["evaluate", "--task", "brats", "--pred", str(pred), "--truth", str(truth),
                "--out", str(tmp_path / "legacy.csv"), "--montage-cases", "0"]) == 0
    legacy, = read_csv_rows(tmp_path / "legacy.csv")
    assert (legacy["dice_RC"], legacy["hd95_RC"]) == ("1", "0")
    assert cli(["evaluate", "--task", "brats-lesionwise", "--rules", "brats2023", "--pred", str(pred),
                "--truth", str(truth), "--out", str(tmp_path / "as23.csv"), "--labels", "brats2023"]) == 1
    refused, = read_csv_rows(tmp_path / "as23.csv")
    assert "-seg.nii.gz" in refused["error"] and "pass --labels brats2024" in refused["error"]


def test_usage_errors_are_one_line(tmp_path: Path, cli, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pred").mkdir()
    base = ["evaluate", "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "m.csv")]
    assert cli([*base, "--truth", str(tmp_path / "nope"), "--task", "brats-lesionwise", "--rules", "brats2023"]) == 2
    assert "nope: not found" in capsys.readouterr().err
    assert cli([*base, "--truth", str(tmp_path), "--task", "brats-lesionwise"]) == 2
    assert "needs --rules brats2023 or brats2025" in capsys.readouterr().err
    assert cli([*base, "--truth", str(tmp_path), "--task", "brats", "--rules", "brats2023"]) == 2
    assert "applies to --task brats-lesionwise" in capsys.readouterr().err
    save_label(_tumour(), AFFINE, tmp_path / "truth" / "case_a.nii.gz")
    assert cli([*base, "--truth", str(tmp_path / "truth"), "--task", "brats-lesionwise", "--rules", "brats2025",
                "--labels", "brats2021"]) == 2
    assert "not brats2021 ones" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "brats_evaluation", None)  # as if the extra were not installed
    assert cli([*base, "--truth", str(tmp_path / "truth"), "--task", "brats-lesionwise", "--rules", "brats2025"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'medseg[brats]'" in err and "Traceback" not in err


def _official_rows(truth: Path, pred: Path, config: str, parser: list[str], tmp: Path) -> dict[str, dict[str, str]]:
    """What the package's own two commands give for the folders: subject id -> parsed row."""
    summary, parsed = tmp / f"official_{config}.json", tmp / f"official_{config}.csv"
    for args in (["brats_evaluation.evaluation", "--config", config, "--ref_path", str(truth),
                  "--pred_path", str(pred), "--summary_json", str(summary)],
                 ["brats_evaluation.metrics_parser", *parser, "--json_path", str(summary),
                  "--output_csv_path", str(parsed)]):
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    with open(parsed, newline="", encoding="utf-8") as handle:
        return {row["subject_id"]: row for row in csv.DictReader(handle)}


def _same(ours: str, theirs: str) -> bool:
    """Equal to the 8 significant digits of medseg's CSV (NaN equals NaN, inf equals inf)."""
    a, b = (math.nan if x.strip() == "" else float(x) for x in (ours, theirs))
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-7, abs=0)


@pytest.mark.parametrize("challenge,config,parser", [
    ("GLI", "gli", ["seg"]),
    ("MET", "mets", ["mets", "--vol_threshold", "20", "--overlap_threshold", "0.1"]),
])
def test_brats2025_gives_the_official_packages_numbers(tmp_path: Path, challenge: str, config: str,
                                                       parser: list[str]) -> None:
    pytest.importorskip("brats_evaluation")
    source = tmp_path / "synth"
    write_brats_dataset(source, cases=3, shape=(40, 40, 32), seed=3, fmt="brats2024")
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for i, case in enumerate(sorted(p for p in source.iterdir() if p.is_dir())):
        label = np.asarray(nib.load(str(case / f"{case.name}-seg.nii.gz")).dataobj).astype(np.uint8)
        guess = label.copy()
        if i == 0:
            guess[ndimage.binary_dilation(label > 0) & (label == 0)] = 2  # oedema grown by a voxel
        elif i == 1:
            guess[guess == 3] = 1                                        # ET missed
            guess[2:4, 2:4, 2:4] = 2                                     # an island
        save_label(label, AFFINE, truth / f"{case.name}-seg.nii.gz")
        save_label(guess, AFFINE, pred / f"{case.name}.nii.gz")
    out = tmp_path / "ours" / "metrics.csv"
    run = _medseg("evaluate", "--task", "brats-lesionwise", "--rules", "brats2025", "--challenge", challenge,
                  "--pred", str(pred), "--truth", str(truth), "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    ours = {r["case_id"]: r for r in read_csv_rows(out)}
    official = _official_rows(truth, pred, config, parser, tmp_path)
    regions = sorted({k.rsplit("_", 1)[1] for k in next(iter(official.values())) if k.startswith("global_dsc_")})
    assert regions == sorted(["wt", "tc", "et", "rc", *(["netc", "snfh"] if config == "gli" else [])])
    compared = 0
    for case_id, row in ours.items():
        theirs = official[f"{case_id}-seg.nii.gz"]
        for region in regions:
            for prefix, suffix in PARSED_COLUMNS.items():
                assert _same(row[f"{region.upper()}_{suffix}"], theirs[f"{prefix}_{region}"]), \
                    (case_id, region, prefix, row[f"{region.upper()}_{suffix}"], theirs[f"{prefix}_{region}"])
                compared += 1
    assert compared == 3 * len(regions) * len(PARSED_COLUMNS)
    missed_et = ours[sorted(ours)[1]]
    assert float(missed_et["ET_fn"]) >= 1 and float(missed_et["WT_fp"]) >= 1


def test_brats2025_refuses_values_its_config_does_not_define(tmp_path: Path, cli) -> None:
    """MEN's official config (MenPre) defines labels 1-3: a 4 is a failed row naming the file."""
    pytest.importorskip("brats_evaluation")
    label = _tumour()
    label[30:33, 5:8, 5:8] = 4
    save_label(label, AFFINE, tmp_path / "truth" / "case_a-seg.nii.gz")
    save_label(label, AFFINE, tmp_path / "pred" / "case_a.nii.gz")
    out = tmp_path / "men.csv"
    assert cli(["evaluate", "--task", "brats-lesionwise", "--rules", "brats2025", "--challenge", "MEN",
                "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--out", str(out)]) == 1
    row, = read_csv_rows(out)
    assert str(tmp_path / "truth" / "case_a-seg.nii.gz") in row["error"]
    assert "found [4], the brats-evaluation config 'MenPre' allows [0, 1, 2, 3]" in row["error"]

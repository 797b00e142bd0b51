"""A 25 KB PNG of 20000 x 10000 1-bit pixels (200 million): refused on every 2D route, in a small process."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_files import (
    PEAK_CHILD,
    PEAK_TRACED,
    needs_wait4,
    one_line_error,
    planar_bundle,
    png_bomb,
    run_measured,
    traced_peak,
    wrote_nothing,
)
from PIL import Image
from tiny_training import REPO

from medseg.cli.main import main
from medseg.data.readers import open_image_2d
from medseg.errors import DataError

# ---------------------------------------------------------------- 2D: the PNG of 200 million pixels


@pytest.fixture(scope="module")
def isic_with_bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """4 ISIC cases of 64x48 whose second mask is the PNG bomb."""
    from medseg.data.synth.isic import write_isic_dataset

    root = tmp_path_factory.mktemp("isic") / "isic"
    write_isic_dataset(root, cases=4, size=(64, 48), seed=1)
    mask = root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png"
    return root, png_bomb(mask)


def test_png_bomb_data_check(isic_with_bomb, capsys):
    root, bad = isic_with_bomb
    with traced_peak() as peak:
        code = main(["data", "check", str(root)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    rows = [line for line in out.splitlines() if str(bad) in line]
    assert len(rows) == 1 and "too many pixels" in rows[0] and "200,000,000 pixels" in rows[0], out
    assert "in 1 case(s) of 4" in out and "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED


def test_png_bomb_train_refuses(isic_with_bomb, tmp_path, capsys, isolated_global_state):
    root, bad = isic_with_bomb
    out_dir = tmp_path / "out"
    code = main(["train", str(REPO / "bundles" / "isic_light_unet"), "--data", str(root), "--output", str(out_dir),
                 "--no-tracking"])
    _, err = capsys.readouterr()
    assert code == 2, err
    one_line_error(err, "train", bad, "too many pixels")
    assert wrote_nothing(out_dir)


def test_png_bomb_evaluate(tmp_path, capsys):
    from medseg.data.synth.isic import write_isic_dataset

    root = tmp_path / "truth"
    write_isic_dataset(root, cases=3, size=(64, 48), seed=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in sorted((root / "ISIC2018_Task1_Training_GroundTruth").glob("*.png")):
        shutil.copy(mask, pred / mask.name)
    bad = png_bomb(pred / "ISIC_0000001_segmentation.png")  # this case's prediction is the bomb
    csv = tmp_path / "eval" / "metrics.csv"
    with traced_peak() as peak:
        code = main(["evaluate", "--pred", str(pred), "--truth", str(root), "--task", "isic", "--out", str(csv),
                     "--montage-cases", "0"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if "FAILED ISIC_0000001" in line]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many pixels" in failed[0], out
    assert "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED




def test_png_bomb_infer_2d(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 30, np.uint8)).save(folder / "good.png")
    bad = png_bomb(folder / "bomb.png")
    out_dir = tmp_path / "out"
    with traced_peak() as peak:
        code = main(["infer", str(planar_bundle(tmp_path / "bundle")), "--input", str(folder),
                     "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if line.strip().startswith("bomb:")]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many pixels" in failed[0], out
    assert "Traceback" not in out + err
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.png", "good_overlay.png"]
    assert peak[0] < PEAK_TRACED


@needs_wait4
def test_png_bomb_data_check_in_a_real_process_stays_small(isic_with_bomb):
    root, bad = isic_with_bomb
    code, out, err, peak = run_measured("data", "check", root)
    rows = [line for line in out.splitlines() if str(bad) in line and "too many pixels" in line]
    assert code == 1 and rows, out + err
    assert "Traceback" not in out + err and "DecompressionBomb" not in err
    assert peak < PEAK_CHILD, f"peak resident memory {peak / 1024**2:.0f} MB"


def test_pillow_limit_is_a_setting_and_its_warning_an_error(tmp_path, monkeypatch):
    image = tmp_path / "modest.png"
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(image)
    with open_image_2d(image) as img:
        assert img.size == (120, 100)
    # 12,000 pixels: over a limit of 10,000 (where Pillow only warns) and over 5,000 (where it raises).
    pillows_own = Image.MAX_IMAGE_PIXELS
    for limit in ("10000", "5000"):
        monkeypatch.setenv("MEDSEG_MAX_IMAGE_PIXELS", limit)
        with pytest.raises(DataError, match=r"too many pixels \(12,000 pixels, more than the limit") as info:
            open_image_2d(image)
        assert info.value.path == str(image)
    assert Image.MAX_IMAGE_PIXELS == pillows_own  # other code in the process keeps Pillow's limit

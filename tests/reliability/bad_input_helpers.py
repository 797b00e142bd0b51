"""What the bad-input tests share: the broken case, the real DICOM files, and how a refusal is read."""


from pathlib import Path

from rel_helpers import files_under, pydicom_series
from tiny_training import BUNDLE, set_args

from medseg.cli.main import main

CASE = "BraTS2021_00001"  # the case each NIfTI row breaks
GOOD = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
TRAIN_SET = {"max_epochs": "1", "roi_size": "[16,16,16]", "num_workers": "0",
             "network_spec#kwargs#features": "[4,8,16]"}
CT5N = pydicom_series("dicomdirtests", "98892001", "CT5N")  # 5 axial CT slices of 16x16, 2.5 mm apart
SR = pydicom_series("test-SR.dcm")  # Comprehensive SR Storage: no pixels
RTDOSE = pydicom_series("rtdose.dcm")  # RT Dose Storage: a 15-frame dose grid, not an image series
UNET_1CH = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                                       "strides": [2], "num_res_units": 0, "norm": "batch"}}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def one_line_error(err: str, command: str, bad: Path, rule: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medseg {command}: error: {bad}: {rule}"), err
    assert "Traceback" not in err
    return lines[0]


def train_refusal(root: Path, out_dir: Path, capsys, bad: Path, rule: str) -> tuple[str, str]:
    """``medseg train`` on a broken set: exit 2, one line naming ``bad`` and ``rule``, nothing written.

    Returns:
        The error line and the whole of stderr.
    """
    code = main(["train", str(BUNDLE), "--data", str(root), "--output", str(out_dir), *set_args(TRAIN_SET),
                 "--no-tracking"])
    _, err = capsys.readouterr()
    assert code == 2, err
    line = one_line_error(err, "train", bad, rule)
    assert not out_dir.exists() or files_under(out_dir) == set(), "a refused run must write nothing"
    return line, err


def failed_lines(out: str) -> list[str]:
    """The lines of the summary's ``failed (N):`` list."""
    assert "failed (" in out, out
    return [line.strip() for line in out[out.index("failed ("):].splitlines()[1:]]


def infer(bundle: Path, inputs: list[Path], out: Path, *flags: str) -> int:
    return main(["infer", str(bundle), "--input", *map(str, inputs), "--output", str(out), "--no-progress", *flags])

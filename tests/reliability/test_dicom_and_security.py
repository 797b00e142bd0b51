"""DICOM rows of the bad-input matrix, and security: pickles, untrusted bundles, path traversal, PHI.

All inputs are real files: pydicom's bundled CT series ``CT5N`` (5 slices of 16x16) and the
three-series folder ``MR1``, copied and changed with pydicom.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
import torch
from rel_helpers import files_under, pydicom_series, single_channel_bundle
from tiny_training import BUNDLE

from medseg.cli.main import main

CT5N = pydicom_series("dicomdirtests", "98892001", "CT5N")
MR1 = pydicom_series("dicomdirtests", "98892003", "MR1")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1-channel model bundle."""
    return single_channel_bundle(tmp_path_factory.mktemp("bundle1"))


def _by_z(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder of series: a good one, one with its middle slice missing, two series mixed, an empty one."""
    root = tmp_path_factory.mktemp("dicom") / "séries ü"
    good = shutil.copytree(CT5N, root / "good")
    gap = shutil.copytree(CT5N, root / "gap")
    _by_z(gap)[2].unlink()
    mixed = shutil.copytree(MR1, root / "mixed")
    return {"root": root, "good": good, "gap": gap, "mixed": mixed}


def test_dicom_rows_data_check(dicom_set, capsys):
    assert main(["data", "check", str(dicom_set["root"])]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert any(str(dicom_set["gap"]) in r and "missing slice" in r for r in rows), out
    assert any(str(dicom_set["mixed"]) in r and "mixed series" in r for r in rows), out
    assert "2 problem(s) in 2 case(s) of 3 (dicom)" in out and "Traceback" not in out + err


def test_dicom_rows_infer_and_the_empty_folder(dicom_set, bundle, tmp_path, capsys):
    empty = tmp_path / "empty series"
    empty.mkdir()
    out_dir = tmp_path / "out"
    assert main(["infer", str(bundle), "--input", str(dicom_set["root"]), str(empty),
                 "--output", str(out_dir), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    failed = out[out.index("failed ("):].splitlines()[1:]
    assert any(str(dicom_set["gap"]) in line and "missing slice" in line for line in failed), out
    assert any(str(dicom_set["mixed"]) in line and "mixed series" in line for line in failed), out
    assert any(str(empty) in line and "no inputs found" in line for line in failed), out
    assert "Traceback" not in out + err
    assert files_under(out_dir) == {"good.nii.gz"}  # the good series is still segmented, nothing else written


def test_data_check_of_an_empty_dicom_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'empty'}: unknown layout" in err and "no DICOM files" in err


# --- security ---------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: it stands for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (str(self.marker),))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "medseg-checkpoint", "format_version": 1, "epoch": 1, "optimizer_state": {},
                "model_state": _Payload(marker)}, path)
    assert not marker.exists()
    return path


def test_malicious_checkpoint_is_refused_by_infer(bundle, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    code = main(["infer", str(bundle), "--checkpoint", str(evil), "--input", str(CT5N), "--output",
                 str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{evil}: refused" in err and "weights_only=True" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()


def test_malicious_checkpoint_is_refused_by_resume(tiny_brats_rel, tmp_path, capsys, isolated_global_state):
    run = shutil.copytree(BUNDLE, tmp_path / "run")  # stands for an interrupted run's output folder
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(run / "models" / "last.pt", marker)
    code = main(["train", str(BUNDLE), "--resume", str(run), "--data", str(tiny_brats_rel), "--trust-bundle",
                 "--no-tracking", "--set", "num_workers=0", "--set", "roi_size=[16,16,16]",
                 "--set", "network_spec#kwargs#features=[4,8,16]"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"no valid checkpoint to resume from ({evil}: refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_untrusted_bundle_needs_trust_bundle(tiny_brats_rel, tmp_path, capsys, isolated_global_state,
                                             monkeypatch, unused_port):
    monkeypatch.delenv("MEDSEG_TRUSTED_BUNDLES", raising=False)
    bundle = shutil.copytree(BUNDLE, tmp_path / "downloaded bundle")
    marker = tmp_path / "config code ran"
    config = json.loads((bundle / "configs" / "train.json").read_text())
    # Code in the config, evaluated as soon as the tracking URI is read; the URI it yields is unreachable,
    # which stops a trusted run right there.
    config["tracking_uri"] = (f"$(__import__('pathlib').Path({str(marker)!r}).touch(), "
                              f"'http://127.0.0.1:{unused_port}')[1]")
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    args = ["train", str(bundle), "--data", str(tiny_brats_rel), "--output", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bundle}: not a trusted bundle" in err and "--trust-bundle" in err
    assert not marker.exists()
    # With the flag the config's code does run: the refusal above is what kept it from running.
    assert main([*args, "--trust-bundle"]) == 2
    assert "tracking" in capsys.readouterr().err.lower()
    assert marker.exists()


def _retag(folder: Path, **tags: str) -> Path:
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(f)
    return folder


PHI = {"PatientName": "Zyxwv^Quentin", "PatientID": "PID-31415926", "PatientBirthDate": "19210704"}


def test_dicom_tags_and_names_cannot_escape_the_output_folder_or_leak(bundle, tmp_path, capsys, caplog):
    """Case ids come from folder names, sanitised; DICOM tags such as ``../../evil`` never name a file,
    and patient identifiers never reach output names, contents, messages or logs."""
    inputs = tmp_path / "in"
    tagged = _retag(shutil.copytree(CT5N, inputs / "series"), SeriesDescription="../../evil",
                    StudyDescription="../../evil", **PHI)
    dotted = _retag(shutil.copytree(CT5N, inputs / "..\\..\\evil2"), **PHI)
    # The folder is named after the patient: the id must not carry the name.
    named = _retag(shutil.copytree(CT5N, inputs / "Zyxwv Quentin PID-31415926"), **PHI)
    broken = _retag(shutil.copytree(CT5N, inputs / "PID-31415926 partial"), **PHI)
    _by_z(broken)[2].unlink()  # a failing case, so an error message that names its folder is printed too
    out_dir = tmp_path / "deep" / "out"
    before = files_under(tmp_path)
    caplog.set_level("DEBUG")
    assert main(["-v", "infer", str(bundle), "--input", str(inputs), "--output", str(out_dir),
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    # Nothing was written outside the output folder.
    new = files_under(tmp_path) - before
    assert new and all(f.startswith("deep/out/") for f in new), new
    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 3 and "series.nii.gz" in names and "_.._evil2.nii.gz" in names, names
    assert not any("evil" in n and n != "_.._evil2.nii.gz" for n in names)
    for value in (*PHI.values(), "Zyxwv", "Quentin", "31415926"):
        assert value not in text, value
        assert not any(value in n for n in names), names
        for path in out_dir.iterdir():
            assert value.encode() not in gzip.decompress(path.read_bytes()), (value, path)
    assert "missing slice" in text and "<redacted>" in text
    assert tagged.is_dir() and dotted.is_dir() and named.is_dir()

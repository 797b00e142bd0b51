"""Batches: isolation of a bad case, skipping, atomic outputs, safe names, refused output folders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from infer_helpers import NIBABEL_DATA, random_volume, save_volume

from medseg.data.synth.writers import write_brats_dataset
from medseg.errors import MedsegError
from medseg.inference import InferenceOptions, load_inference_model, run_inference, safe_case_id
from medseg.inference.writer import output_paths


def _five_cases(folder: Path) -> list[Path]:
    paths = [save_volume(folder / f"case_{i}.nii.gz", random_volume(i)) for i in range(5)]
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # truncated: the header reads, the voxels do not
    return paths


@pytest.mark.parametrize("flags", [(), ("--serial",)], ids=["pipelined", "serial"])
def test_one_corrupt_case_in_five(multiclass_bundle, infer_cli, tmp_path, capsys, flags):
    paths = _five_cases(tmp_path / "in")
    out = tmp_path / "out"
    assert infer_cli(multiclass_bundle, "--input", *paths, "--output", out, *flags) == 1
    summary = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"case_{i}.nii.gz" for i in (0, 1, 2, 4)]  # no temporaries
    failed = [line for line in summary.splitlines() if "failed" in line and "case_3" in line]
    assert failed and str(paths[3]) in failed[0] and "unreadable" in failed[0]
    assert "4 written, 0 skipped, 1 failed" in summary
    for i in (0, 1, 2, 4):
        img = nib.load(str(out / f"case_{i}.nii.gz"))
        assert img.shape == (20, 18, 12)
        np.testing.assert_allclose(img.affine, nib.load(str(paths[i])).affine, atol=1e-5)


@pytest.mark.parametrize("readers", [1, 3])
def test_pipelined_and_serial_batches_write_the_same_masks(multiclass_bundle, tmp_path, readers):
    # The default loop reads ahead and writes behind while the network runs; it must change
    # nothing but the timing, the corrupt case's isolation included.
    model = load_inference_model(multiclass_bundle)
    paths = _five_cases(tmp_path / "in")
    outs = {"piped": tmp_path / "piped", "serial": tmp_path / "serial"}
    for mode, out in outs.items():
        options = InferenceOptions(device="cpu", progress=False, pipelined=mode == "piped", readers=readers,
                                   save_prob=True)
        report = run_inference(model, paths, out, options)
        assert [o.status for o in report.outcomes] == ["written"] * 3 + ["failed", "written"], mode
        assert str(paths[3]) in report.outcomes[3].detail
    names = sorted(p.name for p in outs["serial"].iterdir())
    assert names == sorted(p.name for p in outs["piped"].iterdir()) and len(names) == 4 * 3
    for name in names:
        serial, piped = nib.load(str(outs["serial"] / name)), nib.load(str(outs["piped"] / name))
        np.testing.assert_array_equal(np.asanyarray(piped.dataobj), np.asanyarray(serial.dataobj))
        np.testing.assert_array_equal(piped.affine, serial.affine)


def test_readers_must_be_positive(multiclass_bundle, infer_cli, tmp_path, capsys):
    source = save_volume(tmp_path / "in" / "scan.nii.gz", random_volume(0))
    assert infer_cli(multiclass_bundle, "--input", source, "--output", tmp_path / "out", "--readers", "0") == 2
    assert "--readers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_skip_existing_and_overwrite(multiclass_bundle, tmp_path):
    model = load_inference_model(multiclass_bundle)
    source = save_volume(tmp_path / "in" / "scan.nii.gz", random_volume(0))
    out = tmp_path / "out"
    first = run_inference(model, [source], out, InferenceOptions(progress=False))
    assert [o.status for o in first.outcomes] == ["written"]
    target = out / "scan.nii.gz"
    target.write_bytes(b"sentinel")
    again = run_inference(model, [source], out, InferenceOptions(progress=False))
    assert [o.status for o in again.outcomes] == ["skipped"] and target.read_bytes() == b"sentinel"
    # Asking for more outputs than exist re-runs the case.
    more = run_inference(model, [source], out, InferenceOptions(progress=False, save_prob=True))
    assert [o.status for o in more.outcomes] == ["written"] and (out / "scan_prob.nii.gz").is_file()
    target.write_bytes(b"sentinel")
    forced = run_inference(model, [source], out, InferenceOptions(progress=False, overwrite=True))
    assert [o.status for o in forced.outcomes] == ["written"]
    assert nib.load(str(target)).shape == (20, 18, 12)


def test_missing_modality_and_channel_mismatch_are_reported(multiclass_bundle, infer_cli, tmp_path, capsys):
    cases = write_brats_dataset(tmp_path / "brats", cases=2, shape=(16, 16, 16), seed=1, fmt="brats2021")
    missing = cases[0] / f"{cases[0].name}_flair.nii.gz"
    missing.unlink()
    assert infer_cli(multiclass_bundle, "--input", tmp_path / "brats", "--output", tmp_path / "out") == 1
    out = capsys.readouterr().out
    assert f"{missing}: missing modality" in out  # names the expected file
    assert "channel count" in out and "model expects 1" in out  # a 4-channel case for a 1-channel model


def test_case_ids_cannot_leave_the_output_folder(multiclass_bundle, infer_cli, tmp_path):
    assert safe_case_id("../../etc/passwd") == "_.._etc_passwd"
    assert safe_case_id("..") == "case" and safe_case_id("") == "case" and safe_case_id(".hidden") == "hidden"
    assert safe_case_id("a\\..\\b\x00c") == "a_.._b_c"
    assert safe_case_id("Müller scan ü") == "Müller scan ü"
    assert len(safe_case_id("x" * 500)) <= 120
    with pytest.raises(MedsegError, match="outside|plain file name"):
        output_paths(tmp_path, "../escape")
    with pytest.raises(MedsegError):
        output_paths(tmp_path, ".hidden")
    # A real file whose name holds backslashes and dots (legal on POSIX, a traversal on Windows).
    evil = save_volume(tmp_path / "in" / "..\\..\\evil.nii.gz", random_volume(1))
    hidden = save_volume(tmp_path / "in" / ".hidden scan.nii.gz", random_volume(2))
    out = tmp_path / "deep" / "out"
    assert infer_cli(multiclass_bundle, "--input", evil, hidden, "--output", out) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["_.._evil.nii.gz", "hidden scan.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


def test_spaces_and_non_ascii_paths(multiclass_bundle, infer_cli, tmp_path):
    from infer_helpers import copy_tree, pydicom_dir

    nifti = save_volume(tmp_path / "in put ü" / "scan é ñ 日本.nii.gz", random_volume(3))
    series = copy_tree(pydicom_dir("dicomdirtests", "98892001", "CT5N"), tmp_path / "séries ü" / "CT 5N é")
    out = tmp_path / "out dir ñ"
    assert infer_cli(multiclass_bundle, "--input", nifti, series.parent, "--output", out) == 0
    assert nib.load(str(out / "scan é ñ 日本.nii.gz")).shape == (20, 18, 12)
    assert (out / "CT 5N é.nii.gz").is_file()


def test_output_inside_an_input_folder_is_refused(multiclass_bundle, infer_cli, tmp_path, capsys):
    data = tmp_path / "data"
    save_volume(data / "scan.nii.gz", random_volume(4))
    assert infer_cli(multiclass_bundle, "--input", data, "--output", data) == 2
    assert infer_cli(multiclass_bundle, "--input", data, "--output", data / "preds") == 2
    err = capsys.readouterr().err
    assert "input folder" in err and str(data) in err
    assert sorted(p.name for p in data.iterdir()) == ["scan.nii.gz"]
    # An output folder that would replace an input file is refused too.
    assert infer_cli(multiclass_bundle, "--input", data / "scan.nii.gz", "--output", data) == 2
    assert "would overwrite the input file" in capsys.readouterr().err


def test_duplicate_names_get_distinct_outputs(multiclass_bundle, tmp_path):
    a = save_volume(tmp_path / "a" / "scan.nii.gz", random_volume(5))
    b = save_volume(tmp_path / "b" / "scan.nii.gz", random_volume(6))
    report = run_inference(load_inference_model(multiclass_bundle), [a, b, NIBABEL_DATA / "anatomical.nii"],
                           tmp_path / "out", InferenceOptions(progress=False))
    assert [o.case_id for o in report.outcomes] == ["scan", "scan-2", "anatomical"] and report.ok


def test_an_unreadable_dataset_json_fails_only_its_input(multiclass_bundle, tmp_path):
    broken = tmp_path / "Task99"
    (broken / "imagesTr").mkdir(parents=True)
    (broken / "dataset.json").write_text("{not json")
    good = save_volume(tmp_path / "in" / "scan.nii.gz", random_volume(9))
    report = run_inference(load_inference_model(multiclass_bundle), [broken, good], tmp_path / "out",
                           InferenceOptions(progress=False))
    assert [o.status for o in report.outcomes] == ["failed", "written"]
    assert "dataset.json" in report.failed[0].detail and "unreadable" in report.failed[0].detail

"""DICOM series: geometry checked with SimpleITK on both sides, DICOM-SEG, clear errors, no patient identifiers."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from infer_helpers import copy_tree, pydicom_dir

CT5N = pydicom_dir("dicomdirtests", "98892001", "CT5N")  # one CT series, 5 slices of 16x16
MR1 = pydicom_dir("dicomdirtests", "98892003", "MR1")  # 3 files from 3 different series


def _series_image(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_sitk_geometry(out: sitk.Image, ref: sitk.Image) -> None:
    assert out.GetSize() == ref.GetSize()
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_dicom_series_geometry_and_dicom_seg(multiclass_bundle, infer_cli, tmp_path):
    import highdicom as hd

    assert infer_cli(multiclass_bundle, "--input", CT5N, "--output", tmp_path / "out", "--dicom-seg",
                     "--save-prob") == 0
    ref = _series_image(CT5N)
    labels = sitk.ReadImage(str(tmp_path / "out" / "CT5N.nii.gz"))
    _assert_sitk_geometry(labels, ref)
    _assert_sitk_geometry(sitk.ReadImage(str(tmp_path / "out" / "CT5N_uncertainty.nii.gz")), ref)
    prob = nib.load(str(tmp_path / "out" / "CT5N_prob.nii.gz"))  # 4D, written with nibabel: the same affine
    assert prob.shape == (16, 16, 5, 3)
    np.testing.assert_allclose(prob.affine, nib.load(str(tmp_path / "out" / "CT5N.nii.gz")).affine, atol=1e-4)
    # The expected labels follow from the series' voxels, in SimpleITK's own index order.
    from infer_helpers import expected_multiclass

    expected, clear = expected_multiclass(sitk.GetArrayFromImage(ref))
    got = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert set(np.unique(got)) <= {0, 1, 4}

    seg = hd.seg.segread(str(tmp_path / "out" / "CT5N_seg.dcm"))
    series_uid = pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.number_of_segments == 2  # label values 1 and 4
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(CT5N))]
    sop_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(sop_uids)
    frames = seg.get_pixels_by_source_instance(sop_uids, combine_segments=True)
    # Segment numbers 1 and 2 stand for label values 1 and 4.
    np.testing.assert_array_equal(np.array([0, 1, 4])[frames][clear], expected[clear])


def test_mixed_series_is_a_clear_error_in_the_summary(multiclass_bundle, infer_cli, tmp_path, capsys):
    assert infer_cli(multiclass_bundle, "--input", MR1, CT5N, "--output", tmp_path / "out") == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(("98892003", "MR1")))
    assert "failed" in line and "mixed series" in line and str(MR1) in line
    assert (tmp_path / "out" / "CT5N.nii.gz").is_file()  # the good series is still segmented


def test_missing_slice_and_empty_folder(multiclass_bundle, infer_cli, tmp_path, capsys):
    broken = copy_tree(CT5N, tmp_path / "in" / "broken")
    files = sorted(broken.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    files[2].unlink()  # the middle slice
    empty = tmp_path / "in2" / "empty"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not DICOM")
    assert infer_cli(multiclass_bundle, "--input", broken, empty, "--output", tmp_path / "out") == 1
    out = capsys.readouterr().out
    assert "missing slice" in out and "broken" in out
    assert "no inputs found" in out and str(empty) in out
    assert not any((tmp_path / "out").iterdir())


def test_patient_identifiers_never_reach_file_names_or_logs(multiclass_bundle, infer_cli, tmp_path, capsys, caplog):
    header = pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True)
    name, pid = str(header.PatientName), str(header.PatientID)  # "Doe^Peter", "98890234"
    parent = tmp_path / "in" / f"{name.replace('^', ' ')} {pid}"
    good = copy_tree(CT5N, parent / "series")
    bad = copy_tree(CT5N, parent / f"{pid}_partial")
    shutil.rmtree(bad)
    bad.mkdir()
    for i in (0, 1, 3):  # 3 of the 5 slices, with a gap: a failing case whose error names its folder
        f = sorted(good.iterdir())[i]
        shutil.copy(f, bad / f.name)
    caplog.set_level(logging.DEBUG)
    code = infer_cli(multiclass_bundle, "--input", parent, "--output", tmp_path / "out", "--dicom-seg")
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert any(n.endswith(".nii.gz") for n in names)
    for ident in (pid, "Doe", "Peter"):
        assert ident not in text, ident
        assert not any(ident in n for n in names), names
    assert code == 1 and "missing slice" in text and "<redacted>" in text


def test_a_failing_dicom_seg_leaves_no_file_behind(multiclass_bundle, infer_cli, tmp_path, monkeypatch, capsys):
    from medseg.inference import volume_task

    def broken_writer(*args, **kwargs):
        def write(path):
            Path(path).write_bytes(b"half")
            raise OSError("disk full")
        return write

    monkeypatch.setattr(volume_task, "dicom_seg_writer", broken_writer)
    assert infer_cli(multiclass_bundle, "--input", CT5N, "--output", tmp_path / "out", "--dicom-seg",
                     "--save-prob") == 1
    assert "disk full" in capsys.readouterr().out
    assert list((tmp_path / "out").iterdir()) == []  # the NIfTI outputs were never renamed into place


def test_a_series_larger_than_the_limit_is_refused_from_its_headers(multiclass_bundle, infer_cli, tmp_path, capsys,
                                                                     monkeypatch):
    """The voxel bound NIfTI headers get holds for DICOM too, before any pixel data is read."""
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", str(10**8))
    assert infer_cli(multiclass_bundle, "--input", CT5N, "--output", tmp_path / "fits") == 0
    # A header that claims 60000x60000 pixels a slice: refused from the headers, no 72 GB is ever asked for.
    forged = copy_tree(CT5N, tmp_path / "in" / "forged")
    for path in forged.iterdir():
        header = pydicom.dcmread(path)
        header.Rows = header.Columns = 60000
        header.save_as(path)
    assert infer_cli(multiclass_bundle, "--input", forged, "--output", tmp_path / "out") == 1
    out = capsys.readouterr().out
    assert "too many voxels" in out and "60000x60000" in out and "no pixel data was read" in out
    assert not any((tmp_path / "out").iterdir())


def test_a_folder_of_dicom_series_and_nifti_files_segments_all_of_them(multiclass_bundle, infer_cli, tmp_path):
    """Neither kind hides the other: each series folder and each NIfTI file beside them is a case."""
    from infer_helpers import random_volume, save_volume

    mixed = tmp_path / "in"
    copy_tree(CT5N, mixed / "CT5N")
    save_volume(mixed / "scan.nii.gz", random_volume(1))
    assert infer_cli(multiclass_bundle, "--input", mixed, "--output", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["CT5N.nii.gz", "scan.nii.gz"]

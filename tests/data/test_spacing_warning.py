"""``medseg data check`` says when the cases have different voxel spacings (issue #15, item 8)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medseg.cli.main import main
from medseg.data.checks import check_dataset
from medseg.data.synth.writers import write_brats_dataset


def _respace(case_dir, spacing):
    """Give every file of a case the same new voxel spacing (the voxels unchanged)."""
    for path in case_dir.glob("*.nii.gz"):
        img = nib.load(path)
        affine = img.affine.copy()
        affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(spacing)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), path)


def test_mixed_spacings_are_reported_with_what_training_does(tmp_path, capsys):
    data = tmp_path / "brats"
    write_brats_dataset(data, cases=4, shape=(16, 16, 16), seed=0)
    assert check_dataset(data).warnings == []
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    _respace(cases[0], (0.9, 0.9, 4.0))
    report = check_dataset(data)
    assert report.ok and len(report.warnings) == 1  # a warning, not a problem: the data are valid
    assert "2 different voxel spacings" in report.warnings[0] and "0.9x0.9x4 mm in 1 case(s)" in report.warnings[0]
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "warning: the cases have 2 different voxel spacings" in out and "pixdim" in out

"""A planned model's inference lands in each input's own geometry: a real DICOM series and NIfTI at other spacings.

The model's checkpoint asks for what a plan asks for: CT normalisation, resampling to 0.7 x 0.7
x 1.2 mm with the slice axis resampled apart, cropping to the non-zero box. pydicom's shipped
CT series ``CT5N`` (16 x 16 x 5 at 2.5 mm slices) and NIfTI files in other orientations and
spacings go through the real ``medseg infer``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from infer_helpers import make_bundle, pydicom_dir

from medseg.networks import build_network

CT5N = pydicom_dir("dicomdirtests", "98892001", "CT5N")
PLANNED = {"normalization": ["ct"],
           "intensity_properties": [{"mean": 40.0, "std": 60.0, "percentile_00_5": -150.0, "percentile_99_5": 250.0}],
           "resampling": {"image_order": 3, "label_order": 0, "separate_axis": 2, "separate_axis_order": 0},
           "crop_foreground": True}


def _bundle(root):
    network = {"name": "dynunet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                                             "kernel_size": [[3, 3, 1], [3, 3, 3], [3, 3, 3]],
                                             "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2]],
                                             "upsample_kernel_size": [[2, 2, 1], [2, 2, 2]], "filters": [4, 8, 8]}}
    torch.manual_seed(0)
    state = build_network(network["name"], **network["kwargs"]).state_dict()
    prep = {"task": "multiclass", "orientation": "RAS", "pixdim": [0.7, 0.7, 1.2], "label_values": [0, 1, 2],
            "channels": ["CT"], "planned": PLANNED}
    return make_bundle(root, network, state, convention="toy", channels=["CT"], preprocessing=prep, roi=[16, 16, 8])


def test_planned_inference_writes_masks_in_the_geometry_of_dicom_and_nifti_inputs(tmp_path):
    bundle = _bundle(tmp_path / "bundle")
    inputs = tmp_path / "in"
    shutil.copytree(CT5N, inputs / "ct")
    rng = np.random.default_rng(0)
    affines = {"lps_thick": np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, -20], [0, 0, 4.0, 5], [0, 0, 0, 1]]),
               "permuted": np.array([[0, 0, 1.5, 0], [0.9, 0, 0, 0], [0, 0.9, 0, 0], [0, 0, 0, 1]])}
    shapes = {"lps_thick": (30, 26, 7), "permuted": (22, 18, 12)}
    for name, affine in affines.items():
        volume = rng.normal(40, 80, shapes[name]).astype(np.float32)
        volume[:3] = -1000.0  # air: kept by the != 0 crop, clipped by the CT normalisation
        nib.save(nib.Nifti1Image(volume, affine), inputs / f"{name}.nii.gz")
    out = tmp_path / "out"
    paths = [str(inputs / "ct"), *(str(inputs / f"{name}.nii.gz") for name in affines)]
    run = subprocess.run([sys.executable, "-m", "medseg", "infer", str(bundle), "--input", *paths, "--output",
                          str(out), "--no-progress"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name, affine in affines.items():
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == shapes[name]
        np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}
    written = sitk.ReadImage(str(out / "ct.nii.gz"))
    series = sitk.ImageSeriesReader()
    series.SetFileNames(list(series.GetGDCMSeriesFileNames(str(CT5N))))
    source = series.Execute()
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-5)


def test_the_checkpoints_plan_decides_the_preprocessing(tmp_path):
    """In process: the prepared image is at the planned spacing, cropped, CT-normalised (clipped)."""
    from medseg.inference.inputs import expand_inputs
    from medseg.inference.model import load_inference_model
    from medseg.inference.preprocess import prepare_case, restore_geometry

    model = load_inference_model(_bundle(tmp_path / "bundle"))
    assert model.planned == PLANNED and model.pixdim == (0.7, 0.7, 1.2)
    volume = np.full((20, 16, 6), -1000.0, dtype=np.float32)
    volume[4:16, 3:13, 1:5] = np.random.default_rng(1).normal(40, 200, (12, 10, 4))
    path = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 3.0, 1.0])), path)
    (case,) = expand_inputs([path], model)
    prepared = prepare_case(case, model)
    assert prepared.image.pixdim.tolist() == [0.7, 0.7, 1.2]
    low, high = (-150.0 - 40.0) / 60.0, (250.0 - 40.0) / 60.0
    values = prepared.image.numpy()
    # Normalised before resampling (nnU-Net's order): air is clipped to the low end, and only the
    # cubic spline's ringing at edges leaves the clip range, never near unclipped air's -17.3.
    assert np.isclose(values, low, atol=1e-3).mean() > 0.3
    assert values.min() > -8.0 and values.max() < high + 3.0
    # Air is not zero, so the != 0 crop keeps the whole field of view: 20 x 0.8 mm -> about 23 voxels.
    assert prepared.image.shape[1] >= 22
    probabilities = torch.softmax(torch.randn(3, *prepared.image.shape[1:]), dim=0)
    back = restore_geometry(probabilities, prepared)
    assert back.shape == (3, 20, 16, 6) and back.min() >= 0.0 and back.max() <= 1.0

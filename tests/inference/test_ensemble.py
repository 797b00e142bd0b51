"""Ensembles average their members' probabilities on each input's own grid; recorded post-processing is applied.

The members are pointwise test networks (registered in this process, so the library is called
directly; ``tests/engine/test_cv.py`` runs ``medseg infer CV_DIR`` on real trained folds).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import make_bundle, pointwise_bundle, random_volume, save_volume

from medseg.checkpoint import set_postprocessing
from medseg.errors import MedsegError
from medseg.inference.batch import run_inference
from medseg.inference.ensemble import check_members
from medseg.inference.model import load_inference_model
from medseg.inference.options import InferenceOptions
from medseg.postprocessing import largest_component

WEIGHTS_A = ([[0.0], [10.0], [20.0]], [0.0, 0.0, -20.0])
WEIGHTS_B = ([[0.0], [6.0], [9.0]], [0.0, 1.0, -4.0])


def _infer(members, image, out, save_prob=False):
    models = [load_inference_model(m) for m in members]
    model = models[0] if len(models) == 1 else check_members(models, [str(m) for m in members])
    report = run_inference(model, [image], out, InferenceOptions(save_prob=save_prob, progress=False))
    assert report.ok, report.format_summary()


def _resampling(root):
    """Member B: the same task, with its own spacing (2 mm) and its own window: another preprocessing."""
    w, b = torch.tensor(WEIGHTS_B[0]), torch.tensor(WEIGHTS_B[1])
    network = {"name": "infer_test_pointwise", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}}
    state = {"weight": w[:, :, None, None, None].contiguous(), "bias": b}
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": [2.0, 2.0, 2.0],
            "channels": ["image"], "label_values": [0, 1, 4]}
    return make_bundle(root, network, state, convention="toy", channels=["image"], preprocessing=prep,
                       roi=[8, 8, 8])


def test_the_ensemble_is_the_mean_of_its_members_on_the_inputs_grid(tmp_path):
    a = pointwise_bundle(tmp_path / "a", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                         label_values=[0, 1, 4])
    b = _resampling(tmp_path / "b")
    image = save_volume(tmp_path / "in" / "scan.nii.gz", random_volume(3))
    for name, members in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        _infer(members, image, tmp_path / name, save_prob=True)
    prob = {n: np.asarray(nib.load(tmp_path / n / "scan_prob.nii.gz").dataobj) for n in ("a", "b", "ab")}
    np.testing.assert_allclose(prob["ab"], (prob["a"] + prob["b"]) / 2, atol=1e-5)  # float32 maps
    mask = nib.load(tmp_path / "ab" / "scan.nii.gz")
    source = nib.load(image)
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
    values = np.asarray([0, 1, 4])[np.argmax(np.moveaxis(prob["ab"], -1, 0), axis=0)]
    agree = np.max(np.moveaxis(prob["ab"], -1, 0), axis=0) > 0.51  # away from ties
    assert (np.asarray(mask.dataobj)[agree] == values[agree]).all()


def test_members_that_segment_other_things_are_refused(tmp_path):
    a = pointwise_bundle(tmp_path / "a", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                         label_values=[0, 1, 4])
    other = pointwise_bundle(tmp_path / "other", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                             label_values=[0, 1, 2])
    image = save_volume(tmp_path / "in" / "scan.nii.gz", random_volume(3))
    with pytest.raises(MedsegError, match="cannot join an ensemble") as err:
        _infer([a, other], image, tmp_path / "out")
    assert str(tmp_path / "other") in str(err.value)
    assert not (tmp_path / "out" / "scan.nii.gz").exists()
    with pytest.raises(MedsegError, match="at least two"):
        check_members([load_inference_model(a)], [str(a)])


def test_a_recorded_postprocessing_is_applied_to_the_mask(tmp_path):
    a = pointwise_bundle(tmp_path / "a", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                         label_values=[0, 1, 4])
    volume = np.full((24, 24, 16), 10.0, dtype=np.float32)
    volume[2:9, 2:9, 2:9] = 30.0  # a big bright blob and a small one far from it: class 4 twice
    volume[18:20, 18:20, 12:14] = 30.0
    image = save_volume(tmp_path / "in" / "scan.nii.gz", volume)
    _infer([a], image, tmp_path / "plain")
    before = np.asarray(nib.load(tmp_path / "plain" / "scan.nii.gz").dataobj)
    set_postprocessing(a / "models" / "model.pt", {"largest_component": ["4"], "et_min_voxels": None})
    config = json.loads((a / "configs" / "inference.json").read_text())
    _infer([a], image, tmp_path / "post")
    after = np.asarray(nib.load(tmp_path / "post" / "scan.nii.gz").dataobj)
    assert (before == 4).sum() == 7**3 + 2**3
    assert ((after == 4) == largest_component(before == 4)).all() and (after == 4).sum() == 7**3
    assert (after[18:20, 18:20, 12:14] == 0).all() and ((after == 1) == (before == 1)).all()
    assert config == json.loads((a / "configs" / "inference.json").read_text())

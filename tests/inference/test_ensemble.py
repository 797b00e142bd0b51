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


def test_an_exported_ensemble_bundle_runs_under_monai_with_each_members_own_preprocessing(tmp_path, monkeypatch):
    """The bundle's own config (MONAI's workflow) writes what medseg infer writes for the same members.

    Member B resamples to 2 mm and has its own window, and the input is LPS: each member's own
    preprocessing is undone on the input's grid before the mean.
    """
    from monai.bundle import ConfigWorkflow

    from medseg.export.ensemble import export_ensemble
    from medseg.inference.ensemble import ensemble_members

    monkeypatch.chdir(tmp_path)
    a = pointwise_bundle(tmp_path / "a", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                         label_values=[0, 1, 4])
    b = _resampling(tmp_path / "b")
    ens = export_ensemble([a, b], tmp_path / "ens")
    assert ensemble_members([ens]) == [(ens / "members" / f"member_{k}").resolve() for k in range(2)]
    # An nnU-Net layout without labelsTr: segmenting needs none, by either route.
    save_volume(tmp_path / "in" / "imagesTr" / "scan_0000.nii.gz", random_volume(3))
    (tmp_path / "in" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "image"}, "numTraining": 1,
                                                              "labels": {"background": 0, "a": 1, "b": 4},
                                                              "file_ending": ".nii.gz"}))
    _infer([a, b], tmp_path / "in", tmp_path / "pair")
    _infer(ensemble_members([ens]), tmp_path / "in", tmp_path / "bundle")
    workflow = ConfigWorkflow(config_file=str(ens / "configs" / "inference.json"), workflow_type="infer",
                              dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "monai"))
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    expected = nib.load(tmp_path / "pair" / "scan.nii.gz")
    for name in ("bundle", "monai"):
        mask = nib.load(tmp_path / name / "scan.nii.gz")
        assert mask.shape == expected.shape and np.allclose(mask.affine, expected.affine), name
        assert (np.asarray(mask.dataobj) == np.asarray(expected.dataobj)).all(), name


def test_an_ensemble_bundle_is_checked_before_use_and_never_written_over(tmp_path):
    from medseg.export.ensemble import export_ensemble
    from medseg.inference.ensemble import bundle_members

    a = pointwise_bundle(tmp_path / "a", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                         label_values=[0, 1, 4])
    other = pointwise_bundle(tmp_path / "other", *WEIGHTS_A, convention="toy", channels=["image"], task="multiclass",
                             label_values=[0, 1, 2])
    with pytest.raises(MedsegError, match="cannot join an ensemble"):
        export_ensemble([a, other], tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused.partial-*"))
    ens = export_ensemble([a, a], tmp_path / "ens")
    before = (ens / "configs" / "inference.json").read_bytes()
    with pytest.raises(MedsegError, match="already exists"):
        export_ensemble([a, a], ens)
    assert (ens / "configs" / "inference.json").read_bytes() == before
    config = json.loads(before)
    for bad, why in ((["../a", "members/member_0"], "not a folder inside"), (["members/member_0"], "2 to 64"),
                     (["members/member_0", "members/none"], "no models/model.pt"), ("members", "2 to 64")):
        (ens / "configs" / "inference.json").write_text(json.dumps({**config, "ensemble_members": bad}))
        with pytest.raises(MedsegError, match=why) as err:
            bundle_members(ens)
        assert str(ens / "configs" / "inference.json") in str(err.value)

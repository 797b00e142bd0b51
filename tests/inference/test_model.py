"""Loading a model and its settings: plain JSON only, overrides, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infer_helpers import ROI, pointwise_bundle

import medseg
from medseg.errors import MedsegError
from medseg.inference import load_inference_model
from medseg.inference.model import read_bundle_settings

REPO_BUNDLES = Path(medseg.__file__).resolve().parents[1] / "bundles"


def test_settings_come_from_plain_json_and_the_command_line(multiclass_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = read_bundle_settings(multiclass_bundle)
    assert settings == {"roi_size": ROI, "sw_batch_size": 2, "sw_overlap": 0.25}
    model = load_inference_model(multiclass_bundle)
    assert (model.roi_size, model.sw_batch_size, model.overlap) == (tuple(ROI), 2, 0.25)
    assert model.task == "multiclass" and model.label_values == (0, 1, 4) and model.activation == "softmax"
    model = load_inference_model(multiclass_bundle, roi_size=(8, 8, 8), sw_batch_size=1, overlap=0.1)
    assert (model.roi_size, model.sw_batch_size, model.overlap) == ((8, 8, 8), 1, 0.1)
    assert not (tmp_path / "EXECUTED").exists()


def test_expressions_in_the_config_are_not_evaluated(multiclass_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes((multiclass_bundle / "models" / "model.pt").read_bytes())
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"roi_size": "$__import__('pathlib').Path('EXECUTED').touch() or [8, 8, 8]", "sw_overlap": "@overlap"}))
    model = load_inference_model(bundle)
    assert model.roi_size == (96, 96, 96) and model.overlap == 0.5  # the defaults
    assert not (tmp_path / "EXECUTED").exists()


def test_source_bundle_without_weights_says_what_to_do():
    with pytest.raises(MedsegError, match="no trained model.*--checkpoint"):
        load_inference_model(REPO_BUNDLES / "generic_3d")


@pytest.mark.parametrize("kwargs, message", [
    ({"overlap": 1.0}, "sw_overlap must be a number in \\[0, 1\\)"),
    ({"sw_batch_size": 0}, "sw_batch_size must be an integer >= 1"),
    ({"roi_size": (8, 8)}, "roi_size must be 3 positive integers"),
])
def test_bad_settings(multiclass_bundle, kwargs, message):
    with pytest.raises(MedsegError, match=message):
        load_inference_model(multiclass_bundle, **kwargs)


def test_region_model_checks_its_outputs(tmp_path):
    good = pointwise_bundle(tmp_path / "g", [[1.0] * 4] * 3, [0.0] * 3, convention="brats2021",
                            channels=["t1", "t1ce", "t2", "flair"], task="regions", output_names=["ET", "TC", "WT"])
    model = load_inference_model(good)
    assert model.region_order == (1, 2, 0) and model.label_values == (0, 1, 2, 4)
    bad = pointwise_bundle(tmp_path / "b", [[1.0] * 4] * 2, [0.0] * 2, convention="brats2021",
                           channels=["t1", "t1ce", "t2", "flair"], task="regions")
    with pytest.raises(MedsegError, match="needs 3 outputs"):
        load_inference_model(bad)
    classes = pointwise_bundle(tmp_path / "c", [[1.0]] * 2, [0.0] * 2, convention="toy", channels=["image"],
                               task="multiclass", label_values=[0, 1, 2])
    with pytest.raises(MedsegError, match="label_values"):
        load_inference_model(classes)


def test_missing_bundle_and_checkpoint(tmp_path):
    with pytest.raises(MedsegError, match="bundle folder not found"):
        load_inference_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match="file not found"):
        load_inference_model(tmp_path / "empty", checkpoint=tmp_path / "missing.pt")

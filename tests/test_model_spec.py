"""The checkpoint's model description (ModelSpec): round trip, old files, refusals, size divisor, bundle config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medseg.checkpoint import (
    LEGACY_INFERENCE,
    InferenceSettings,
    ModelSpec,
    build_from_checkpoint,
    read_model_spec,
    save_checkpoint,
)
from medseg.engine.handlers.output_bundle import OutputBundleHandler
from medseg.engine.handlers.record import run_record
from medseg.engine.handlers.run_state import RunStateHandler
from medseg.errors import MedsegError
from medseg.inference.model import load_inference_model
from medseg.networks import build_network

REPO = Path(__file__).resolve().parents[1]
UNET3D = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                                     "strides": [2], "num_res_units": 0}}
PREP3D = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
          "label_values": [0, 1]}


def _net(network: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(network["name"], **network["kwargs"]).eval()


def _spec(**changes) -> ModelSpec:
    spec = ModelSpec.create(UNET3D, "toy", ["ct"], ["background", "class 1"], PREP3D,
                            InferenceSettings(roi_size=(32, 32, 16), sw_batch_size=2, overlap=0.25))
    return ModelSpec(**{**spec.__dict__, **changes})


def test_spec_round_trip(tmp_path):
    spec = _spec()
    path = save_checkpoint(tmp_path / "model.pt", _net(UNET3D), spec=spec, epoch=3)
    read, _ = read_model_spec(path)
    assert read == spec
    assert (read.task, read.spatial_dims, read.inference.mode, read.inference.tta_axes) == ("multiclass", 3,
                                                                                            "gaussian", ())
    # the keyword form writes the same description
    same = save_checkpoint(tmp_path / "kw.pt", _net(UNET3D), network=UNET3D, label_convention="toy",
                           channel_names=["ct"], preprocessing=PREP3D,
                           extra={"output_names": ["background", "class 1"]},
                           inference={"roi_size": [32, 32, 16], "sw_batch_size": 2, "sw_overlap": 0.25})
    assert read_model_spec(same)[0] == spec
    # inference without a bundle takes the checkpoint's own settings
    model = load_inference_model(None, checkpoint=path)
    assert (model.roi_size, model.sw_batch_size, model.overlap) == ((32, 32, 16), 2, 0.25)


def _old_bundle(root: Path, payload: dict) -> Path:
    (root / "models").mkdir(parents=True)
    torch.save(payload, root / "models" / "model.pt")
    return root


@pytest.mark.parametrize("version", [1, 2])
def test_old_checkpoints_load_with_the_settings_their_runs_used(tmp_path, version):
    """Format 1 (weights under ``model_state``) and format 2 written before the spec: no ``inference`` entry."""
    net = _net(UNET3D)
    weights_key = "model_state" if version == 1 else "model"
    payload = {"format": "medseg-checkpoint", "format_version": version, "network": UNET3D, weights_key:
               net.state_dict(), "label_convention": "toy", "channel_names": ["ct"], "preprocessing": PREP3D,
               "epoch": 3, "best_metric": 0.5, "extra": {"output_names": None, "selected": "best"}}
    if version == 2:
        payload["versions"] = {"medseg": "0.1.0", "monai": "1.4.0", "torch": "2.5.0"}
    bundle = _old_bundle(tmp_path / "run", payload)
    spec, _ = read_model_spec(bundle / "models" / "model.pt")
    assert spec.inference is None and spec.network == "unet" and spec.channel_names == ("ct",)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(build_from_checkpoint(bundle / "models" / "model.pt")(x), net(x))
    alone = load_inference_model(bundle)  # no configs/inference.json: the settings inference always used
    assert (alone.roi_size, alone.sw_batch_size, alone.overlap) == (LEGACY_INFERENCE.roi_size, 4, 0.5)
    (bundle / "configs").mkdir()  # the output bundle's config: what the run used
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"roi_size": [128, 128, 128], "sw_batch_size": 4, "sw_overlap": 0.5}))
    model = load_inference_model(bundle)
    assert (model.roi_size, model.sw_batch_size, model.overlap) == ((128, 128, 128), 4, 0.5)


@pytest.mark.parametrize("field, value, where", [
    ("channel_names", "ct", "'channel_names'"),
    ("label_convention", 3, "'label_convention'"),
    ("preprocessing", ["RAS"], "'preprocessing'"),
    ("extra", {"output_names": [1, 2]}, "'extra.output_names'"),
    ("inference", {"roi_size": [32, 32, 16], "sw_overlap": 1.5}, "'inference.sw_overlap'"),
    ("inference", {"roi_size": [32, -1, 16]}, "'inference.roi_size'"),
    ("inference", {"roi_size": [32, 32, 16], "mode": "max"}, "'inference.mode'"),
    ("network", {"net": "unet"}, "the network spec must be"),
])
def test_a_malformed_field_is_refused_naming_file_and_field(tmp_path, field, value, where):
    path = save_checkpoint(tmp_path / "bad.pt", _net(UNET3D), spec=_spec())
    ckpt = torch.load(path, weights_only=True)
    ckpt[field] = value
    torch.save(ckpt, path)
    with pytest.raises(MedsegError, match=f"bad.pt: .*{where}"):
        read_model_spec(path)
    with pytest.raises(MedsegError, match=f"bad.pt: .*{where}"):
        build_from_checkpoint(path)


@pytest.mark.parametrize("network, divisor", [
    ({"name": "light_unet", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                       "features": [4, 8, 16]}}, 4),
    ({"name": "deeplabv3plus", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                          "encoder_depth": 10, "encoder_channels": [4, 8, 16, 16],
                                          "aspp_channels": 8, "low_level_channels": 4, "aspp_dilations": [1, 2]}},
     32),
    ({"name": "attention_unet3d", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                             "features": [4, 8, 16]}}, 4),
    ({"name": "attention_unet3d", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                             "features": [4, 8, 16], "strides": [1, 2]}}, 2),
])
def test_the_size_divisor_comes_from_the_registry(tmp_path, network, divisor):
    path = save_checkpoint(tmp_path / "m.pt", _net(network), network=network)
    spec, _ = read_model_spec(path)
    assert spec.size_divisor == divisor
    if spec.spatial_dims == 2:
        prep = {"task": "binary", "spatial_dims": 2, "image_size": [64, 64], "resize": "stretch", "normalize": "none"}
        planar = save_checkpoint(tmp_path / "p.pt", _net(network), network=network, preprocessing=prep)
        assert load_inference_model(None, checkpoint=planar).size_divisor == divisor


@pytest.mark.parametrize("bundle", ["generic_3d", "brats_segresnet", "isic_light_unet"])
def test_output_bundle_inference_config_takes_the_spec(tmp_path, bundle):
    source = REPO / "bundles" / bundle
    train = json.loads((source / "configs" / "train.json").read_text())
    block = next(h for h in train["train"]["handlers"] if h["_target_"].endswith("RunStateHandler"))
    ids = {k: v for k, v in block.items() if k in ("roi_size", "sw_batch_size", "sw_overlap")}
    assert ids and all(v == f"@{k}" for k, v in ids.items())  # the settings are the bundle's own ids
    network = torch.nn.Linear(1, 1)
    spec = {"name": "segresnet", "kwargs": {"spatial_dims": 3, "in_channels": 2, "out_channels": 3}}
    handler = RunStateHandler(tmp_path / "out", network, spec, torch.optim.SGD(network.parameters(), lr=0.1),
                              label_convention="toy", preprocessing={**PREP3D, "label_values": [0, 1, 2]},
                              **{k: [40, 40, 24] if k == "roi_size" else train[k] for k in ids})
    engine = SimpleNamespace(state=SimpleNamespace(), add_event_handler=lambda *a: None)
    handler.attach(engine)
    assert run_record(engine).model_spec is handler.spec
    work = shutil.copytree(source, tmp_path / "source")
    OutputBundleHandler(work, tmp_path / "out", values={}).write_configs(engine)
    written = json.loads((tmp_path / "out" / "configs" / "inference.json").read_text())
    expected = {k: v for k, v in handler.spec.bundle_values().items() if k in written}
    assert {k: written[k] for k in expected} == json.loads(json.dumps(expected))
    assert written["roi_size"] == [40, 40, 24] and written["network_spec"] == spec
    if "sw_overlap" in written:
        assert (written["sw_batch_size"], written["sw_overlap"]) == (train["sw_batch_size"], train["sw_overlap"])

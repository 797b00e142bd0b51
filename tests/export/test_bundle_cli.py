"""``medseg export BUNDLE``: reads the bundle's configs and weights, exports, checks parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.checkpoint import save_checkpoint
from medseg.cli.main import main
from medseg.errors import MedsegError
from medseg.export import bundle_example_input, export_bundle, run_exported
from medseg.networks import build_network

KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": [4, 8, 16]}
PLANAR_PREP = {"task": "binary", "spatial_dims": 2, "image_size": [32, 32], "resize": "stretch", "normalize": "none",
               "channels": ["R", "G", "B"]}


def make_bundle(root, spatial_shape=(32, 32), weights="checkpoint"):
    """A minimal bundle: configs/inference.json, configs/metadata.json and models/model.pt."""
    (root / "configs").mkdir(parents=True)
    network_def = {"_target_": "medseg.networks.build_network", "name": "light_unet", **KWARGS}
    (root / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    meta = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 3, "spatial_shape": list(spatial_shape)}}
        }
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.manual_seed(7)
    model = build_network("light_unet", **KWARGS)
    (root / "models").mkdir()
    if weights == "checkpoint":
        save_checkpoint(root / "models" / "model.pt", model, network={"name": "light_unet", "kwargs": KWARGS},
                        preprocessing=PLANAR_PREP, channel_names=["R", "G", "B"])
    elif weights == "plain":
        torch.save(model.state_dict(), root / "models" / "model.pt")
    return model.eval()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("weights", ["checkpoint", "plain"])
def test_export_bundle_loads_the_weights_and_checks_parity(tmp_path, fmt, weights):
    model = make_bundle(tmp_path / "bundle", weights=weights)
    result = export_bundle(tmp_path / "bundle", fmt)
    assert result.path == tmp_path / "bundle" / "models" / (
        "model.ts" if fmt == "torchscript" else "model.onnx"
    )
    assert result.passed and result.max_abs_diff <= 1e-4
    assert result.input_shape == (1, 3, 32, 32)
    assert result.weights == tmp_path / "bundle" / "models" / "model.pt"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            run_exported(result.path, x), model(x), atol=1e-4, rtol=0
        )  # the saved weights


def test_cli_prints_parity_and_honours_out_and_checkpoint(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, weights="none")
    torch.manual_seed(3)
    other = build_network("light_unet", **KWARGS)
    ckpt = tmp_path / "elsewhere.pt"
    torch.save(other.state_dict(), ckpt)
    out = tmp_path / "exports" / "net.onnx"
    assert (
        main(["export", str(bundle), "--format", "onnx", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert f"exported onnx: {out}" in printed and "parity max abs diff:" in printed and " ok" in printed
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_exported(out, x), other.eval()(x), atol=1e-4, rtol=0)


def test_bundle_without_weights_exports_initial_weights_with_a_warning(tmp_path, caplog):
    make_bundle(tmp_path / "b", weights="none")
    result = export_bundle(tmp_path / "b", "torchscript")
    assert result.weights is None and result.passed
    assert "exporting the initial weights" in caplog.text


def test_variable_spatial_shapes_in_metadata(tmp_path):
    make_bundle(tmp_path / "b", spatial_shape=("16*n", "32*n"), weights="none")
    assert bundle_example_input(tmp_path / "b") == (1, 3, 64, 64)


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "nope: bundle folder not found" in capsys.readouterr().err
    bundle = tmp_path / "b"
    make_bundle(bundle)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": "x"}))
    assert main(["export", str(bundle), "--format", "onnx"]) == 2
    assert "needs network_data_format.inputs.image.num_channels" in capsys.readouterr().err
    plain = tmp_path / "plain"
    make_bundle(plain, weights="plain")
    (plain / "configs" / "inference.json").write_text(json.dumps({"net": {}}))
    with pytest.raises(MedsegError, match=r"no network spec to build from: the weights are a plain state dict"):
        export_bundle(plain, "onnx")
    with pytest.raises(MedsegError, match=r"no 'network_def' entry \(top-level keys: \['net'\]\)"):
        export_bundle(plain, "onnx", trust=True)
    assert main(["export", str(bundle), "--format", "torchscript", "--int8"]) == 2
    assert "--int8 needs --format onnx" in capsys.readouterr().err


def test_cli_int8_calibrates_on_the_users_images(tmp_path, capsys):
    """INT8 activation ranges come from real images preprocessed as inference does, not from noise."""
    from medseg.data.synth.isic import write_isic_dataset
    from medseg.export.calibration import calibration_batches

    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    assert main(["export", str(bundle), "--format", "onnx", "--int8"]) == 2
    assert "--int8 needs --calibration-data" in capsys.readouterr().err
    images = tmp_path / "isic"
    write_isic_dataset(images, cases=5, size=(60, 40), seed=0)
    batches = calibration_batches(bundle, [images], (1, 3, 32, 32))
    assert len(batches) == 5 and all(b.shape == (1, 3, 32, 32) and b.dtype == np.float32 for b in batches)
    assert all(0.0 <= b.min() and b.max() <= 1.0 and b.std() > 0.01 for b in batches)  # RGB / 255, resized
    assert main(["export", str(bundle), "--format", "onnx", "--int8", "--calibration-data", str(images)]) == 0
    assert (bundle / "models" / "model.int8.onnx").is_file()
    assert "int8: " in capsys.readouterr().out


def test_3d_calibration_cuts_preprocessed_patches(tmp_path):
    from medseg.data.synth.writers import write_brats_dataset
    from medseg.export.calibration import calibration_batches

    bundle = tmp_path / "b"
    network = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [4, 8],
                                          "strides": [2], "num_res_units": 0}}
    channels = ["t1", "t1ce", "t2", "flair"]
    save_checkpoint(bundle / "models" / "model.pt", build_network(network["name"], **network["kwargs"]),
                    network=network, label_convention="brats2021", channel_names=channels,
                    preprocessing={"task": "regions", "orientation": "RAS", "normalize": "nonzero_channel_wise",
                                   "channels": channels}, extra={"output_names": ["TC", "WT", "ET"]})
    data = tmp_path / "brats"
    write_brats_dataset(data, cases=2, shape=(24, 20, 16), seed=1)
    batches = calibration_batches(bundle, [data], (1, 4, 16, 16, 16))
    assert len(batches) == 2 and all(b.shape == (1, 4, 16, 16, 16) for b in batches)
    # Channel-wise z-scored over the brain (the raw synthetic intensities are in the hundreds): values of
    # order one, not raw intensities and not noise drawn for the occasion.
    inside = batches[0][batches[0] != 0]
    assert inside.size > 1000 and np.isfinite(inside).all()
    assert float(np.abs(inside).max()) < 20 and 0.2 < float(inside.std()) < 3

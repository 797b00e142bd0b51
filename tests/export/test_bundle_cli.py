"""``medseg export BUNDLE``: reads the bundle's configs and weights, exports, checks parity."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.checkpoint import save_checkpoint
from medseg.cli.main import main
from medseg.errors import MedsegError
from medseg.export import bundle_example_input, export_bundle, run_exported
from medseg.networks import build_network

KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": [4, 8, 16]}


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
        save_checkpoint(root / "models" / "model.pt", model, network={"name": "light_unet", "kwargs": KWARGS})
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


def test_cli_int8_writes_a_quantized_model_beside_the_export(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    assert main(["export", str(bundle), "--format", "onnx", "--int8"]) == 0
    assert (bundle / "models" / "model.int8.onnx").is_file()
    assert "int8: " in capsys.readouterr().out

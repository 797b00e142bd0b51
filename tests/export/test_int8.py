"""INT8 static quantization of the 2D light UNet through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from medseg.errors import MedsegError
from medseg.export import dice_between, export_onnx, int8_report, quantize_onnx_int8, run_exported
from medseg.networks import build_network


def test_light_unet_quantizes_to_int8_and_reports_its_figures(tmp_path):
    torch.manual_seed(0)
    model = build_network("light_unet", spatial_dims=2, in_channels=3, out_channels=2).eval()  # default width
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    fp32 = export_onnx(model, torch.from_numpy(images[0]), tmp_path / "lu.onnx")
    int8 = quantize_onnx_int8(fp32, tmp_path / "lu.int8.onnx", images[:4])

    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 10  # the convolution kernels are stored as int8

    out = run_exported(int8, torch.from_numpy(images[5]))
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()
    labels = [rng.random((1, 32, 32)) > 0.5 for _ in images[4:]]
    report = int8_report(fp32, int8, images[4:], labels, repeats=2)
    assert report["int8_bytes"] < report["fp32_bytes"] / 2.5
    assert report["fp32_ms"] > 0 and report["int8_ms"] > 0
    assert 0.0 <= report["dice_int8_vs_fp32"] <= 1.0
    assert report["dice_change"] == pytest.approx(report["dice_int8"] - report["dice_fp32"], abs=1e-4)


def test_dice_between_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_between(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert dice_between(a, b) == pytest.approx(0.5)


def test_quantization_needs_calibration_data(tmp_path):
    with pytest.raises(MedsegError, match="at least one calibration batch"):
        quantize_onnx_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", [])
    with pytest.raises(MedsegError, match="`calibrate_method` must be one of"):
        quantize_onnx_int8(
            tmp_path / "x.onnx", tmp_path / "y.onnx", [np.zeros((1, 1, 4, 4))], calibrate_method="kl"
        )

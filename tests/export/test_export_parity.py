"""Every registered network exports to TorchScript and ONNX, matching PyTorch within 1e-4 (fp32)."""

from __future__ import annotations

import importlib.util

import onnx
import pytest
import torch
from torch import nn

from medseg.export import ExportNotSupported, check_parity, export_onnx, export_torchscript, run_exported
from medseg.networks import build_network, list_networks, network_info

# Smallest input edge each network accepts (stride products, SwinUNETR's 1/32 bottleneck).
EDGE = {"flexible_unet": 32, "deeplabv3plus": 32, "swinunetr": 64}
FORMATS = {"torchscript": (export_torchscript, ".ts"), "onnx": (export_onnx, ".onnx")}
CASES = [(n, d, f) for n in list_networks() for d in network_info(n).spatial_dims for f in FORMATS]


@pytest.mark.slow  # about a minute in all on 2 CPU cores (more with einops, for SwinUNETR)
@pytest.mark.parametrize(("name", "dims", "fmt"), CASES, ids=[f"{n}-{d}d-{f}" for n, d, f in CASES])
def test_export_matches_pytorch(tmp_path, name, dims, fmt):
    if name == "swinunetr" and importlib.util.find_spec("einops") is None:
        pytest.skip("swinunetr needs the einops package, which is not installed")
    torch.manual_seed(0)
    # The tiny registered configuration: the export path is what is tested here, not capacity.
    kwargs = network_info(name).smoke_kwargs
    model = build_network(name, spatial_dims=dims, in_channels=2, out_channels=3, **kwargs).eval()
    edge = EDGE.get(name, 16)
    example = torch.randn((1, 2) + (edge,) * dims, generator=torch.Generator().manual_seed(1))
    export, suffix = FORMATS[fmt]
    path = export(model, example, tmp_path / f"{name}{suffix}", name=name)
    assert check_parity(model, path, example) <= 1e-4
    fixed = network_info(name).fixed_export_shape
    if fmt == "onnx":
        shape = [
            d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        ]
        assert shape == (
            list(example.shape) if fixed else ["batch", 2] + [f"spatial{i}" for i in range(dims)]
        )
    if dims == 2 and not fixed:  # dynamic axes, checked where cheap
        bigger = torch.randn((2, 2) + (2 * edge,) * dims, generator=torch.Generator().manual_seed(2))
        assert check_parity(model, path, bigger) <= 1e-4


class _Unexportable(nn.Module):
    """Returns a Python float built by a generator expression: neither scriptable, traceable nor ONNX-able."""

    def forward(self, x: torch.Tensor) -> float:
        return float(sum(v for v in x.flatten().tolist()))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_network_that_cannot_export_says_so(tmp_path, fmt):
    export, suffix = FORMATS[fmt]
    target = tmp_path / f"bad{suffix}"
    label = "TorchScript" if fmt == "torchscript" else "ONNX"
    with pytest.raises(ExportNotSupported, match=f"network 'toy' cannot be exported to {label}"):
        export(_Unexportable(), torch.randn(1, 1, 4, 4), target, name="toy")
    assert not target.exists()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_deep_supervision_networks_export_their_eval_output(tmp_path, fmt):
    torch.manual_seed(0)
    model = build_network(
        "attention_unet3d",
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        features=(4, 8, 16),
        deep_supervision=True,
        deep_supervision_levels=1,
    ).train()
    x = torch.randn(1, 1, 16, 16)
    export, suffix = FORMATS[fmt]
    path = export(model, x, tmp_path / f"ds{suffix}")
    assert model.training  # the caller's mode is restored
    assert run_exported(path, x).shape == (1, 2, 16, 16)  # one tensor, not the training-time list
    assert check_parity(model, path, x) <= 1e-4

"""Loading a local ResNet state dict into a network's encoder, with a report of what matched."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.networks.nets.resnet import ResNet
from safetensors.torch import save_file

from medseg.errors import MedsegError
from medseg.networks import build_network
from medseg.transfer import load_encoder_weights, read_state_dict, with_encoder_weights

WIDTHS = (8, 16, 32, 64)


def deeplab():
    torch.manual_seed(0)
    return build_network(
        "deeplabv3plus",
        in_channels=3,
        out_channels=2,
        encoder_depth=10,
        encoder_channels=WIDTHS,
        aspp_channels=8,
        low_level_channels=4,
    )


def pretrained_resnet(in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A MONAI ResNet-10 classifier as a stand-in for downloaded ImageNet weights (torchvision key names)."""
    torch.manual_seed(42)
    net = ResNet(
        "basic",
        [1, 1, 1, 1],
        list(WIDTHS),
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=5,
    )
    return net.state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_resnet_state_dict_loads_into_the_encoder_and_reports_matches(tmp_path, suffix, caplog):
    state = pretrained_resnet()
    path = tmp_path / f"resnet10{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = deeplab()
    with caplog.at_level(logging.INFO, logger="medseg.transfer.weights"):
        report = load_encoder_weights(model.encoder, path)
    encoder_keys = set(model.encoder.state_dict())
    assert set(report.matched) == encoder_keys
    assert report.missing == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.shape_mismatched == []
    assert f"{len(encoder_keys)} keys matched; 2 unexpected" in report.summary()
    assert "keys matched" in caplog.text
    for key in ("conv1.weight", "layer4.0.conv2.weight", "bn1.running_mean"):
        torch.testing.assert_close(model.encoder.state_dict()[key], state[key])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrapper):
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: pretrained_resnet(), "epoch": 90}, path)
    assert "conv1.weight" in read_state_dict(path)


def test_prefix_map_and_the_no_match_error(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.backbone.{k}": v for k, v in pretrained_resnet().items()}, path)
    model = deeplab()
    with pytest.raises(
        MedsegError, match=r"ddp.pt: no key matches ResNet \(file keys e.g. \['module.backbone.conv1"
    ):
        load_encoder_weights(model.encoder, path)
    report = load_encoder_weights(model.encoder, path, prefix_map={"module.backbone.": ""})
    assert len(report.matched) == len(model.encoder.state_dict())
    # The whole model, mapping the file's keys under `encoder.`:
    report = load_encoder_weights(model, path, prefix_map={"module.backbone.": "encoder."})
    assert len(report.matched) == len(model.encoder.state_dict())
    assert "aspp.project.conv.weight" in report.missing


def test_shape_mismatches_are_reported_and_strict_fails(tmp_path):
    path = tmp_path / "grey.pt"
    torch.save(pretrained_resnet(in_channels=1), path)
    model = deeplab()
    report = load_encoder_weights(model.encoder, path)
    assert report.shape_mismatched == [("conv1.weight", (8, 1, 7, 7), (8, 3, 7, 7))]
    assert "conv1.weight" not in report.matched
    with pytest.raises(MedsegError, match="strict loading failed.*1 shape-mismatched"):
        load_encoder_weights(model.encoder, path, strict=True)


def test_flexible_unet_encoder_takes_a_monai_resnet10(tmp_path):
    torch.manual_seed(0)
    source = ResNet(
        "basic",
        [1, 1, 1, 1],
        [64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=3,
    )
    path = tmp_path / "resnet10.pt"
    torch.save(source.state_dict(), path)
    model = build_network("flexible_unet", spatial_dims=2, in_channels=1, backbone="resnet10")
    assert with_encoder_weights(model, path) is model
    torch.testing.assert_close(model.encoder.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def test_bad_files_fail_clearly(tmp_path):
    model = deeplab()
    with pytest.raises(
        MedsegError, match=r"weights.ckpt: weight files must end in one of .pt, .pth, .safetensors"
    ):
        load_encoder_weights(model.encoder, tmp_path / "weights.ckpt")
    with pytest.raises(MedsegError, match="missing.pth: file not found"):
        load_encoder_weights(model.encoder, tmp_path / "missing.pth")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(MedsegError, match="broken.safetensors: not a readable safetensors file"):
        load_encoder_weights(model.encoder, broken)
    nothing = tmp_path / "list.pt"
    torch.save([1, 2, 3], nothing)
    with pytest.raises(MedsegError, match="list.pt: no state dict found"):
        load_encoder_weights(model.encoder, nothing)

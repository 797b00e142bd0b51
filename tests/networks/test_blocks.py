"""Shared blocks (separable conv, CBAM, ASPP), the light UNet's make-up and DeepLabV3+'s encoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medseg.networks import DeepLabV3Plus, LightUNet, build_network, encoder_stages
from medseg.networks.blocks import ASPP, CBAM, DepthwiseSeparableConv


@pytest.mark.parametrize("dims", [2, 3])
def test_separable_conv_is_cheaper_than_a_full_conv(dims):
    sep = DepthwiseSeparableConv(dims, 16, 32, stride=2, norm=None)
    x = torch.randn((1, 16) + (8,) * dims)
    assert sep(x).shape == (1, 32) + (4,) * dims
    depthwise = 16 * 3**dims
    pointwise = 16 * 32
    assert sum(p.numel() for p in sep.parameters()) == depthwise + pointwise
    assert depthwise + pointwise < 16 * 32 * 3**dims


@pytest.mark.parametrize("dims", [2, 3])
def test_cbam_reweights_channels_and_voxels(dims):
    torch.manual_seed(0)
    cbam = CBAM(dims, channels=8, reduction=2, kernel_size=3)
    x = torch.randn((2, 8) + (6,) * dims)
    y = cbam(x)
    assert y.shape == x.shape
    ratio = y / x
    assert ((ratio > 0) & (ratio < 1)).all()  # a product of two sigmoids
    assert ratio.std() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_aspp_branches_and_rates(dims):
    aspp = ASPP(dims, 8, 4, dilations=(1, 2, 3), separable=True)
    assert len(aspp.branches) == 4  # 1x1 plus one per rate; image pooling is separate
    assert aspp.branches[3].depthwise.conv.dilation == (3,) * dims
    aspp.train()
    assert aspp(torch.randn((1, 8) + (5,) * dims)).shape == (1, 4) + (5,) * dims  # batch 1 trains
    with pytest.raises(
        ValueError, match=r"`dilations` must be a non-empty sequence of integers >= 1, got \(0, 2\)"
    ):
        ASPP(dims, 8, 4, dilations=(0, 2))


def test_light_unet_uses_separable_convs_aspp_and_cbam():
    model = LightUNet(spatial_dims=2, features=(8, 16, 32))
    kinds = {type(m) for m in model.modules()}
    assert {DepthwiseSeparableConv, ASPP, CBAM} <= kinds
    assert isinstance(model.bottleneck, ASPP) and len(model.bottleneck.dilations) >= 3
    assert all(isinstance(dec[-1], CBAM) for dec in model.decoders)


def test_light_unet_is_kaiming_initialised():
    torch.manual_seed(0)
    model = LightUNet(spatial_dims=2, features=(16, 32, 64, 128, 256))
    conv = model.encoders[4][1].pointwise.conv  # a 1x1 conv with 256 outputs: fan_out = 256
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 256
    expected = math.sqrt(2.0 / 256)
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_deeplabv3plus_encoder_stages_and_output_stride():
    torch.manual_seed(0)
    model = DeepLabV3Plus(
        encoder_depth=10, encoder_channels=(4, 8, 16, 16), aspp_channels=8, low_level_channels=4
    )
    stages = encoder_stages(model)
    assert len(stages) == 5 and stages[1] is model.encoder.layer1 and stages[4] is model.encoder.layer4
    x = torch.randn(1, 3, 64, 64)
    e = model.encoder
    h = e.layer4(e.layer3(e.layer2(e.layer1(e.maxpool(e.act(e.bn1(e.conv1(x))))))))
    assert h.shape[-1] == 64 // 16  # last stage dilated instead of strided
    assert model(x).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="`output_stride` must be 16 or 32, got 8"):
        DeepLabV3Plus(output_stride=8)
    with pytest.raises(ValueError, match=r"`spatial_dims` must be one of \(2,\), got 3"):
        DeepLabV3Plus(spatial_dims=3)


def test_flexible_unet_stages_come_from_its_resnet_encoder():
    model = build_network(
        "flexible_unet", spatial_dims=2, backbone="resnet10", decoder_channels=(16, 8, 8, 4, 4)
    )
    stages = encoder_stages(model)
    assert [
        s is getattr(model.encoder, n) for s, n in zip(stages[1:], ["layer1", "layer2", "layer3", "layer4"])
    ] == [True] * 4
    with pytest.raises(ValueError, match="LightUNet has no encoder stages"):
        encoder_stages(LightUNet(features=(4, 8)))

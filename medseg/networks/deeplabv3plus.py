"""DeepLabV3+ on a MONAI ResNet encoder, 2D (so torchvision is not needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.resnet import ResNet
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.blocks.aspp import ASPP
from medseg.networks.blocks.separable import DepthwiseSeparableConv
from medseg.networks.checks import check_channels, check_spatial_dims
from medseg.networks.encoders import resnet_stages
from medseg.networks.registry import register_network

__all__ = ["DeepLabV3Plus"]

_RESNET_LAYERS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
}


def _dilate_last_stage(layer: nn.Module, spatial_dims: int) -> None:
    """Turn the stride-2 last ResNet stage into a stride-1 stage with dilation 2 (output stride 32 -> 16).

    Chen et al. (DeepLabV3) replace the last stage's stride with atrous convolution to keep
    resolution. MONAI's ``ResNet`` has no dilation option, so the convolutions are changed
    in place; their weights and names stay, so ResNet weights still load.
    """
    for m in layer.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            m.stride = (1,) * spatial_dims
            if m.kernel_size[0] == 3:
                m.dilation = (2,) * spatial_dims
                m.padding = (2,) * spatial_dims


@register_network(
    "deeplabv3plus",
    spatial_dims=(2,),
    paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution (DeepLabV3+), ECCV 2018",
    default_kwargs={"encoder_depth": 18},
    smoke_kwargs={
        "encoder_depth": 10,
        "encoder_channels": (4, 8, 16, 16),
        "aspp_channels": 8,
        "low_level_channels": 4,
        "aspp_dilations": (1, 2),
    },
    size_divisor=32,  # the ResNet encoder halves five times (stride 32) whatever its output_stride
)
class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: a ResNet encoder, an ASPP head and a decoder that fuses stride-4 features.

    Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
    Segmentation", ECCV 2018 (arXiv:1802.02611); encoder He et al., CVPR 2016.
    The encoder is a MONAI ``ResNet`` stored as ``self.encoder`` with the key names of
    torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a local ResNet
    state dict loads into it with :func:`medseg.transfer.load_encoder_weights`.

    Args:
        spatial_dims: must be 2. Defaults to 2.
        in_channels: input channels. Defaults to 3.
        out_channels: output channels. Defaults to 2.
        encoder_depth: ResNet depth, one of 10, 18, 34, 50, 101. Defaults to 18.
        encoder_channels: the four ResNet stages' base widths. Defaults to ``(64, 128, 256, 512)``.
        output_stride: 16 (last stage dilated, as in the paper) or 32. Defaults to 16.
        aspp_channels: ASPP and decoder width. Defaults to 256.
        aspp_dilations: ASPP atrous rates. Defaults to ``(6, 12, 18)`` (for output stride 16).
        low_level_channels: width of the projected stride-4 features. Defaults to 48.
        norm: MONAI norm name for the head and decoder. Defaults to ``"batch"``.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``; ``H`` and ``W`` should be
        multiples of 32 for exact alignment (other sizes are resampled).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        encoder_depth: int = 18,
        encoder_channels: Sequence[int] = (64, 128, 256, 512),
        output_stride: int = 16,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        low_level_channels: int = 48,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2,))
        check_channels(
            in_channels=in_channels,
            out_channels=out_channels,
            aspp_channels=aspp_channels,
            low_level_channels=low_level_channels,
        )
        if encoder_depth not in _RESNET_LAYERS:
            raise InvalidValueError(f"`encoder_depth` must be one of {sorted(_RESNET_LAYERS)}, got {encoder_depth}")
        encoder_channels = list(encoder_channels)
        if len(encoder_channels) != 4 or any(c < 1 for c in encoder_channels):
            raise InvalidValueError(f"`encoder_channels` needs 4 positive widths, got {tuple(encoder_channels)}")
        if output_stride not in (16, 32):
            raise InvalidValueError(f"`output_stride` must be 16 or 32, got {output_stride}")
        block, layers = _RESNET_LAYERS[encoder_depth]
        self.encoder = ResNet(
            block,
            layers,
            encoder_channels,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,  # as torchvision, so its ResNet weights match key for key
        )
        # The classifier's pooling is unused; drop it so it is not exported or counted.
        self.encoder.avgpool = nn.Identity()
        if output_stride == 16:
            _dilate_last_stage(self.encoder.layer4, spatial_dims)
        expansion = 4 if block == "bottleneck" else 1
        self.aspp = ASPP(
            spatial_dims,
            encoder_channels[3] * expansion,
            aspp_channels,
            aspp_dilations,
            separable=True,
            norm=norm,
        )
        self.low_level = Convolution(
            spatial_dims,
            encoder_channels[0] * expansion,
            low_level_channels,
            kernel_size=1,
            norm=norm,
            bias=False,
            act="relu",
        )
        self.decoder = nn.Sequential(
            DepthwiseSeparableConv(
                spatial_dims, aspp_channels + low_level_channels, aspp_channels, norm=norm
            ),
            DepthwiseSeparableConv(spatial_dims, aspp_channels, aspp_channels, norm=norm),
        )
        self.head = Convolution(
            spatial_dims, aspp_channels, out_channels, kernel_size=1, conv_only=True, bias=True
        )

    def encoder_stages(self) -> list[nn.Module]:
        """The five encoder stages, shallowest first: stem, ``layer1`` ... ``layer4``."""
        return resnet_stages(self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` ``(B, in_channels, H, W)`` into logits ``(B, out_channels, H, W)``."""
        e = self.encoder
        h = e.act(e.bn1(e.conv1(x)))
        low = e.layer1(e.maxpool(h))
        high = self.aspp(e.layer4(e.layer3(e.layer2(low))))
        low = self.low_level(low)
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=False)
        out = self.head(self.decoder(torch.cat([high, low], dim=1)))
        return F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=False)

"""A light UNet trained from scratch: separable convolutions, an ASPP bottleneck, CBAM in the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.blocks.aspp import ASPP
from medseg.networks.blocks.cbam import CBAM
from medseg.networks.blocks.separable import DepthwiseSeparableConv
from medseg.networks.checks import check_channels, check_input_divisible, check_levels, check_spatial_dims
from medseg.networks.registry import register_network

__all__ = ["LightUNet", "kaiming_init"]


def kaiming_init(module: nn.Module) -> None:
    """Initialise convolutions with Kaiming-normal weights (fan-out, ReLU) and zero biases; norms to identity.

    He et al., "Delving Deep into Rectifiers", ICCV 2015. A network trained from scratch
    without pretrained weights depends on this to keep activations' variance stable.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(
            m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
        ):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@register_network(
    "light_unet",
    spatial_dims=(2, 3),
    paper="Ronneberger et al. 2015 (U-Net) + Howard et al. 2017 (separable conv) + Chen et al. 2017 (ASPP) "
    "+ Woo et al. 2018 (CBAM)",
    default_kwargs={"features": (16, 32, 64, 128, 256)},
    smoke_kwargs={"features": (4, 8, 16)},
    size_divisor=lambda kwargs: 2 ** (len(kwargs.get("features", (16, 32, 64, 128, 256))) - 1),
)
class LightUNet(nn.Module):
    """A compact U-Net for training from scratch: under 2 M parameters at its default width.

    - Encoder and decoder blocks are depthwise-separable convolutions (Howard et al.,
      "MobileNets", arXiv:1704.04861), with a full convolution only for the stem.
    - The bottleneck is an ASPP with separable atrous branches at several rates plus
      image pooling (Chen et al., "Rethinking Atrous Convolution", arXiv:1706.05587).
    - Each decoder level ends with CBAM channel and spatial attention (Woo et al., ECCV 2018).
    - Weights are Kaiming-initialised (He et al., ICCV 2015).
    The U-Net layout follows Ronneberger et al., MICCAI 2015.

    Batch norm is the default because it folds into the convolutions for INT8 export;
    with 3D volumes and batches of 1-2 use ``norm="instance"``.

    Args:
        spatial_dims: 2 or 3. Defaults to 2.
        in_channels: input channels (3 for RGB dermoscopy). Defaults to 1.
        out_channels: output channels. Defaults to 2.
        features: channels per level, at least 2 levels; each level after the first halves
            the resolution. Defaults to ``(16, 32, 64, 128, 256)``.
        aspp_dilations: atrous rates of the bottleneck ASPP. Defaults to ``(1, 2, 4, 6)``.
        cbam_reduction: CBAM channel-MLP reduction ratio. Defaults to 8.
        norm: MONAI norm name. Defaults to ``"batch"``.
        act: MONAI activation name. Defaults to ``"relu"``.
        dropout: dropout after the ASPP projection. Defaults to 0.1.

    Shapes:
        ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``; each entry of ``S`` must be
        divisible by ``2 ** (len(features) - 1)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        aspp_dilations: Sequence[int] = (1, 2, 4, 6),
        cbam_reduction: int = 8,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        check_channels(in_channels=in_channels, out_channels=out_channels)
        features, self.strides = check_levels(features, None)
        if cbam_reduction < 1:
            raise InvalidValueError(f"`cbam_reduction` must be >= 1, got {cbam_reduction}")
        self.spatial_dims = spatial_dims

        def sep(cin: int, cout: int, stride: int = 1) -> nn.Module:
            return DepthwiseSeparableConv(spatial_dims, cin, cout, stride=stride, norm=norm, act=act)

        # A depthwise stem over 1-3 input channels would see almost nothing; use a full conv.
        stem = nn.Sequential(
            Convolution(spatial_dims, in_channels, features[0], norm=norm, act=act, bias=False),
            sep(features[0], features[0]),
        )
        self.encoders = nn.ModuleList(
            [stem]
            + [
                nn.Sequential(sep(features[i - 1], features[i], stride=2), sep(features[i], features[i]))
                for i in range(1, len(features))
            ]
        )
        self.bottleneck = ASPP(
            spatial_dims,
            features[-1],
            features[-1],
            aspp_dilations,
            separable=True,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        levels = list(range(len(features) - 2, -1, -1))
        self.ups = nn.ModuleList(
            [
                UpSample(
                    spatial_dims,
                    features[lv + 1],
                    features[lv],
                    scale_factor=2,
                    mode="nontrainable",
                    interp_mode="linear",
                    align_corners=False,
                )
                for lv in levels
            ]
        )
        self.decoders = nn.ModuleList(
            [
                nn.Sequential(
                    sep(2 * features[lv], features[lv]),
                    sep(features[lv], features[lv]),
                    CBAM(spatial_dims, features[lv], reduction=cbam_reduction),
                )
                for lv in levels
            ]
        )
        self.head = Convolution(
            spatial_dims, features[0], out_channels, kernel_size=1, conv_only=True, bias=True
        )
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` ``(B, in_channels, *S)`` into logits ``(B, out_channels, *S)``."""
        if not torch.jit.is_tracing():
            check_input_divisible(x, self.strides, self.spatial_dims)
        skips: list[torch.Tensor] = []
        h = x
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        h = self.bottleneck(h)
        for i, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            h = decoder(torch.cat([skips[-2 - i], up(h)], dim=1))
        return self.head(h)

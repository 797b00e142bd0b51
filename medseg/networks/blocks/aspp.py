"""Atrous spatial pyramid pooling (Chen et al., DeepLabV3, arXiv:1706.05587, 2017).

MONAI's ``SimpleASPP`` concatenates dilated convolutions but has neither the image-level
pooling branch nor the 1x1 projection of DeepLabV3, and cannot use depthwise-separable
convolutions, which the light UNet needs to stay small; hence this block. The branches are
still MONAI ``Convolution`` layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.blocks.separable import DepthwiseSeparableConv
from medseg.networks.checks import check_dropout

__all__ = ["ASPP"]


class ASPP(nn.Module):
    """ASPP: a 1x1 branch, one 3x3 branch per atrous rate, and an image-pooling branch.

    The branch outputs are concatenated and projected back to ``out_channels`` by a 1x1
    convolution (Chen et al., "Rethinking Atrous Convolution for Semantic Image
    Segmentation", 2017; Chen et al., "Encoder-Decoder with Atrous Separable Convolution",
    ECCV 2018).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels of every branch and of the output.
        dilations: the atrous rates of the 3x3 branches, each >= 1, e.g. ``(1, 2, 4, 6)``.
        separable: use depthwise-separable 3x3 branches (DeepLabV3+ / light UNet).
        norm: MONAI norm name. Defaults to ``"batch"``.
        act: MONAI activation name. Defaults to ``"relu"``.
        dropout: dropout after the projection. Defaults to 0.

    Shapes:
        ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (1, 2, 4, 6),
        separable: bool = False,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dilations = tuple(dilations)
        if not dilations or any(int(d) != d or d < 1 for d in dilations):
            raise InvalidValueError(f"`dilations` must be a non-empty sequence of integers >= 1, got {dilations}")
        check_dropout(dropout)
        branches: list[nn.Module] = [
            Convolution(
                spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=act, bias=False
            )
        ]
        for rate in dilations:
            if separable:
                branches.append(
                    DepthwiseSeparableConv(
                        spatial_dims, in_channels, out_channels, dilation=rate, norm=norm, act=act
                    )
                )
            else:
                branches.append(
                    Convolution(
                        spatial_dims, in_channels, out_channels, dilation=rate, norm=norm, act=act, bias=False
                    )
                )
        self.branches = nn.ModuleList(branches)
        # No norm in the pooling branch: its input is 1 voxel per channel, and batch norm
        # over a batch of one such voxel is undefined in training mode.
        self.pool_conv = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=1, act=act, norm=None
        )
        self.project = Convolution(
            spatial_dims,
            out_channels * (len(branches) + 1),
            out_channels,
            kernel_size=1,
            norm=norm,
            act=act,
            dropout=dropout if dropout > 0 else None,
            bias=False,
        )
        self.spatial_axes = tuple(range(2, 2 + spatial_dims))
        self.dilations = dilations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every branch on ``x`` ``(B, C_in, *S)`` and project to ``(B, C_out, *S)``."""
        outs = [branch(x) for branch in self.branches]
        pooled = self.pool_conv(x.mean(dim=self.spatial_axes, keepdim=True))
        outs.append(pooled.expand_as(outs[0]))
        return self.project(torch.cat(outs, dim=1))

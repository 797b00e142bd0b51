"""Depthwise-separable convolution, built from two MONAI ``Convolution`` layers."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.checks import check_odd_kernel

__all__ = ["DepthwiseSeparableConv"]


class DepthwiseSeparableConv(nn.Module):
    """A depthwise ``k^d`` convolution followed by a pointwise ``1^d`` convolution.

    Costs ``C_in * k^d + C_in * C_out`` weights instead of ``C_in * C_out * k^d``
    (Howard et al., "MobileNets", arXiv:1704.04861, 2017; Chollet, "Xception", CVPR 2017).
    Normalisation and activation follow the pointwise convolution only, as in
    DeepLabV3+'s separable convolutions (Chen et al., ECCV 2018).

    MONAI's ``Convolution`` takes a ``groups`` argument, so the two halves are MONAI
    layers; only their pairing is ours.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: depthwise kernel size, odd. Defaults to 3.
        stride: depthwise stride (2 downsamples). Defaults to 1.
        dilation: depthwise dilation (atrous rate). Defaults to 1.
        norm: MONAI norm name for the pointwise output. Defaults to ``"batch"``.
        act: MONAI activation name for the pointwise output. Defaults to ``"relu"``.

    Shapes:
        ``(B, C_in, *S)`` -> ``(B, C_out, *S / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        check_odd_kernel(kernel_size)
        if stride < 1 or dilation < 1:
            raise InvalidValueError(
                f"`stride` and `dilation` must be >= 1, got stride={stride}, dilation={dilation}"
            )
        self.depthwise = Convolution(
            spatial_dims,
            in_channels,
            in_channels,
            strides=stride,
            kernel_size=kernel_size,
            dilation=dilation,
            groups=in_channels,
            bias=False,
            conv_only=True,
        )
        self.pointwise = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=act, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the depthwise then the pointwise convolution; ``(B, C_in, *S)`` -> ``(B, C_out, *S')``."""
        return self.pointwise(self.depthwise(x))

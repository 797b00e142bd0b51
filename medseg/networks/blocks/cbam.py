"""CBAM: channel attention then spatial attention (Woo et al., ECCV 2018).

MONAI has squeeze-and-excitation (``ChannelSELayer``), which pools by average only and has
no spatial branch; CBAM's channel branch also max-pools, and its spatial branch weighs
each voxel, so it is written here. Pooling uses ``mean``/``amax`` over the spatial axes
rather than adaptive pooling layers so that it exports to ONNX for any input size.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.checks import check_odd_kernel

__all__ = ["CBAM", "ChannelAttention", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """CBAM's channel branch: a shared MLP over the average- and max-pooled descriptors.

    Args:
        spatial_dims: 2 or 3.
        channels: number of channels ``C``.
        reduction: the MLP's bottleneck ratio; hidden width is ``max(C // reduction, 1)``.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``, each channel scaled by a weight in ``(0, 1)``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise InvalidValueError(
                f"`channels` and `reduction` must be >= 1, got channels={channels}, reduction={reduction}"
            )
        hidden = max(channels // reduction, 1)
        conv = Conv[Conv.CONV, spatial_dims]
        self.mlp = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1))
        self.spatial_axes = tuple(range(2, 2 + spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` ``(B, C, *S)`` by its attention weight."""
        avg = x.mean(dim=self.spatial_axes, keepdim=True)
        mx = x.amax(dim=self.spatial_axes, keepdim=True)
        return x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """CBAM's spatial branch: a ``k^d`` convolution over the channel-wise mean and max maps.

    Args:
        spatial_dims: 2 or 3.
        kernel_size: odd kernel size. Defaults to 7 as in the paper.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``, each voxel scaled by a weight in ``(0, 1)``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        check_odd_kernel(kernel_size)
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each voxel of ``x`` ``(B, C, *S)`` by its attention weight."""
        avg = x.mean(dim=1, keepdim=True)
        mx = x.amax(dim=1, keepdim=True)
        return x * torch.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.

    Args:
        spatial_dims: 2 or 3.
        channels: number of channels ``C``.
        reduction: channel-MLP reduction ratio. Defaults to 8.
        kernel_size: spatial-branch kernel size. Defaults to 7.

    Shapes:
        ``(B, C, *S)`` -> ``(B, C, *S)``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(spatial_dims, channels, reduction)
        self.spatial = SpatialAttention(spatial_dims, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply channel then spatial attention to ``x`` ``(B, C, *S)``."""
        return self.spatial(self.channel(x))

"""A small region network with known behaviour, shared by medseg's registry and the stock MONAI config.

``smooth_regions`` is a depthwise 3x3x3 mean filter followed by a 1x1x1 mix of the four
z-scored channels (T1, T1ce, T2, FLAIR) into three region logits (TC, WT, ET). Its weights are
set, not trained: bright FLAIR is whole tumour, bright T1ce enhancing tumour, bright T1ce or
T2 with dark T1 tumour core, so its masks overlap the synthetic tumours, and an all-zero input
gives negative logits (background), as a trained network does.
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.networks import list_networks, register_network

NAME = "benchmark_test_smooth_regions"

# Rows: TC, WT, ET logits from the z-scored (T1, T1ce, T2, FLAIR) channels.
_MIX = [[-1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.5, 2.0], [0.0, 2.5, 0.0, 0.0]]
_BIAS = [-3.0, -3.5, -4.0]


def smooth_regions(spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3) -> nn.Module:
    """The network; with 4 -> 3 channels its weights are the set ones (the checkpoint stores them too)."""
    if spatial_dims != 3:
        raise ValueError(f"smooth_regions is 3D, got spatial_dims={spatial_dims}")
    net = nn.Sequential(
        nn.Conv3d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.Conv3d(in_channels, out_channels, 1),
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0 / 27)
        if (in_channels, out_channels) == (4, 3):
            net[1].weight.copy_(torch.tensor(_MIX)[:, :, None, None, None])
            net[1].bias.copy_(torch.tensor(_BIAS))
    return net


if NAME not in list_networks():
    register_network(NAME, spatial_dims=(3,), paper="test only: mean filter + channel mix", smoke_kwargs={})(
        smooth_regions
    )

"""Layers shared by medseg's own networks: attention gate, CBAM, ASPP, separable convolution."""

from __future__ import annotations

from medseg.networks.blocks.aspp import ASPP
from medseg.networks.blocks.attention_gate import AttentionGate
from medseg.networks.blocks.cbam import CBAM, ChannelAttention, SpatialAttention
from medseg.networks.blocks.separable import DepthwiseSeparableConv

__all__ = ["ASPP", "CBAM", "AttentionGate", "ChannelAttention", "DepthwiseSeparableConv", "SpatialAttention"]

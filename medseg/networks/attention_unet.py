"""Attention U-Net with residual instance-norm blocks, for 2D and 3D (registry name ``attention_unet3d``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock
from torch import nn

from medseg.errors import InvalidValueError
from medseg.networks.blocks.attention_gate import AttentionGate
from medseg.networks.checks import (
    check_channels,
    check_dropout,
    check_input_divisible,
    check_levels,
    check_odd_kernel,
    check_spatial_dims,
)
from medseg.networks.registry import register_network

__all__ = ["AttentionUNet"]


@register_network(
    "attention_unet3d",
    spatial_dims=(2, 3),
    paper="Oktay et al., Attention U-Net, MIDL 2018 (arXiv:1804.03999)",
    default_kwargs={"features": (16, 32, 64, 128, 256)},
    smoke_kwargs={"features": (4, 8, 16)},
    size_divisor=lambda kwargs: math.prod(int(s) for s in kwargs["strides"]) if kwargs.get("strides")
    else 2 ** (len(kwargs.get("features", (16, 32, 64, 128, 256))) - 1),
)
class AttentionUNet(nn.Module):
    """U-Net whose skip connections pass through additive attention gates.

    Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
    (arXiv:1804.03999). Each level is a residual block (two ``k^d`` convolutions with
    instance norm and a shortcut; MONAI ``UnetResBlock``, as in nnU-Net's residual
    variant); downsampling is by the first convolution's stride, upsampling by a
    transposed convolution. Each skip ``x_l`` is gated by the coarser decoder features
    ``g_{l+1}`` before concatenation (:class:`~medseg.networks.blocks.AttentionGate`;
    ``model.gates[0]`` is the deepest gate).

    Deep supervision (Lee et al., "Deeply-Supervised Nets", AISTATS 2015): with
    ``deep_supervision=True`` and the model in training mode, ``forward`` returns a list
    of logits, full resolution first, then one per coarser decoder level (each at its own
    resolution, not upsampled); :class:`medseg.losses.DeepSupervisionLoss` consumes it.
    In eval mode it always returns the full-resolution tensor, so sliding-window inference
    and export see a single output.

    Args:
        spatial_dims: 2 or 3. Defaults to 3.
        in_channels: input channels (e.g. 4 MRI sequences for BraTS). Defaults to 1.
        out_channels: output channels (classes or regions). Defaults to 2.
        features: channels per level, at least 2 levels. Defaults to ``(16, 32, 64, 128, 256)``.
        strides: downsampling stride before each level after the first,
            ``len(features) - 1`` entries. Defaults to all 2.
        kernel_size: odd convolution kernel size. Defaults to 3.
        norm: MONAI norm name. Defaults to ``("instance", {"affine": True})``.
        act: MONAI activation. Defaults to leaky ReLU (slope 0.01).
        dropout: dropout probability in the residual blocks. Defaults to 0.
        deep_supervision: return extra low-resolution logits in training. Defaults to False.
        deep_supervision_levels: number of extra outputs, ``1 <= n <= len(features) - 2``.
            Defaults to ``None``: 2, or fewer when the network has fewer levels (nnU-Net supervises
            every level but the two lowest).

    Shapes:
        ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``; every entry of ``S`` must be
        divisible by ``prod(strides)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        deep_supervision: bool = False,
        deep_supervision_levels: int | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        check_channels(in_channels=in_channels, out_channels=out_channels)
        features, strides = check_levels(features, strides)
        check_odd_kernel(kernel_size)
        check_dropout(dropout)
        if deep_supervision_levels is None:
            deep_supervision_levels = min(2, len(features) - 2)
        if deep_supervision and not 1 <= deep_supervision_levels <= len(features) - 2:
            raise InvalidValueError(
                f"`deep_supervision_levels` must be in [1, len(features)-2 = {len(features) - 2}], "
                f"got {deep_supervision_levels}"
            )
        self.spatial_dims = spatial_dims
        self.strides = strides
        self.deep_supervision = deep_supervision
        self.deep_supervision_levels = deep_supervision_levels if deep_supervision else 0
        drop = dropout if dropout > 0 else None

        def res_block(cin: int, cout: int, stride: int) -> nn.Module:
            return UnetResBlock(
                spatial_dims, cin, cout, kernel_size, stride, norm_name=norm, act_name=act, dropout=drop
            )

        self.encoders = nn.ModuleList(
            [res_block(in_channels, features[0], 1)]
            + [res_block(features[i - 1], features[i], strides[i - 1]) for i in range(1, len(features))]
        )
        # Decoder modules are listed from the deepest level up.
        levels = list(range(len(features) - 2, -1, -1))
        self.gates = nn.ModuleList(
            [
                AttentionGate(spatial_dims, features[lv], features[lv + 1], subsample=strides[lv], norm=norm)
                for lv in levels
            ]
        )
        self.ups = nn.ModuleList(
            [
                Convolution(
                    spatial_dims,
                    features[lv + 1],
                    features[lv],
                    strides=strides[lv],
                    kernel_size=strides[lv],
                    padding=0,
                    output_padding=0,
                    is_transposed=True,
                    conv_only=True,
                )
                for lv in levels
            ]
        )
        self.decoders = nn.ModuleList([res_block(2 * features[lv], features[lv], 1) for lv in levels])
        self.head = UnetOutBlock(spatial_dims, features[0], out_channels)
        # Heads for levels 1..n (the decoder outputs just coarser than full resolution).
        self.ds_heads = nn.ModuleList(
            [
                UnetOutBlock(spatial_dims, features[lv], out_channels)
                for lv in range(1, self.deep_supervision_levels + 1)
            ]
        )

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        # Eager-only: the check's messages need Python; exported graphs skip it.
        check_input_divisible(x, self.strides, self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` ``(B, in_channels, *S)``.

        Returns:
            Logits ``(B, out_channels, *S)``; in training with deep supervision, a list
            ``[full, half, quarter, ...]`` of logits, each at its level's resolution.
        """
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self._check_input(x)
        skips: list[torch.Tensor] = []
        h = x
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
        decoded: list[torch.Tensor] = []
        for i, (gate, up, decoder) in enumerate(zip(self.gates, self.ups, self.decoders)):
            skip = skips[-2 - i]
            h = decoder(torch.cat([gate(skip, h), up(h)], dim=1))
            decoded.append(h)
        logits = self.head(h)
        if self.training and self.deep_supervision:
            # decoded[-1] is full resolution, decoded[-2] the level below, and so on.
            return [logits] + [head(decoded[-2 - j]) for j, head in enumerate(self.ds_heads)]
        return logits

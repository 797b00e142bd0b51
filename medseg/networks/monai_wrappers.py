"""MONAI networks in the registry, with medseg's defaults and argument checks.

Each builder takes ``spatial_dims``, ``in_channels`` and ``out_channels`` like medseg's own
networks and forwards every other key to the MONAI constructor, so a bundle config can
use any of MONAI's arguments; an unknown key is reported by ``build_network`` against
the MONAI signature. No builder ever downloads weights.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from monai.networks import nets
from torch import nn

from medseg.errors import InvalidValueError, MedsegError
from medseg.networks.checks import check_channels, check_levels, check_spatial_dims
from medseg.networks.registry import register_network

__all__ = [
    "attention_unet_monai",
    "dynunet",
    "flexible_unet",
    "segresnet",
    "swinunetr",
    "unet",
]

FLEXIBLE_UNET_BACKBONES: tuple[str, ...] = (
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet200",
)


def _check_common(spatial_dims: int, in_channels: int, out_channels: int) -> None:
    check_spatial_dims(spatial_dims, (2, 3))
    check_channels(in_channels=in_channels, out_channels=out_channels)


@register_network(
    "segresnet",
    wraps=nets.SegResNet,
    paper="Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018",
    default_kwargs={"init_filters": 8},
    smoke_kwargs={"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
)
def segresnet(
    spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, init_filters: int = 8, **kwargs: Any
) -> nn.Module:
    """MONAI ``SegResNet`` (Myronenko, BrainLes 2018): ``(B, C_in, *S)`` -> ``(B, C_out, *S)``.

    Each entry of ``S`` must be divisible by ``2 ** (len(blocks_down) - 1)`` (8 by default).

    Args:
        spatial_dims: 2 or 3. in_channels, out_channels: channel counts.
        init_filters: width of the first level; divisible by 8 with the default group norm.
        **kwargs: any other ``monai.networks.nets.SegResNet`` argument.
    """
    _check_common(spatial_dims, in_channels, out_channels)
    if "norm" not in kwargs and init_filters % 8:
        # MONAI's default norm is group norm with 8 groups; it fails deep inside otherwise.
        raise InvalidValueError(
            f"`init_filters` must be divisible by 8 (the default group-norm groups), got {init_filters}"
        )
    return nets.SegResNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        **kwargs,
    )


@register_network(
    "unet",
    wraps=nets.UNet,
    paper="Ronneberger et al., U-Net, MICCAI 2015; Kerfoot et al., residual units, STACOM 2018",
    default_kwargs={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2},
    smoke_kwargs={"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
)
def unet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """MONAI residual ``UNet`` (Kerfoot et al. 2018): ``(B, C_in, *S)`` -> ``(B, C_out, *S)``.

    Args:
        spatial_dims, in_channels, out_channels: as everywhere.
        channels: channels per level. strides: ``len(channels) - 1`` downsampling strides.
        num_res_units: residual units per block. Defaults to 2.
        **kwargs: any other ``monai.networks.nets.UNet`` argument.
    """
    _check_common(spatial_dims, in_channels, out_channels)
    check_levels(channels, strides, "channels", per_axis=True)
    return nets.UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        **kwargs,
    )


@register_network(
    "dynunet",
    wraps=nets.DynUNet,
    paper="Isensee et al., nnU-Net, Nature Methods 2021",
    default_kwargs={"filters": (32, 64, 128, 256, 320)},
    smoke_kwargs={"filters": (4, 8, 16)},
)
def dynunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Sequence[int] = (32, 64, 128, 256, 320),
    kernel_size: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    upsample_kernel_size: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """MONAI ``DynUNet``, the nnU-Net architecture (Isensee et al. 2021).

    With ``deep_supervision=True`` it returns, in training, MONAI's stacked tensor
    ``(B, 1 + deep_supr_num, C_out, *S)``, which :class:`medseg.losses.DeepSupervisionLoss` accepts.

    Args:
        spatial_dims, in_channels, out_channels: as everywhere.
        filters: channels per level. Defaults to nnU-Net's ``(32, 64, 128, 256, 320)``.
        kernel_size: per-level kernel sizes; defaults to 3 everywhere.
        strides: per-level strides; defaults to ``(1, 2, 2, ...)``.
        upsample_kernel_size: defaults to ``strides[1:]``.
        **kwargs: any other ``monai.networks.nets.DynUNet`` argument.
    """
    _check_common(spatial_dims, in_channels, out_channels)
    n = len(filters)
    kernel_size = list(kernel_size) if kernel_size is not None else [3] * n
    strides = list(strides) if strides is not None else [1] + [2] * (n - 1)
    upsample_kernel_size = list(upsample_kernel_size) if upsample_kernel_size is not None else strides[1:]
    if len(kernel_size) != n or len(strides) != n or len(upsample_kernel_size) != n - 1:
        raise InvalidValueError(
            f"`kernel_size` and `strides` need len(filters) = {n} entries "
            f"and `upsample_kernel_size` {n - 1}, "
            f"got {len(kernel_size)}, {len(strides)} and {len(upsample_kernel_size)}"
        )
    return nets.DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        strides=strides,
        upsample_kernel_size=upsample_kernel_size,
        filters=list(filters),
        **kwargs,
    )


@register_network(
    "swinunetr",
    wraps=nets.SwinUNETR,
    # Window sizes and paddings are computed from the input size in Python, so tracing bakes them in.
    fixed_export_shape=True,
    paper="Hatamizadeh et al., Swin UNETR, BrainLes 2021 (arXiv:2201.01266)",
    default_kwargs={"feature_size": 24},
    smoke_kwargs={"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
)
def swinunetr(
    spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, feature_size: int = 24, **kwargs: Any
) -> nn.Module:
    """MONAI ``SwinUNETR`` (Hatamizadeh et al. 2021): ``(B, C_in, *S)`` -> ``(B, C_out, *S)``.

    Each entry of ``S`` must be a multiple of 32 and at least 64: the bottleneck is at 1/32
    resolution and its instance norm needs more than one voxel. Needs the ``einops`` package.

    Args:
        spatial_dims, in_channels, out_channels: as everywhere.
        feature_size: embedding width; must be divisible by 12. Defaults to 24.
        **kwargs: any other ``monai.networks.nets.SwinUNETR`` argument.

    Raises:
        MedsegError: ``einops`` is not installed (MONAI imports it only when the network runs,
            so without this check the failure would come at the first forward pass).
    """
    _check_common(spatial_dims, in_channels, out_channels)
    if importlib.util.find_spec("einops") is None:
        raise MedsegError(
            "network 'swinunetr' needs the `einops` package, which is not installed: pip install einops"
        )
    if feature_size < 12 or feature_size % 12:
        raise InvalidValueError(f"`feature_size` must be a positive multiple of 12, got {feature_size}")
    return nets.SwinUNETR(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        **kwargs,
    )


@register_network(
    "attention_unet_monai",
    wraps=nets.AttentionUnet,
    paper="Oktay et al., Attention U-Net, MIDL 2018 (MONAI implementation)",
    default_kwargs={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
    smoke_kwargs={"channels": (4, 8, 16), "strides": (2, 2)},
)
def attention_unet_monai(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    **kwargs: Any,
) -> nn.Module:
    """MONAI ``AttentionUnet``, with the input checks it lacks: ``(B, C_in, *S)`` -> ``(B, C_out, *S)``.

    Args:
        spatial_dims, in_channels, out_channels: as everywhere.
        channels: channels per level. strides: ``len(channels) - 1`` strides.
        **kwargs: any other ``monai.networks.nets.AttentionUnet`` argument.
    """
    _check_common(spatial_dims, in_channels, out_channels)
    check_levels(channels, strides, "channels", per_axis=True)
    return nets.AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        **kwargs,
    )


@register_network(
    "flexible_unet",
    wraps=nets.FlexibleUNet,
    paper="MONAI FlexibleUNet: U-Net decoder on a ResNet encoder (He et al., CVPR 2016)",
    default_kwargs={"backbone": "resnet18"},
    smoke_kwargs={"backbone": "resnet10", "decoder_channels": (16, 8, 8, 4, 4)},
)
def flexible_unet(
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 2,
    backbone: str = "resnet18",
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """MONAI ``FlexibleUNet`` with a ResNet encoder, built without downloading anything.

    The encoder is ``model.encoder`` (a MONAI ``ResNet``); load local weights into it with
    :func:`medseg.transfer.load_encoder_weights`.

    Args:
        spatial_dims, in_channels, out_channels: as everywhere.
        backbone: one of ``resnet10`` ... ``resnet200``. Defaults to ``resnet18``.
        pretrained: must be False: medseg never fetches weights from a hub.
        **kwargs: any other ``monai.networks.nets.FlexibleUNet`` argument.

    Shapes:
        ``(B, C_in, *S)`` -> ``(B, C_out, *S)``, ``S`` divisible by 32.
    """
    _check_common(spatial_dims, in_channels, out_channels)
    if backbone not in FLEXIBLE_UNET_BACKBONES:
        raise InvalidValueError(f"`backbone` must be one of {FLEXIBLE_UNET_BACKBONES}, got {backbone!r}")
    if pretrained:
        raise InvalidValueError(
            "`pretrained=True` would download weights, which medseg never does; "
            "build with pretrained=False and "
            "load a local file with medseg.transfer.load_encoder_weights (or the bundle's `transfer` config)"
        )
    return nets.FlexibleUNet(
        in_channels=in_channels,
        out_channels=out_channels,
        backbone=backbone,
        pretrained=False,
        spatial_dims=spatial_dims,
        **kwargs,
    )

"""Segmentation networks, built by name: ``build_network("light_unet", spatial_dims=2, ...)``.

Importing this package registers every network: MONAI's (``segresnet``, ``unet``,
``dynunet``, ``swinunetr``, ``attention_unet_monai``, ``flexible_unet``) and medseg's own
(``attention_unet3d``, ``light_unet``, ``deeplabv3plus``).
"""

from __future__ import annotations

from medseg.networks import attention_unet, deeplabv3plus, light_unet, monai_wrappers  # noqa: F401  (registers)
from medseg.networks.attention_unet import AttentionUNet
from medseg.networks.deeplabv3plus import DeepLabV3Plus
from medseg.networks.encoders import encoder_module, encoder_stages
from medseg.networks.light_unet import LightUNet
from medseg.networks.registry import (
    NetworkInfo,
    build_network,
    list_networks,
    network_info,
    network_info_for_module,
    register_network,
)

__all__ = [
    "AttentionUNet",
    "DeepLabV3Plus",
    "LightUNet",
    "NetworkInfo",
    "build_network",
    "encoder_module",
    "encoder_stages",
    "list_networks",
    "network_info",
    "network_info_for_module",
    "register_network",
]

"""What "the encoder" and its "stages" are, for the networks that have a pretrained-style encoder.

Transfer learning (:mod:`medseg.transfer`) loads weights into the encoder, freezes it and
unfreezes it stage by stage. A network declares its encoder either with an
``encoder_stages()`` method or, for MONAI networks such as ``FlexibleUNet``, by holding a
MONAI ``ResNet`` as ``.encoder``.
"""

from __future__ import annotations

from monai.networks.nets.resnet import ResNet
from torch import nn

from medseg.errors import InvalidTypeError, InvalidValueError

__all__ = ["encoder_module", "encoder_stages", "resnet_stages"]


def resnet_stages(resnet: ResNet) -> list[nn.Module]:
    """Split a MONAI ``ResNet`` into its five stages: stem (``conv1``, ``bn1``), ``layer1`` ... ``layer4``.

    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. Stage ``i`` has
    output stride ``2 ** (i + 1)`` (stem 2, ``layer1`` 4 after the max-pool, ... ``layer4`` 32).

    Args:
        resnet: a ``monai.networks.nets.ResNet`` (or its ``ResNetEncoder`` subclass).

    Returns:
        Five modules, shallowest first; the stem is an ``nn.ModuleList`` holding the
        original ``conv1`` and ``bn1`` (their parameters are shared, not copied).
    """
    if not isinstance(resnet, ResNet):
        raise InvalidTypeError(f"expected a monai.networks.nets.ResNet, got {type(resnet).__name__}")
    stem = nn.ModuleList([resnet.conv1, resnet.bn1])
    return [stem, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]


def encoder_stages(model: nn.Module) -> list[nn.Module]:
    """Return the encoder stages of ``model``, shallowest first.

    Args:
        model: a network with an ``encoder_stages()`` method, or with a MONAI ``ResNet`` as
            ``model.encoder`` (e.g. MONAI ``FlexibleUNet`` with a ResNet backbone).

    Raises:
        ValueError: the model has no encoder that medseg knows how to split.
    """
    method = getattr(model, "encoder_stages", None)
    if callable(method):
        return list(method())
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ResNet):
        return resnet_stages(encoder)
    raise InvalidValueError(
        f"{type(model).__name__} has no encoder stages: it needs an `encoder_stages()` method or a MONAI "
        "ResNet as `.encoder` (networks with one: deeplabv3plus, flexible_unet)"
    )


def encoder_module(model: nn.Module) -> nn.Module:
    """Return ``model.encoder`` when the model has one (an ``nn.Module``), else raise ``ValueError``."""
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder
    raise InvalidValueError(f"{type(model).__name__} has no `.encoder` submodule")

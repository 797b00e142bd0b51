"""Load encoder weights from a local ``.pt``, ``.pth`` or ``.safetensors`` file, and report what matched.

medseg never fetches weights from a hub: the user names a file, e.g. a torchvision or
MedicalNet ResNet state dict downloaded beforehand. MONAI's ``ResNet`` uses torchvision's
key names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so such files load into the
encoder of ``deeplabv3plus`` or ``flexible_unet`` as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medseg.checkpoint import safe_torch_load, state_dict_from
from medseg.errors import MedsegError
from medseg.networks.encoders import encoder_module

__all__ = ["LoadReport", "WEIGHT_SUFFIXES", "load_encoder_weights", "read_state_dict", "with_encoder_weights"]

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".safetensors")


@dataclass
class LoadReport:
    """Which keys of a weight file went into the module.

    Attributes:
        path: the file read.
        matched: keys present in both with the same shape (loaded).
        missing: module keys the file lacks (left as initialised).
        unexpected: file keys the module lacks (ignored), e.g. a classifier's ``fc.weight``.
        shape_mismatched: ``(key, file_shape, module_shape)`` for names present in both
            with different shapes (not loaded).
    """

    path: Path
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and a few examples of what did not load."""
        parts = [f"{self.path}: {len(self.matched)} keys matched"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        if self.shape_mismatched:
            key, got, want = self.shape_mismatched[0]
            parts.append(
                f"{len(self.shape_mismatched)} shape-mismatched (e.g. {key}: file {got} vs model {want})"
            )
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (``weights_only`` loading) or ``.safetensors``.

    A ``.pt``/``.pth`` file may hold the state dict itself, a medseg checkpoint, or a wrapper
    such as ``{"state_dict": ...}`` or ``{"model": ...}``.

    Raises:
        MedsegError: unknown suffix, missing, unreadable or refused file, or no state dict in it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise MedsegError(
            f"{path}: weight files must end in one of {', '.join(WEIGHT_SUFFIXES)}, got {suffix!r}"
        )
    if suffix == ".safetensors":
        if not path.is_file():
            raise MedsegError(f"{path}: file not found")
        from safetensors.torch import load_file  # optional dependency, only for this format

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged header
            raise MedsegError(f"{path}: not a readable safetensors file: {err}") from err
    return state_dict_from(safe_torch_load(path), path)


def _remap(state: Mapping[str, torch.Tensor], prefix_map: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Replace the first matching prefix of each key; the longest prefix wins."""
    prefixes = sorted(prefix_map, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old in prefixes:
            if key.startswith(old):
                key = prefix_map[old] + key[len(old) :]
                break
        out[key] = value
    return out


def load_encoder_weights(
    model_or_encoder: nn.Module,
    path: str | os.PathLike[str],
    *,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load the matching weights of a local file into a module, typically a network's encoder.

    Args:
        model_or_encoder: the module to load into, e.g. ``model.encoder``; or the whole
            model with ``prefix_map={"": "encoder."}``.
        path: a ``.pt``, ``.pth`` or ``.safetensors`` file.
        prefix_map: renames key prefixes of the file before matching, e.g.
            ``{"module.backbone.": ""}``; the longest matching prefix is replaced.
        strict: fail unless every key matches in name and shape.

    Returns:
        A :class:`LoadReport`; its summary is also logged at INFO level.

    Raises:
        MedsegError: the file cannot be read, no key matches (a few keys from both sides are
            shown), or ``strict`` and something did not match.
    """
    path = Path(path)
    state = read_state_dict(path)
    if prefix_map:
        state = _remap(state, prefix_map)
    own = model_or_encoder.state_dict()
    report = LoadReport(path=path)
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            report.matched.append(key)
    report.missing = [key for key in own if key not in state]
    if not report.matched:
        raise MedsegError(
            f"{path}: no key matches {type(model_or_encoder).__name__} (file keys e.g. {list(state)[:4]}; "
            f"model keys e.g. {list(own)[:4]}); rename prefixes with `prefix_map`"
        )
    if strict and (report.missing or report.unexpected or report.shape_mismatched):
        raise MedsegError(f"strict loading failed: {report.summary()}")
    model_or_encoder.load_state_dict({k: state[k] for k in report.matched}, strict=False)
    logger.info("encoder weights: %s", report.summary())
    return report


def with_encoder_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = False,
) -> nn.Module:
    """Load local weights into ``model.encoder`` and return ``model``, for use as a bundle's ``network_def``.

    Example (bundle config)::

        "network_def": {"_target_": "medseg.transfer.with_encoder_weights",
                        "model": {"_target_": "medseg.networks.build_network",
                                  "name": "deeplabv3plus", "in_channels": 3, "out_channels": 2},
                        "path": "$@bundle_root + '/pretrained/resnet18.pth'"}

    Args:
        model: a network with an ``.encoder`` (``deeplabv3plus``, ``flexible_unet``).
        path, prefix_map, strict: as :func:`load_encoder_weights`.
    """
    load_encoder_weights(encoder_module(model), path, prefix_map=prefix_map, strict=strict)
    return model


def encoder_weights_or_scratch(
    model: nn.Module,
    path: str | os.PathLike[str] | None,
    *,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = False,
) -> nn.Module:
    """Load ``model.encoder`` from a local file, or say loudly that it trains from scratch.

    For bundle configs whose ``encoder_weights`` id may be ``null``::

        "network_def": "$medseg.transfer.encoder_weights_or_scratch(medseg.networks.build_network(...), @encoder_weights)"

    Args:
        model: a network with an ``.encoder``.
        path: a ``.pt``, ``.pth`` or ``.safetensors`` file, or ``None``/``""`` for none.
        prefix_map, strict: as :func:`load_encoder_weights`.

    Returns:
        ``model``.
    """
    if path is None or str(path).strip() == "":
        logger.warning("no encoder weights file given (encoder_weights is null): the %s encoder is randomly "
                       "initialised and trains FROM SCRATCH; set encoder_weights to a local .pt/.pth/.safetensors "
                       "file (e.g. torchvision's resnet18 weights) to fine-tune", type(model).__name__)
        return model
    return with_encoder_weights(model, path, prefix_map=prefix_map, strict=strict)

"""Export the network of a MONAI bundle: read its configs, load its weights, export, check parity.

A bundle folder holds ``configs/inference.json`` (with a ``network_def`` entry),
``configs/metadata.json`` (with ``network_data_format.inputs.image``) and, once trained,
``models/model.pt`` (a medseg checkpoint or a plain state dict).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from medseg.checkpoint import load_weights
from medseg.errors import MedsegError
from medseg.export.exporters import (
    DEFAULT_OPSET,
    check_parity,
    export_onnx,
    export_torchscript,
    has_fixed_export_shape,
)

__all__ = ["EXPORT_SUFFIX", "ExportResult", "bundle_example_input", "export_bundle", "load_bundle_network"]

logger = logging.getLogger(__name__)

EXPORT_SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
PARITY_ATOL = 1e-4
# Size used for a metadata axis given as "k*n" (any multiple of k): the smallest multiple >= this.
_VARIABLE_AXIS_MIN = 64


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bundle` produced.

    Attributes:
        path: the exported file.
        format: ``"torchscript"`` or ``"onnx"``.
        max_abs_diff: the parity check's maximum absolute difference from PyTorch (fp32).
        atol: the tolerance it was checked against.
        input_shape: the example input's shape ``(1, C, *S)``.
        weights: the weight file loaded, or ``None`` when the network kept its initial weights.
        fixed_shape: the export only runs at ``input_shape`` (e.g. SwinUNETR); otherwise
            batch and spatial sizes may vary (within the network's divisibility rules).
    """

    path: Path
    format: str
    max_abs_diff: float
    atol: float
    input_shape: tuple[int, ...]
    weights: Path | None
    fixed_shape: bool = False

    @property
    def passed(self) -> bool:
        """Whether the parity check passed."""
        return self.max_abs_diff <= self.atol


def _config_file(folder: Path, stem: str) -> Path:
    for suffix in (".json", ".yaml", ".yml"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise MedsegError(f"{folder / (stem + '.json')}: bundle config not found")


def _axis_size(value: Any, where: str) -> int:
    """A metadata axis: an int, a numeric string, or ``"k*n"`` (smallest multiple of k >= 64)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).replace(" ", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    match = re.fullmatch(r"(\d+)\*n|n\*(\d+)", text)
    if match:
        k = int(match.group(1) or match.group(2))
        return k * math.ceil(_VARIABLE_AXIS_MIN / k)
    raise MedsegError(f"{where}: spatial size must be a positive integer or 'k*n', got {value!r}")


def bundle_example_input(bundle_dir: str | os.PathLike[str]) -> tuple[int, ...]:
    """The example input shape ``(1, C, *S)``, from ``configs/metadata.json``.

    Read from ``network_data_format.inputs.image``: ``num_channels`` and ``spatial_shape``.
    """
    path = _config_file(Path(bundle_dir) / "configs", "metadata")
    meta = ConfigParser.load_config_file(path)
    try:
        image = meta["network_data_format"]["inputs"]["image"]
        channels, spatial = image["num_channels"], image["spatial_shape"]
    except (KeyError, TypeError) as err:
        raise MedsegError(
            f"{path}: needs network_data_format.inputs.image.num_channels and .spatial_shape (missing {err})"
        ) from None
    where = f"{path}: network_data_format.inputs.image"
    return (
        1,
        _axis_size(channels, f"{where}.num_channels"),
        *(_axis_size(s, f"{where}.spatial_shape") for s in spatial),
    )


def load_bundle_network(
    bundle_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None
) -> tuple[nn.Module, Path | None]:
    """Instantiate ``network_def`` from the bundle's inference config and load its weights.

    Args:
        bundle_dir: the bundle folder.
        checkpoint: the weight file; defaults to ``models/model.pt`` when present.

    Returns:
        The network in eval mode, and the weight file used (``None`` when there was none).
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise MedsegError(f"{bundle_dir}: bundle folder not found")
    config_path = _config_file(bundle_dir / "configs", "inference")
    parser = ConfigParser()
    parser.read_config(str(config_path))
    keys = sorted(k for k in parser.get() if k != "_meta_")
    if "network_def" not in keys:
        raise MedsegError(f"{config_path}: no 'network_def' entry (top-level keys: {keys})")
    parser["bundle_root"] = str(bundle_dir)  # relative paths in the config resolve against this bundle
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as err:  # MONAI wraps instantiation errors in RuntimeError with the cause chained
        cause = err.__cause__ or err
        raise MedsegError(f"{config_path}: cannot build 'network_def': {str(cause).splitlines()[0]}") from err
    if not isinstance(network, nn.Module):
        raise MedsegError(
            f"{config_path}: 'network_def' must build an nn.Module, got {type(network).__name__}"
        )
    weights = Path(checkpoint) if checkpoint is not None else bundle_dir / "models" / "model.pt"
    if checkpoint is None and not weights.is_file():
        logger.warning(
            "%s: no models/model.pt and no --checkpoint: exporting the initial weights", bundle_dir
        )
        return network.eval(), None
    load_weights(network, weights)
    return network.eval(), weights


def export_bundle(
    bundle_dir: str | os.PathLike[str],
    fmt: str,
    checkpoint: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = PARITY_ATOL,
) -> ExportResult:
    """Export a bundle's network to TorchScript or ONNX and check parity with PyTorch.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``).
        fmt: ``"torchscript"`` or ``"onnx"``.
        checkpoint: the weights; defaults to ``models/model.pt`` when present.
        out: the output file; defaults to ``models/model.ts`` or ``models/model.onnx``.
        opset: ONNX opset. Defaults to 17.
        atol: parity tolerance (fp32). Defaults to 1e-4.

    Returns:
        An :class:`ExportResult`; ``result.passed`` tells whether parity held.

    Raises:
        MedsegError: unknown format, unreadable bundle or weights; ``ExportNotSupported``
            when the network cannot be exported to ``fmt``.
    """
    if fmt not in EXPORT_SUFFIX:
        raise MedsegError(f"export format must be one of {sorted(EXPORT_SUFFIX)}, got {fmt!r}")
    network, weights = load_bundle_network(bundle_dir, checkpoint)
    shape = bundle_example_input(bundle_dir)
    target = Path(out) if out is not None else Path(bundle_dir) / "models" / f"model{EXPORT_SUFFIX[fmt]}"
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    name = type(network).__name__
    if fmt == "torchscript":
        export_torchscript(network, example, target, name=name)
    else:
        export_onnx(network, example, target, opset=opset, name=name)
    diff = check_parity(network, target, example, atol=atol)
    return ExportResult(
        path=target,
        format=fmt,
        max_abs_diff=diff,
        atol=atol,
        input_shape=shape,
        weights=weights,
        fixed_shape=has_fixed_export_shape(network),
    )

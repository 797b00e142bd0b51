"""Export the network of a MONAI bundle: read its configs, load its weights, export, check parity.

The network is built from the checkpoint's own spec, never by evaluating the bundle's configs
(which can run any Python) unless the user passes ``--trust-bundle``.
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

from medseg.checkpoint import (
    build_from_checkpoint,
    check_network_size,
    is_medseg_checkpoint,
    load_weights,
    safe_torch_load,
)
from medseg.engine.trust import code_in_value
from medseg.errors import MedsegError
from medseg.export.exporters import (
    DEFAULT_OPSET,
    check_parity,
    export_onnx,
    export_torchscript,
    has_fixed_export_shape,
)
from medseg.networks import build_network

__all__ = ["EXPORT_SUFFIX", "ExportResult", "bundle_example_input", "export_bundle", "export_target",
           "load_bundle_network"]

logger = logging.getLogger(__name__)

EXPORT_SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
PARITY_ATOL = 1e-4
# Size used for a metadata axis given as "k*n" (any multiple of k): the smallest multiple >= this.
_VARIABLE_AXIS_MIN = 64
# network_def targets read as plain data (medseg's own registry), without evaluating the config.
_BUILD_NETWORK_TARGETS = ("medseg.networks.build_network", "medseg.networks.registry.build_network")


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


def _spec_from_inference_config(config_path: Path) -> dict[str, Any] | None:
    """The network spec written as plain data in ``inference.json``, without evaluating anything.

    Accepted: ``network_spec: {"name", "kwargs"}``, or a ``network_def`` component whose
    ``_target_`` is medseg's own ``build_network`` with plain arguments. Anything else
    (expressions, references, other targets) is code and is not read here.
    """
    config = ConfigParser.load_config_file(str(config_path))
    if not isinstance(config, dict):
        return None
    spec = config.get("network_spec")
    if isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs", {}), dict):
        if code_in_value(spec) is None and not any(isinstance(v, str) and v.startswith("@")
                                                   for v in spec.get("kwargs", {}).values()):
            return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}
    definition = config.get("network_def")
    if isinstance(definition, dict) and definition.get("_target_") in _BUILD_NETWORK_TARGETS:
        args = {k: v for k, v in definition.items() if k != "_target_"}
        if isinstance(args.get("name"), str) and code_in_value(args) is None and not any(
                isinstance(v, str) and v.startswith("@") for v in args.values()):
            name = args.pop("name")
            return {"name": name, "kwargs": args}
    return None


def load_bundle_network(
    bundle_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None, trust: bool = False
) -> tuple[nn.Module, Path | None]:
    """Build a bundle's network from its checkpoint's own spec and load its weights; nothing is evaluated.

    The network comes from, in order: the medseg checkpoint's spec (``models/model.pt`` or
    ``checkpoint``); the plain-data ``network_spec`` (or a ``network_def`` calling medseg's
    ``build_network`` with plain arguments) of ``configs/inference.json``; and, only with
    ``trust``, ``network_def`` evaluated by MONAI's config parser (it can run any Python).

    Args:
        bundle_dir: the bundle folder.
        checkpoint: the weight file; defaults to ``models/model.pt`` when present.
        trust: allow evaluating ``network_def`` when no plain spec exists.

    Returns:
        The network in eval mode, and the weight file used (``None`` when there was none).
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise MedsegError(f"{bundle_dir}: bundle folder not found")
    weights = Path(checkpoint) if checkpoint is not None else bundle_dir / "models" / "model.pt"
    has_weights = checkpoint is not None or weights.is_file()
    loaded = safe_torch_load(weights) if has_weights else None
    if is_medseg_checkpoint(loaded):
        return build_from_checkpoint(weights), weights  # its ModelSpec is checked, naming the file and field
    config_path = _config_file(bundle_dir / "configs", "inference")
    spec = _spec_from_inference_config(config_path)
    if spec is not None:
        check_network_size(spec, source=config_path)  # bounded before any memory is taken
        network = build_network(spec["name"], **spec["kwargs"])
    elif trust:
        network = _evaluate_network_def(bundle_dir, config_path)
    else:
        raise MedsegError(
            f"{config_path}: no network spec to build from: the weights "
            f"{'are a plain state dict' if has_weights else 'are missing'}, and the config has no plain "
            "'network_spec' (or 'network_def' calling medseg.networks.build_network with plain arguments); "
            "evaluating its 'network_def' would run the config's code: pass --trust-bundle if you trust it"
        )
    if not has_weights:
        logger.warning(
            "%s: no models/model.pt and no --checkpoint: exporting the initial weights", bundle_dir
        )
        return network.eval(), None
    load_weights(network, weights)
    return network.eval(), weights


def _evaluate_network_def(bundle_dir: Path, config_path: Path) -> nn.Module:
    """``network_def`` through MONAI's config parser (runs the config's code: trusted bundles only)."""
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
    return network


def export_target(bundle_dir: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str] | None = None,
                  checkpoint: str | os.PathLike[str] | None = None, overwrite: bool = False,
                  extra: tuple[str, ...] = ()) -> Path:
    """The file an export writes, refused if it would replace the weights or, without ``overwrite``, any file.

    Args:
        bundle_dir: the bundle folder.
        fmt: ``"torchscript"`` or ``"onnx"``.
        out: the requested output file (default ``models/model.ts`` or ``.onnx``).
        checkpoint: the weight file read (never replaced, whatever ``overwrite`` says).
        overwrite: allow replacing an existing export.
        extra: suffixes of further files written beside it (``".int8.onnx"``), checked too.

    Raises:
        MedsegError: naming the file.
    """
    target = Path(out) if out is not None else Path(bundle_dir) / "models" / f"model{EXPORT_SUFFIX[fmt]}"
    weights = Path(checkpoint) if checkpoint is not None else Path(bundle_dir) / "models" / "model.pt"
    paths = [target, *(target.with_name(target.stem + suffix) for suffix in extra)]
    for path in paths:
        if path.exists() and weights.exists() and path.resolve() == weights.resolve():
            raise MedsegError(f"{path}: --out is the checkpoint being exported; choose another file")
        if path.exists() and not overwrite:
            raise MedsegError(f"{path}: already exists; pass --overwrite to replace it, or choose another --out")
        if path.is_dir():
            raise MedsegError(f"{path}: is a folder; --out must name a file")
    return target


def export_bundle(
    bundle_dir: str | os.PathLike[str],
    fmt: str,
    checkpoint: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = PARITY_ATOL,
    trust: bool = False,
    overwrite: bool = False,
) -> ExportResult:
    """Export a bundle's network to TorchScript or ONNX and check parity with PyTorch.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``).
        fmt: ``"torchscript"`` or ``"onnx"``.
        checkpoint: the weights; defaults to ``models/model.pt`` when present.
        out: the output file; defaults to ``models/model.ts`` or ``models/model.onnx``.
        opset: ONNX opset. Defaults to 17.
        atol: parity tolerance (fp32). Defaults to 1e-4.
        trust: allow evaluating the config's ``network_def`` (see :func:`load_bundle_network`).
        overwrite: replace an existing export file (never the checkpoint itself).

    Returns:
        An :class:`ExportResult`; ``result.passed`` tells whether parity held.

    Raises:
        MedsegError: unknown format, unreadable bundle or weights; ``ExportNotSupported``
            when the network cannot be exported to ``fmt``.
    """
    if fmt not in EXPORT_SUFFIX:
        raise MedsegError(f"export format must be one of {sorted(EXPORT_SUFFIX)}, got {fmt!r}")
    target = export_target(bundle_dir, fmt, out, checkpoint, overwrite)
    network, weights = load_bundle_network(bundle_dir, checkpoint, trust=trust)
    shape = bundle_example_input(bundle_dir)
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

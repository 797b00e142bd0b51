"""Export a network to TorchScript or ONNX, and check the export against PyTorch.

Both exporters try more than one route before giving up: TorchScript scripts first (keeps
control flow and any input size) and traces when scripting fails; ONNX uses the
``torch.export``-based exporter when ``onnxscript`` is installed and the TorchScript-based
("legacy") exporter otherwise or when that fails. Only when every route fails is
:class:`ExportNotSupported` raised, naming the network, the format and each route's error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.networks.registry import network_info_for_module
from medseg.utils.atomic import atomic_path

__all__ = [
    "ExportNotSupported",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "check_parity",
    "export_onnx",
    "export_torchscript",
    "has_fixed_export_shape",
    "run_exported",
]

logger = logging.getLogger(__name__)

ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"
DEFAULT_OPSET = 17


class ExportNotSupported(MedsegError):
    """The network cannot be exported to the requested format; the message says why."""


def has_fixed_export_shape(model: nn.Module) -> bool:
    """Whether the registry says exports of ``model`` only run at the example's shape (e.g. SwinUNETR)."""
    info = network_info_for_module(model)
    return info is not None and info.fixed_export_shape


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode without gradients, restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer and exporter warnings about Python values baked into the graph are
            # expected (shape checks are skipped while tracing); parity checks catch real issues.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            yield
    finally:
        model.train(was_training)


def export_torchscript(
    model: nn.Module, example: torch.Tensor, out: str | os.PathLike[str], *, name: str | None = None
) -> Path:
    """Write ``model`` as TorchScript, scripting it or, if that fails, tracing it with ``example``.

    Args:
        model: the network; exported in eval mode (single-tensor output).
        example: an input ``(B, C, *S)`` for tracing.
        out: the target file (written atomically), e.g. ``model.ts``.
        name: the network's name for messages. Defaults to the class name.

    Returns:
        The path written. A traced export of a ``fixed_export_shape`` network (see
        :func:`has_fixed_export_shape`) only runs at ``example``'s shape.

    Raises:
        ExportNotSupported: neither scripting nor tracing worked.
    """
    name = name or type(model).__name__
    errors: list[str] = []
    with _eval_no_grad(model):
        module: torch.jit.ScriptModule | None = None
        try:
            module = torch.jit.script(model)
            module(example)  # a scripted module can compile yet fail on the first call
        except Exception as err:  # scripting fails with many error types on unsupported Python
            errors.append(f"scripting: {_first_line(err)}")
            module = None
        if module is None:
            try:
                module = torch.jit.trace(model, example, check_trace=False)
            except Exception as err:
                errors.append(f"tracing: {_first_line(err)}")
                raise ExportNotSupported(
                    f"network {name!r} cannot be exported to TorchScript: {'; '.join(errors)}"
                ) from err
            logger.info("%s: scripting failed (%s); exported by tracing", name, errors[0])
        target = Path(out)
        with atomic_path(target) as tmp:
            torch.jit.save(module, str(tmp))
    return target


def _onnx_routes() -> list[str]:
    routes = ["legacy"]
    if importlib.util.find_spec("onnxscript") is not None:
        routes.insert(0, "dynamo")
    return routes


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: bool | None = None,
    name: str | None = None,
) -> Path:
    """Write ``model`` as ONNX with input ``"image"`` and output ``"logits"``.

    Args:
        model: the network; exported in eval mode.
        example: an input ``(B, C, *S)``.
        out: the target file (written atomically), e.g. ``model.onnx``.
        opset: ONNX opset version. Defaults to 17.
        dynamic: declare the batch and spatial axes dynamic. ``None`` (default): dynamic
            unless the registry marks the network ``fixed_export_shape`` (its code turns
            sizes into Python numbers, which the export would keep regardless).
        name: the network's name for messages.

    Returns:
        The path written.

    Raises:
        ExportNotSupported: every exporter route failed (each route's error is given).
    """
    name = name or type(model).__name__
    if dynamic is None:
        dynamic = not has_fixed_export_shape(model)
    axes = {0: "batch", **{i: f"spatial{i - 2}" for i in range(2, example.dim())}}
    dynamic_axes = {ONNX_INPUT: axes, ONNX_OUTPUT: axes} if dynamic else None
    errors: list[str] = []
    target = Path(out)
    with _eval_no_grad(model):
        for route in _onnx_routes():
            try:
                with atomic_path(target) as tmp:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        input_names=[ONNX_INPUT],
                        output_names=[ONNX_OUTPUT],
                        opset_version=opset,
                        dynamic_axes=dynamic_axes,
                        dynamo=route == "dynamo",
                        # Weights stay inside the single file (the target is renamed into place).
                        external_data=False,
                    )
                return target
            except Exception as err:  # the exporters raise many error types
                errors.append(f"{route} exporter: {_first_line(err)}")
                logger.info("%s: ONNX %s exporter failed: %s", name, route, errors[-1])
    raise ExportNotSupported(
        f"network {name!r} cannot be exported to ONNX (opset {opset}): {'; '.join(errors)}"
    )


def run_exported(path: str | os.PathLike[str], x: torch.Tensor) -> torch.Tensor:
    """Run an exported model (``.onnx`` through ONNX Runtime on the CPU, else TorchScript) on ``x``."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)}
        return torch.from_numpy(session.run(None, feed)[0])
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x.cpu())


def check_parity(
    model: nn.Module, exported_path: str | os.PathLike[str], example: torch.Tensor, atol: float = 1e-4
) -> float:
    """Compare the exported model with ``model`` on ``example``; return the maximum absolute difference.

    ONNX files run through ONNX Runtime (CPU); TorchScript files through ``torch.jit.load``.

    Args:
        model: the PyTorch network (evaluated in eval mode, fp32).
        exported_path: the ``.onnx`` or TorchScript file.
        example: the input ``(B, C, *S)``.
        atol: the tolerance; a larger difference is logged as a warning.

    Returns:
        ``max |exported(example) - model(example)|`` over all outputs.
    """
    with _eval_no_grad(model):
        reference = model(example)
    exported = run_exported(exported_path, example)
    if tuple(exported.shape) != tuple(reference.shape):
        raise MedsegError(
            f"{exported_path}: output shape {tuple(exported.shape)} differs from "
            f"PyTorch's {tuple(reference.shape)}"
        )
    diff = float((exported.float() - reference.float().cpu()).abs().max())
    if diff > atol:
        logger.warning("%s: parity max abs diff %.3g exceeds %.1g", exported_path, diff, atol)
    return diff

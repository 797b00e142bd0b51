"""INT8 post-training static quantization of an ONNX model with ONNX Runtime, and its cost/benefit figures.

Static QDQ quantization with per-channel weights (Jacob et al., "Quantization and Training
of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018; ONNX
Runtime's ``quantize_static``). Activation ranges come from calibration batches, which
should look like real inputs (normalised images of the deployment resolution).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.export.exporters import ONNX_INPUT
from medseg.utils.atomic import atomic_path

__all__ = ["dice_between", "int8_report", "latency_ms", "quantize_onnx_int8"]


@contextlib.contextmanager
def _working_directory(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block with ``path`` as the working directory.

    ONNX Runtime's shape inference and calibration write temporary ``*.onnx``/``*.data``
    files into the current directory and leave some behind. This changes the process-wide
    working directory: do not quantize from several threads at once.
    """
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_onnx_int8(
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration_batches: Iterable[np.ndarray | torch.Tensor],
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
) -> Path:
    """Quantize an fp32 ONNX model to INT8 (QDQ format, uint8 activations, int8 weights).

    The model is first pre-processed (shape inference and graph optimisation, as ONNX
    Runtime recommends), then activation ranges are calibrated over ``calibration_batches``.

    Args:
        onnx_path: the fp32 model, with the input named ``"image"``.
        out: the INT8 model to write (atomically).
        calibration_batches: input arrays ``(B, C, *S)`` (float32), e.g. 8-32 real images.
        per_channel: per-output-channel weight scales. Defaults to True.
        calibrate_method: how activation ranges are set from the calibration data:
            ``"minmax"`` (default), ``"percentile"`` (clips the 0.001 % tails) or ``"entropy"``.

    Returns:
        The path written.

    Raises:
        MedsegError: no calibration batch was given, or quantization failed.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [np.ascontiguousarray(np.asarray(b, dtype=np.float32)) for b in calibration_batches]
    if not batches:
        raise MedsegError("INT8 quantization needs at least one calibration batch, got none")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibrate_method not in methods:
        raise MedsegError(f"`calibrate_method` must be one of {sorted(methods)}, got {calibrate_method!r}")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {ONNX_INPUT: batch}

    target = Path(out).resolve()
    source = Path(onnx_path).resolve()
    with tempfile.TemporaryDirectory() as work, _working_directory(work):
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # noqa: BLE001 - ORT raises a bare Exception
            # Symbolic shape inference gives up on some graphs with dynamic spatial axes;
            # ONNX's own shape inference and the graph optimisation still apply.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        try:
            with atomic_path(target) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                )
        except Exception as err:  # ORT's quantizer raises many error types
            raise MedsegError(f"{onnx_path}: INT8 quantization failed: {type(err).__name__}: {err}") from err
    return target


def latency_ms(
    onnx_paths: Sequence[str | os.PathLike[str]], x: np.ndarray, *, threads: int = 2, repeats: int = 20
) -> list[float]:
    """Median wall time in milliseconds of one ONNX Runtime CPU run on ``x``, for each model.

    The models run in turn within each repetition (after 3 warm-up runs each), so a change
    of machine load during the measurement affects them alike.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in onnx_paths]
    feeds = [{s.get_inputs()[0].name: np.asarray(x, dtype=np.float32)} for s in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (session, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            session.run(None, feed)
            times[i].append((time.perf_counter() - start) * 1000.0)
    return [float(np.median(t)) for t in times]


def dice_between(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _masks(onnx_path: str | os.PathLike[str], images: Sequence[np.ndarray], threads: int) -> list[np.ndarray]:
    """Foreground masks of each image ``(1, C, *S)``: argmax over channels != 0, or logit > 0 for one sigmoid channel."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    masks = []
    for x in images:
        logits = session.run(None, {name: np.asarray(x, np.float32)})[0]
        masks.append(logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(axis=1) != 0)
    return masks


def int8_report(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None = None,
    *,
    threads: int = 2,
    repeats: int = 20,
) -> dict[str, Any]:
    """Size, latency and segmentation agreement of an INT8 model against its fp32 original.

    Args:
        fp32_path: the fp32 ONNX model.
        int8_path: the INT8 ONNX model.
        images: evaluation inputs, each ``(1, C, *S)``; the first is used for timing.
        labels: optional ground-truth foreground masks, each ``(1, *S)``.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
        repeats: timed runs per model. Defaults to 20.

    Returns:
        ``fp32_bytes``, ``int8_bytes``, ``size_ratio``, ``fp32_ms``, ``int8_ms``, ``speedup``,
        ``dice_int8_vs_fp32`` (mean Dice of the INT8 masks against the fp32 masks) and, with
        labels, ``dice_fp32`` / ``dice_int8`` against them and their difference ``dice_change``.
    """
    if not images:
        raise MedsegError("int8_report needs at least one evaluation image, got none")
    fp32_bytes, int8_bytes = Path(fp32_path).stat().st_size, Path(int8_path).stat().st_size
    fp32_ms, int8_ms = latency_ms([fp32_path, int8_path], images[0], threads=threads, repeats=repeats)
    m32, m8 = _masks(fp32_path, images, threads), _masks(int8_path, images, threads)
    report: dict[str, Any] = {
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / int8_bytes, 3),
        "fp32_ms": round(fp32_ms, 3),
        "int8_ms": round(int8_ms, 3),
        "speedup": round(fp32_ms / int8_ms, 3),
        "dice_int8_vs_fp32": round(float(np.mean([dice_between(a, b) for a, b in zip(m32, m8)])), 5),
        "n_images": len(images),
        "threads": threads,
    }
    if labels is not None:
        d32 = float(np.mean([dice_between(m, y) for m, y in zip(m32, labels)]))
        d8 = float(np.mean([dice_between(m, y) for m, y in zip(m8, labels)]))
        report.update(dice_fp32=round(d32, 5), dice_int8=round(d8, 5), dice_change=round(d8 - d32, 5))
    return report

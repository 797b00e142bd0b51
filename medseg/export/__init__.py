"""Export networks to TorchScript and ONNX with parity checks, and INT8 quantization through ONNX Runtime."""

from __future__ import annotations

from medseg.export.bundle import (
    ExportResult,
    bundle_example_input,
    export_bundle,
    export_target,
    load_bundle_network,
)
from medseg.export.exporters import (
    ExportNotSupported,
    check_parity,
    export_onnx,
    export_torchscript,
    run_exported,
)
from medseg.export.quantize import dice_between, int8_report, latency_ms, quantize_onnx_int8

__all__ = [
    "ExportNotSupported",
    "ExportResult",
    "bundle_example_input",
    "check_parity",
    "dice_between",
    "export_bundle",
    "export_onnx",
    "export_target",
    "export_torchscript",
    "int8_report",
    "latency_ms",
    "load_bundle_network",
    "quantize_onnx_int8",
    "run_exported",
]

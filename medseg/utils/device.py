"""The one device-and-precision policy: where a network runs and in which floating-point type.

Training (``medseg.engine.fastpath.amp_kwargs``, the trainer's and evaluator's autocast), 3D
inference (:class:`medseg.inference.predictor.SlidingWindowPredictor`) and 2D inference ask
here, so one knob changes all three:

* :func:`resolve_device`: ``"auto"`` is CUDA when there is one, else the CPU;
* :func:`autocast_dtype`: mixed precision only on CUDA, in bfloat16 where the GPU has it (no
  loss-scale overflows; as fast as float16 on Ampere and later), else float16; never on the CPU,
  where autocast slows convolutions down.

Which choice is fastest per GPU is measured by the GPU benchmarks (``benchmarks/``), not decided here.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from medseg.errors import MedsegError

__all__ = ["autocast", "autocast_dtype", "resolve_device", "supports_bf16"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; ``"cuda"`` without a GPU is an error.

    Raises:
        MedsegError: an unknown name, or CUDA requested but not available.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedsegError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise MedsegError(f"--device must be auto, cpu or cuda, got {name!r}")


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The autocast type on ``device``: bfloat16 on a CUDA GPU that supports it, float16 on other GPUs, ``None`` on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if supports_bf16(device) else torch.float16


def supports_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` can autocast to bfloat16: a CUDA GPU that supports it (never the CPU here: it does not autocast)."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def autocast(device: str | torch.device, enabled: bool = True) -> ContextManager:
    """``torch.autocast`` with :func:`autocast_dtype` on ``device``, or a no-op (disabled, or the CPU)."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)

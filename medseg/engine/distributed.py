"""Helpers for ``multi_gpu_train.json`` under ``torchrun``: the local device and rank-0 agreement."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` on a GPU node, else the CPU (gloo backend, e.g. the CI test)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def broadcast_string(value: str) -> str:
    """Return rank 0's ``value`` on every rank (e.g. a timestamped output folder)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return str(holder[0])

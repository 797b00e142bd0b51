"""The training state a checkpoint carries to resume a run exactly, and the RNG states within it."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.checkpoint.io import WEIGHTS_KEY
from medseg.errors import MedsegError

__all__ = ["TrainingState", "capture_rng_state", "restore_rng_state"]


@dataclass(frozen=True)
class TrainingState:
    """What a training-state checkpoint (``models/last.pt``) holds to resume a run exactly.

    Attributes:
        weights: the network's state dict.
        optimizer, scheduler, scaler: ``state_dict()`` of each (``None`` when the run had none).
        rng: from :func:`capture_rng_state`.
        epoch: epochs completed.
        best_metric: the best validation metric so far, or ``None``.
        extra: the run's other plain data (history, iteration, MLflow run id, ...).
    """

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any] | None
    epoch: int
    best_metric: float | None
    extra: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], source: str | os.PathLike[str] = "checkpoint") -> TrainingState:
        """The training state of a loaded checkpoint.

        Raises:
            MedsegError: the checkpoint holds no training state (a model-only ``model.pt``).
        """
        if ckpt.get("optimizer_state") is None:
            raise MedsegError(f"{source}: holds no training state")
        return cls(weights=ckpt[WEIGHTS_KEY], optimizer=ckpt["optimizer_state"], scheduler=ckpt.get("scheduler_state"),
                   scaler=ckpt.get("scaler_state"), rng=ckpt.get("rng_state"), epoch=int(ckpt.get("epoch", 0)),
                   best_metric=ckpt.get("best_metric"), extra=ckpt.get("extra") or {})


def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states as plain data (NumPy's key array as a tensor)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

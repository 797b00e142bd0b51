"""Seeds, deterministic mode, and the RNG states of random transforms for exact resume.

The global RNG states are captured by :func:`medseg.checkpoint.capture_rng_state`; the
per-transform states here are stored as tensors so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from medseg.errors import InvalidValueError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy, PyTorch and MONAI's transforms; optionally force deterministic kernels.

    Args:
        seed: the run's seed (the bundle's ``seed`` id).
        deterministic: also require deterministic algorithms (bit-exact reruns on the CPU;
            on the GPU it disables some fast kernels).
    """
    set_determinism(seed=seed, use_deterministic_algorithms=None)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _randomizable(transform: Any) -> list[Any]:
    """Every random-number holder inside a (nested) Compose, in a fixed order.

    Dictionary transforms keep array transforms with their own ``R`` (e.g.
    ``RandCropByPosNegLabeld.cropper``, ``RandScaleIntensityd.scaler``), which draw the
    actual random values, so those are collected too. ``Compose.flatten()`` is not used:
    it builds a new ``Compose``, whose constructor re-seeds every transform inside it and
    would reset their RNGs at each checkpoint.
    """
    from monai.transforms import Compose, Randomizable

    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Compose):
            for t in obj.transforms:
                visit(t)
            return
        if isinstance(obj, Randomizable):
            found.append(obj)
            for name in sorted(vars(obj)):
                value = vars(obj)[name]
                if isinstance(value, Randomizable):
                    visit(value)

    visit(transform)
    return found


def transform_rng_states(transform: Any) -> list[dict[str, Any]]:
    """Capture the NumPy generator state of every randomizable transform in a Compose.

    MONAI's random transforms each own a ``numpy.random.RandomState`` (``R``); exact
    resume needs them as well as the global RNGs. The states are plain data (the key
    array as a tensor), so checkpoints still load with ``weights_only=True``.
    """
    states = []
    for t in _randomizable(transform):
        _name, keys, pos, has_gauss, cached = t.R.get_state()
        states.append({"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)})
    return states


def restore_transform_rng_states(transform: Any, states: list[dict[str, Any]]) -> None:
    """Restore what :func:`transform_rng_states` captured, transform by transform."""
    randomizable = _randomizable(transform)
    if len(randomizable) != len(states):
        raise InvalidValueError(f"checkpoint holds {len(states)} transform RNG states, pipeline has {len(randomizable)}")
    for t, st in zip(randomizable, states):
        t.R.set_state(("MT19937", st["keys"].numpy().astype(np.uint32), st["pos"], st["has_gauss"],
                       st["cached_gaussian"]))

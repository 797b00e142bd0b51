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


def transform_rng_states(transform: Any) -> list[torch.Tensor]:
    """Capture the NumPy generator state of every randomizable transform in a Compose.

    MONAI's random transforms each own a ``numpy.random.RandomState`` (``R``); exact
    resume needs them as well as the global RNGs.
    """
    from monai.transforms import Randomizable

    states = []
    for t in getattr(transform, "flatten", lambda: transform)().transforms if transform is not None else []:
        if isinstance(t, Randomizable):
            st = t.R.get_state()
            states.append(torch.from_numpy(np.concatenate([st[1].astype(np.int64), [st[2], st[3]]])))
    return states


def restore_transform_rng_states(transform: Any, states: list[torch.Tensor]) -> None:
    """Restore what :func:`transform_rng_states` captured, transform by transform."""
    from monai.transforms import Randomizable

    randomizable = [t for t in transform.flatten().transforms if isinstance(t, Randomizable)]
    if len(randomizable) != len(states):
        raise ValueError(f"checkpoint holds {len(states)} transform RNG states, pipeline has {len(randomizable)}")
    for t, st in zip(randomizable, states):
        arr = st.numpy()
        t.R.set_state(("MT19937", arr[:-2].astype(np.uint32), int(arr[-2]), int(arr[-1]), 0.0))

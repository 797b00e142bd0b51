"""Self-describing checkpoints: the container (:mod:`.io`), the model it describes (:mod:`.spec`)
and the training state it carries (:mod:`.state`).

This package is the one owner of the checkpoint format: everything else takes a
:class:`ModelSpec` (or :class:`TrainingState`) and never reads the checkpoint's keys.
"""

from __future__ import annotations

from medseg.checkpoint.io import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    WEIGHTS_KEY,
    build_from_checkpoint,
    check_network_size,
    is_medseg_checkpoint,
    load_checkpoint,
    load_weights,
    read_model_spec,
    safe_torch_load,
    save_checkpoint,
    set_postprocessing,
    state_dict_from,
)
from medseg.checkpoint.spec import LEGACY_INFERENCE, InferenceSettings, ModelSpec, inference_settings
from medseg.checkpoint.state import TrainingState, capture_rng_state, restore_rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "LEGACY_INFERENCE",
    "WEIGHTS_KEY",
    "InferenceSettings",
    "ModelSpec",
    "TrainingState",
    "build_from_checkpoint",
    "capture_rng_state",
    "check_network_size",
    "inference_settings",
    "is_medseg_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_model_spec",
    "restore_rng_state",
    "safe_torch_load",
    "save_checkpoint",
    "set_postprocessing",
    "state_dict_from",
]

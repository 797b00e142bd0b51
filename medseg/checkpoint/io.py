"""Self-describing checkpoints, written atomically and read without unpickling code.

This module owns the container (format, versions, weights, training state); the model
description inside it is :class:`~medseg.checkpoint.spec.ModelSpec`'s. Together they are the
only code that knows the checkpoint's keys.

A medseg checkpoint holds the weights together with everything inference needs to rebuild
the network (its registry name and constructor arguments), the label convention, channel
names and preprocessing, and the versions that wrote it (after nnU-Net's and nanoGPT's
checkpoints), so inference never imports training code.

Files are always read with ``torch.load(..., weights_only=True)``: only tensors and plain
containers (dict, list, tuple, str, int, float, bool, None) may be stored, and a file that
holds anything else (which could run code when unpickled) is refused.

The network a checkpoint describes is data too: a 1.7 KB file can ask for a network of
7 GB. :func:`build_from_checkpoint` first builds it on torch's ``meta`` device, where
tensors have shapes but no memory, counts its parameters and refuses more than
:func:`medseg.utils.limits.max_parameters` (:func:`check_network_size`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import monai
import torch
from torch import nn

import medseg
from medseg.checkpoint.spec import InferenceSettings, ModelSpec
from medseg.errors import InvalidTypeError, InvalidValueError, MedsegError
from medseg.networks import build_network
from medseg.networks.sizing import check_network_size
from medseg.utils.atomic import atomic_path
from medseg.utils.faults import fault_point

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "WEIGHTS_KEY",
    "build_from_checkpoint",
    "check_network_size",
    "is_medseg_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_model_spec",
    "safe_torch_load",
    "save_checkpoint",
    "set_postprocessing",
    "state_dict_from",
]

CHECKPOINT_FORMAT = "medseg-checkpoint"
# 2: the weights are under "model", as MONAI's CheckpointSaver keeps them, so CheckpointLoader(load_dict=
# {"model": net}) and `monai.bundle ckpt_export --key_in_ckpt model` read them; 1 had "model_state".
CHECKPOINT_FORMAT_VERSION = 2
WEIGHTS_KEY = "model"
# Exact types: a subclass (numpy.float64 of float, torch's TorchVersion of str, MONAI's
# MetaTensor of Tensor) pickles as its own class, which weights_only loading refuses.
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, nn.Parameter, torch.dtype, torch.Size)
# Keys under which other tools nest a state dict (Lightning, MONAI CheckpointSaver, timm, ...).
_STATE_DICT_KEYS = ("model", "model_state", "state_dict", "network", "net")


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` at the first value that ``weights_only`` loading would refuse."""
    if type(value) in _PLAIN:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise InvalidTypeError(f"{where}: keys must be str or int, got {type(key).__name__}: {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise InvalidTypeError(
        f"{where}: {type(value).__module__}.{type(value).__name__} cannot be stored in a checkpoint; "
        "only tensors "
        "and dict/list/tuple/str/int/float/bool/None are allowed (convert arrays with torch.as_tensor)"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model_state: dict[str, torch.Tensor] | nn.Module,
    *,
    network: dict[str, Any] | None = None,
    label_convention: str | None = None,
    channel_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    epoch: int = 0,
    best_metric: float | None = None,
    extra: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    rng_state: dict[str, Any] | None = None,
    inference: InferenceSettings | dict[str, Any] | None = None,
    spec: ModelSpec | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, fsync, rename).

    Args:
        path: the target file, conventionally ``*.pt``.
        model_state: the network's ``state_dict()`` (or the network itself).
        network: ``{"name": <registry name>, "kwargs": {<constructor arguments>}}``.
        label_convention: the label values of the training data, a name of
            :mod:`medseg.data.conventions` (e.g. ``"brats2021"``).
        channel_names: names of the *input* channels, in order, e.g. ``["t1", "t1ce", "t2", "flair"]``
            (the output names, e.g. ``["TC", "WT", "ET"]``, go in ``extra["output_names"]``).
        preprocessing: what inference must repeat (spacing, orientation, intensity normalisation).
        epoch: epochs completed.
        best_metric: the best validation metric so far.
        extra: other plain data.
        optimizer_state, scheduler_state, scaler_state: ``state_dict()`` of each, to resume.
        rng_state: from :func:`capture_rng_state`, to resume exactly.
        inference: the sliding-window settings inference will use (:class:`InferenceSettings`).
        spec: the whole model description at once, instead of ``network``, ``label_convention``,
            ``channel_names``, ``preprocessing``, ``extra["output_names"]`` and ``inference``.

    Returns:
        The path written.

    Raises:
        TypeError: a value that ``weights_only`` loading could not read (its place is named).
        ValueError: ``network`` is not ``{"name": str, "kwargs": dict}``.
    """
    if spec is None:
        spec = ModelSpec.create(network, label_convention, channel_names, (extra or {}).get("output_names"),
                                preprocessing, inference)
    elif network is not None:
        raise InvalidValueError("give `spec` or `network`, not both")
    if isinstance(model_state, nn.Module):
        model_state = model_state.state_dict()
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "versions": {
            "medseg": str(medseg.__version__),
            "monai": str(monai.__version__),
            "torch": str(torch.__version__),
        },
        WEIGHTS_KEY: dict(model_state),
        **spec.checkpoint_entries(extra),
        "epoch": int(epoch),
        "best_metric": None if best_metric is None else float(best_metric),
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "scaler_state": scaler_state,
        "rng_state": rng_state,
    }
    _check_plain(payload, "checkpoint")
    target = Path(path)
    with atomic_path(target) as tmp:
        # Through a Python file object, so a full disk surfaces as the OSError behind torch's
        # RuntimeError (and atomic_path reports it as a DiskFullError naming the file).
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
        if optimizer_state is not None:
            fault_point("checkpoint-write")  # crash tests only: see medseg.utils.faults
    return target


def set_postprocessing(path: str | os.PathLike[str], postprocessing: dict[str, Any] | None) -> Path:
    """Record a post-processing in an existing checkpoint (rewritten atomically; everything else kept).

    ``medseg cv`` records the post-processing it chose on out-of-fold predictions into each fold's
    best checkpoint, which it wrote itself.
    """
    ckpt = load_checkpoint(path)
    spec = dataclasses.replace(ModelSpec.from_checkpoint(ckpt, path), postprocessing=postprocessing)
    ckpt.update(spec.checkpoint_entries(ckpt.get("extra")))
    if postprocessing is None:
        ckpt.pop("postprocessing", None)
    _check_plain({k: v for k, v in ckpt.items() if k != WEIGHTS_KEY}, "checkpoint")
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        torch.save(ckpt, handle)
    return target


def safe_torch_load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``, turning every failure into a one-line :class:`MedsegError`.

    Raises:
        MedsegError: the file is missing, truncated, not a torch file, or holds Python
            objects other than plain data (refused: unpickling them could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedsegError(
            f"{path}: refused: the file holds Python objects other than tensors and plain data, "
            "which may contain "
            f"code, and medseg only loads with weights_only=True ({first})"
        ) from err
    except (
        Exception
    ) as err:  # torch's readers fail on damaged input with RuntimeError, EOFError, KeyError, ...
        raise MedsegError(f"{path}: not a readable torch file (truncated or another format): {err}") from err


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded. Defaults to the CPU.

    Returns:
        The checkpoint dictionary (``network``, ``model`` (the weights), ``epoch``, ...); a
        format-1 checkpoint is returned in the same shape (its ``model_state`` under ``model``).

    Raises:
        MedsegError: naming the file, when it is missing, truncated, refused (see
            :func:`safe_torch_load`), not a medseg checkpoint, or from a newer format version.
    """
    ckpt = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise MedsegError(
            f"{path}: not a medseg checkpoint (no 'format': '{CHECKPOINT_FORMAT}' entry); a plain state dict "
            "loads with medseg.checkpoint.load_weights(model, path)"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise MedsegError(
            f"{path}: checkpoint format version {version!r} is newer than this medseg reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade medseg"
        )
    if version == 1 and WEIGHTS_KEY not in ckpt and "model_state" in ckpt:
        ckpt[WEIGHTS_KEY] = ckpt.pop("model_state")
    if not isinstance(ckpt.get(WEIGHTS_KEY), dict):
        raise MedsegError(f"{path}: medseg checkpoint without weights (no {WEIGHTS_KEY!r} entry)")
    return ckpt


def state_dict_from(obj: Any, source: str | os.PathLike[str] = "<object>") -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded file: a medseg checkpoint, a wrapper, or a plain state dict.

    Wrappers are dictionaries holding the state dict under ``"state_dict"``, ``"model"``,
    ``"network"`` or ``"net"`` (Lightning, MONAI ``CheckpointSaver``, timm and others).

    Raises:
        MedsegError: no mapping of names to tensors was found (``source`` names the file).
    """
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise MedsegError(
        f"{source}: no state dict found (expected a mapping of parameter names to tensors, "
        "possibly under one of "
        f"{list(_STATE_DICT_KEYS)}); found {found}"
    )


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load weights into an already built ``model`` from a medseg checkpoint or a plain state dict file.

    For files that do not describe their network, such as MONAI's ``ckpt_export`` output
    or a bundle's ``models/model.pt``.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        MedsegError: the file cannot be read, or (``strict``) its keys or shapes do not fit ``model``.
    """
    state = state_dict_from(safe_torch_load(path), path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        raise MedsegError(
            f"{path}: weights do not fit {type(model).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); " + str(err).splitlines()[0]
        ) from err
    return model


def build_from_checkpoint(ckpt: dict[str, Any] | str | os.PathLike[str], *,
                          source: str | os.PathLike[str] | None = None) -> nn.Module:
    """Rebuild the network a checkpoint describes, load its weights and put it in eval mode.

    The network's size is checked first, without memory (:func:`check_network_size`).

    Args:
        ckpt: a dictionary from :func:`load_checkpoint`, or a path to one.
        source: the file a dictionary came from, named in the messages (a path names itself).

    Returns:
        The network in eval mode.

    Raises:
        MedsegError: naming the file, when its network spec is malformed, asks for more
            parameters than :func:`~medseg.utils.limits.max_parameters`, or its weights do not fit.
    """
    if not isinstance(ckpt, dict):
        source = ckpt
        ckpt = load_checkpoint(ckpt)
    source = str(source) if source is not None else "checkpoint"
    spec = ModelSpec.from_checkpoint(ckpt, source)
    check_network_size(spec.network_spec, source)
    model = build_network(spec.network, **spec.network_kwargs)
    try:
        model.load_state_dict(ckpt[WEIGHTS_KEY], strict=True)
    except RuntimeError as err:
        raise MedsegError(
            f"{source}: weights do not fit network {spec.network!r}: {str(err).splitlines()[0]}"
        ) from err
    return model.eval()


def is_medseg_checkpoint(obj: Any) -> bool:
    """Whether a loaded file (from :func:`safe_torch_load`) is a medseg checkpoint rather than a plain state dict."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def read_model_spec(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, Any]]:
    """Load a checkpoint and check its model description.

    Returns:
        The :class:`ModelSpec`, and the loaded checkpoint (for :func:`build_from_checkpoint`).

    Raises:
        MedsegError: as :func:`load_checkpoint`, or a malformed field (naming the file and the field).
    """
    ckpt = load_checkpoint(path)
    return ModelSpec.from_checkpoint(ckpt, path), ckpt

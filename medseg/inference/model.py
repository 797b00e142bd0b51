"""Load a trained model and its inference settings from an output bundle, without running the bundle.

A bundle's ``configs/inference.json`` is a MONAI config whose ``$`` expressions can run any
Python, so it is never executed here: only the plain JSON values ``roi_size``,
``sw_batch_size`` and ``sw_overlap`` are read with :func:`json.load`. Everything else (the
network, its label convention, the output kind and the preprocessing) comes from the
checkpoint's :class:`~medseg.checkpoint.ModelSpec` (read with ``weights_only=True``), which
also holds the sliding-window settings of checkpoints written since it recorded them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from medseg.inference.planar import PlanarModel

from medseg.checkpoint import LEGACY_INFERENCE, ModelSpec, build_from_checkpoint, read_model_spec
from medseg.data.conventions import get_convention
from medseg.errors import MedsegError
from medseg.planning.rules import NORMALIZATIONS
from medseg.utils.limits import MAX_VOXELS_ENV, max_voxels

__all__ = ["DEFAULT_SETTINGS", "InferenceModel", "load_inference_model", "read_bundle_settings"]

logger = logging.getLogger("medseg.infer")

#: Used when neither the command line, the bundle's ``configs/inference.json`` nor the checkpoint gives a
#: value (checkpoints written before they recorded their settings: :data:`~medseg.checkpoint.LEGACY_INFERENCE`).
DEFAULT_SETTINGS: dict[str, Any] = {"roi_size": LEGACY_INFERENCE.roi_size,
                                    "sw_batch_size": LEGACY_INFERENCE.sw_batch_size,
                                    "sw_overlap": LEGACY_INFERENCE.overlap}
MODEL_FILE = Path("models") / "model.pt"
INFERENCE_CONFIG = Path("configs") / "inference.json"
TASKS = ("regions", "multiclass")
# What medseg.transforms.infer_transforms does; a checkpoint asking for anything else cannot be served.
_SUPPORTED_PREPROCESSING = {"orientation": ("RAS", None), "normalize": ("nonzero_channel_wise", None)}


@dataclass(frozen=True)
class InferenceModel:
    """A network in eval mode together with everything needed to run it and write its output.

    Attributes:
        network: the network, in eval mode, on the CPU (the predictor moves it).
        network_name: its registry name, e.g. ``"attention_unet3d"``.
        checkpoint: the file the weights came from.
        task: ``"regions"`` (sigmoid, overlapping regions such as BraTS TC/WT/ET) or
            ``"multiclass"`` (softmax over mutually exclusive classes).
        convention: the label convention name (``"brats2021"`` ...), or ``None``.
        in_channels: number of input channels.
        channel_names: input channel names in the network's order, e.g. ``("t1", "t1ce", "t2", "flair")``.
        output_names: one name per output channel, e.g. ``("TC", "WT", "ET")``.
        label_values: ``"multiclass"``: the label value written for each output channel;
            ``"regions"``: every value the convention can write, background included.
        label_names: label value -> meaning, for DICOM-SEG segment descriptions (background excluded).
        region_order: ``"regions"`` only: output channel index of each of the convention's
            regions, in the convention's order.
        pixdim: the spacing the network was trained at, or ``None`` for the native spacing.
        roi_size: sliding-window size ``(X, Y, Z)``.
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction in ``[0, 1)``.
        blend_mode: how overlapping windows are blended (the checkpoint's ``mode``).
        tta_axes: spatial axes mirrored by default, without ``--tta`` (the checkpoint's ``tta_axes``).
        planned: a plan's crop, normalisation and resampling (the checkpoint's
            ``preprocessing.planned``, :func:`medseg.transforms.planned_preprocessing`), or ``None``.
        postprocessing: the post-processing chosen on out-of-fold predictions
            (:mod:`medseg.postprocessing`), applied to every mask; ``None``: none.
    """

    network: nn.Module = field(repr=False)
    network_name: str
    checkpoint: Path
    task: str
    convention: str | None
    in_channels: int
    channel_names: tuple[str, ...]
    output_names: tuple[str, ...]
    label_values: tuple[int, ...]
    label_names: dict[int, str]
    region_order: tuple[int, ...] | None
    pixdim: tuple[float, ...] | None
    roi_size: tuple[int, int, int]
    sw_batch_size: int
    overlap: float
    blend_mode: str = "gaussian"
    tta_axes: tuple[int, ...] = ()
    planned: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None

    @property
    def activation(self) -> str:
        """``"sigmoid"`` for regions, ``"softmax"`` for classes."""
        return "sigmoid" if self.task == "regions" else "softmax"

    @property
    def out_channels(self) -> int:
        """Number of output channels of the network."""
        return len(self.output_names)


def check_planned(planned: Any, in_channels: int, checkpoint: Path) -> dict[str, Any] | None:
    """A checkpoint's planned preprocessing, checked (it is data from outside), or ``None``.

    Raises:
        MedsegError: naming the checkpoint and the entry that breaks its rule.
    """
    if planned is None:
        return None
    where = f"{checkpoint}: preprocessing.planned"
    if not isinstance(planned, dict):
        raise MedsegError(f"{where} must be an object, got {type(planned).__name__}")
    norm = planned.get("normalization")
    if not (isinstance(norm, list) and len(norm) == in_channels and all(n in NORMALIZATIONS for n in norm)):
        raise MedsegError(f"{where}.normalization must give one of {list(NORMALIZATIONS)} for each of the "
                          f"{in_channels} input channels, got {norm!r}")
    props = planned.get("intensity_properties")
    keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if "ct" in norm and not (isinstance(props, list) and len(props) == in_channels and all(
            isinstance(p, dict) and all(type(p.get(k)) in (int, float) and math.isfinite(p[k]) for k in keys)
            for p in props)):
        raise MedsegError(f"{where}.intensity_properties must give finite {list(keys)} for each channel")
    resampling = planned.get("resampling")
    if resampling is not None and not (
            isinstance(resampling, dict) and resampling.get("separate_axis") in (None, 0, 1, 2)
            and all(type(resampling.get(k)) is int and 0 <= resampling[k] <= 5
                    for k in ("image_order", "label_order", "separate_axis_order"))):
        raise MedsegError(f"{where}.resampling must hold spline orders 0-5 and a separate_axis of null, 0, 1 "
                          f"or 2, got {resampling!r}")
    if type(planned.get("crop_foreground")) is not bool:
        raise MedsegError(f"{where}.crop_foreground must be true or false, got {planned.get('crop_foreground')!r}")
    return planned


def _postprocessing(spec: ModelSpec, task: str, output_names: Sequence[str], values: Sequence[int],
                    checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's post-processing, checked against the outputs it names (regions, or class values)."""
    from medseg.errors import InvalidValueError
    from medseg.postprocessing import check_postprocessing

    if spec.postprocessing is None:
        return None
    names = list(output_names) if task == "regions" else [str(v) for v in values if v != 0]
    try:
        return check_postprocessing(spec.postprocessing, names, f"{checkpoint}: postprocessing")
    except InvalidValueError as err:
        raise MedsegError(str(err)) from err


def _plain_value(config: dict[str, Any], key: str, path: Path) -> Any:
    """A config value if it is plain JSON; references (``@x``) and expressions (``$...``) are ignored."""
    value = config.get(key)
    if isinstance(value, str) and value[:1] in ("@", "$", "%"):
        logger.warning("%s: %r is an expression (%s); it is not evaluated, the default is used", path, key, value)
        return None
    return value


def read_bundle_settings(bundle: str | Path) -> dict[str, Any]:
    """Read ``roi_size``, ``sw_batch_size`` and ``sw_overlap`` from ``BUNDLE/configs/inference.json`` as plain JSON.

    Args:
        bundle: the output bundle folder.

    Returns:
        The values found (keys missing from the file are absent).

    Raises:
        MedsegError: the file is not valid JSON or a value has the wrong type (naming the file).
    """
    path = Path(bundle) / INFERENCE_CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedsegError(f"{path}: not readable as JSON: {err}") from err
    if not isinstance(config, dict):
        raise MedsegError(f"{path}: the top level must be a JSON object")
    found: dict[str, Any] = {}
    for key in DEFAULT_SETTINGS:
        value = _plain_value(config, key, path)
        if value is not None:
            found[key] = value
    return found


def check_settings(roi_size: Sequence[int], sw_batch_size: int, overlap: float, source: str) -> tuple:
    """Validate the sliding-window settings and return them normalised.

    Raises:
        MedsegError: a value out of range, naming where it came from; a window of more voxels
            than :func:`~medseg.utils.limits.max_voxels` is refused like a volume that large.
    """
    try:
        roi = tuple(int(r) for r in roi_size)
    except (TypeError, ValueError):
        raise MedsegError(f"{source}: roi_size must be 3 positive integers, got {roi_size!r}") from None
    if len(roi) != 3 or min(roi) < 1:
        raise MedsegError(f"{source}: roi_size must be 3 positive integers, got {list(roi)}")
    if roi[0] * roi[1] * roi[2] > max_voxels():
        raise MedsegError(f"{source}: roi_size {list(roi)} has {roi[0] * roi[1] * roi[2]:,} voxels, more than the "
                          f"limit {max_voxels():,} (set {MAX_VOXELS_ENV} to change it)")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise MedsegError(f"{source}: sw_batch_size must be an integer >= 1, got {sw_batch_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 1.0:
        raise MedsegError(f"{source}: sw_overlap must be a number in [0, 1), got {overlap!r}")
    return roi, int(sw_batch_size), float(overlap)


def _task(spec: ModelSpec, source: Path) -> str:
    prep = spec.preprocessing
    task = spec.task
    if task is None:
        convention = spec.label_convention
        try:
            task = "regions" if convention and get_convention(convention).is_region_based else "multiclass"
        except ValueError:
            task = "multiclass"
        logger.warning("%s: no preprocessing.task in the checkpoint; assuming %r", source, task)
    if task not in TASKS:
        raise MedsegError(f"{source}: preprocessing.task must be one of {TASKS}, got {task!r}")
    for key, allowed in _SUPPORTED_PREPROCESSING.items():
        if prep.get(key) not in allowed:
            raise MedsegError(f"{source}: preprocessing.{key}={prep.get(key)!r} is not supported by medseg infer "
                              f"(it applies {allowed[0]!r})")
    return task


def _region_setup(spec: ModelSpec, out_channels: int, source: Path) -> tuple:
    name = spec.label_convention
    try:
        convention = get_convention(str(name))
    except ValueError as err:
        raise MedsegError(f"{source}: task 'regions' needs a registered label convention: {err}") from None
    if not convention.is_region_based:
        raise MedsegError(f"{source}: label convention {name!r} has no regions but the task is 'regions'")
    regions = convention.region_names
    names = tuple(spec.output_names or regions)
    if out_channels != len(regions) or sorted(names) != sorted(regions):
        raise MedsegError(f"{source}: a '{name}' region model needs {len(regions)} outputs named {list(regions)}, "
                          f"got {out_channels} outputs named {list(names)}")
    order = tuple(names.index(r) for r in regions)
    values = tuple(sorted(convention.valid_values))
    label_names = {v: n for v, n in convention.labels.items() if v != 0}
    return convention.name, names, values, label_names, order


def _class_setup(spec: ModelSpec, out_channels: int, source: Path) -> tuple:
    name = spec.label_convention
    prep = spec.preprocessing
    registered = None
    try:
        registered = get_convention(str(name)) if name else None
    except ValueError:
        pass
    values = prep.get("label_values")
    if values is None:
        values = sorted(registered.valid_values) if registered else list(range(out_channels))
    values = tuple(sorted(int(v) for v in values))
    if len(values) != out_channels or len(set(values)) != len(values) or min(values) < 0:
        raise MedsegError(f"{source}: {out_channels} output classes but label_values {list(values)}; "
                          "they must be distinct, non-negative and one per output")
    names_by_value = dict(registered.labels) if registered else {}
    label_names = {v: names_by_value.get(v, f"class {v}") for v in values if v != 0}
    output_names = tuple(names_by_value.get(v, "background" if v == 0 else f"class {v}") for v in values)
    return (str(name) if name else None), output_names, values, label_names, None


def load_inference_model(
    bundle: str | Path | None,
    checkpoint: str | Path | None = None,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
) -> InferenceModel | PlanarModel:
    """Load the network and settings of an output bundle (or of a checkpoint alone).

    A 2D checkpoint (``spatial_dims=2``) gives a :class:`~medseg.inference.planar.PlanarModel`,
    which predicts whole images; everything below is about 3D models.

    Values given as arguments override the bundle's ``configs/inference.json``, which
    overrides the checkpoint's own settings (:attr:`~medseg.checkpoint.ModelSpec.inference`);
    a checkpoint written before it recorded them falls back to :data:`DEFAULT_SETTINGS`.

    Args:
        bundle: the output bundle folder written by ``medseg train`` (``configs/``, ``models/model.pt``).
        checkpoint: a checkpoint to use instead of ``BUNDLE/models/model.pt``.
        roi_size: sliding-window size ``(X, Y, Z)``.
        sw_batch_size: windows per forward pass.
        overlap: window overlap in ``[0, 1)``.

    Returns:
        The model and its settings.

    Raises:
        MedsegError: a missing bundle or checkpoint, a checkpoint that is not a medseg
            checkpoint, or settings that do not fit the network.
    """
    bundle_path = Path(bundle) if bundle is not None else None
    if bundle_path is not None and not bundle_path.is_dir():
        raise MedsegError(f"{bundle_path}: bundle folder not found")
    if checkpoint is None:
        if bundle_path is None:
            raise MedsegError("give a bundle folder or --checkpoint")
        checkpoint = bundle_path / MODEL_FILE
        if not Path(checkpoint).is_file():
            raise MedsegError(f"{checkpoint}: the bundle has no trained model; train it first "
                              "(medseg train) or pass --checkpoint FILE")
    checkpoint = Path(checkpoint)
    spec, ckpt = read_model_spec(checkpoint)
    kwargs = spec.network_kwargs
    dims = spec.spatial_dims
    if dims == 2:
        if roi_size is not None or sw_batch_size is not None or overlap is not None:
            raise MedsegError(f"{checkpoint}: a 2D model predicts whole images; --roi, --sw-batch and --overlap "
                              "apply to 3D models only")
        from medseg.inference.planar import load_planar_model  # the 2D path, only when needed

        return load_planar_model(spec, ckpt, checkpoint)
    if dims != 3:
        raise MedsegError(f"{checkpoint}: medseg infer runs 2D and 3D networks; this one has spatial_dims={dims!r}")
    network = build_from_checkpoint(ckpt, source=checkpoint)  # its size is checked before it is built
    out_channels = kwargs.get("out_channels")
    if not isinstance(out_channels, int):
        raise MedsegError(f"{checkpoint}: the network's kwargs have no integer out_channels")
    channel_names = spec.channel_names or ()
    in_channels = int(kwargs.get("in_channels", len(channel_names) or 1))
    if channel_names and len(channel_names) != in_channels:
        raise MedsegError(f"{checkpoint}: {len(channel_names)} channel names {list(channel_names)} "
                          f"for a network with {in_channels} input channels")
    task = _task(spec, checkpoint)
    setup = _region_setup if task == "regions" else _class_setup
    convention, output_names, values, label_names, order = setup(spec, out_channels, checkpoint)
    pixdim = spec.preprocessing.get("pixdim")
    if pixdim is not None and not (isinstance(pixdim, (list, tuple)) and 1 <= len(pixdim) <= 3 and all(
            type(p) in (int, float) and 0 < p < float("inf") for p in pixdim)):
        raise MedsegError(f"{checkpoint}: preprocessing.pixdim must be 1 to 3 positive spacings in mm, "
                          f"got {pixdim!r}")

    settings = dict(DEFAULT_SETTINGS)
    source = "defaults"
    if spec.inference is not None:
        settings.update(roi_size=spec.inference.roi_size, sw_batch_size=spec.inference.sw_batch_size,
                        sw_overlap=spec.inference.overlap)
        source = str(checkpoint)
    if bundle_path is not None:
        found = read_bundle_settings(bundle_path)
        settings.update(found)
        source = str(bundle_path / INFERENCE_CONFIG) if found else source
    given = {"roi_size": roi_size, "sw_batch_size": sw_batch_size, "sw_overlap": overlap}
    settings.update({k: v for k, v in given.items() if v is not None})
    if any(v is not None for v in given.values()):
        source = f"{source} and the command line"
    roi, batch, ovl = check_settings(settings["roi_size"], settings["sw_batch_size"], settings["sw_overlap"], source)
    return InferenceModel(
        network=network, network_name=spec.network, checkpoint=checkpoint, task=task,
        convention=convention, in_channels=in_channels,
        channel_names=channel_names or tuple(f"channel{i}" for i in range(in_channels)),
        output_names=tuple(output_names), label_values=tuple(values), label_names=label_names, region_order=order,
        pixdim=tuple(float(p) for p in pixdim) if pixdim is not None else None,
        roi_size=roi, sw_batch_size=batch, overlap=ovl,
        blend_mode=spec.inference.mode if spec.inference is not None else "gaussian",
        tta_axes=tuple(spec.inference.tta_axes) if spec.inference is not None else (),
        planned=check_planned(spec.preprocessing.get("planned"), in_channels, checkpoint),
        postprocessing=_postprocessing(spec, task, output_names, values, checkpoint),
    )

"""The model a checkpoint describes, as one typed, frozen value: :class:`ModelSpec`.

This module (with :mod:`medseg.checkpoint.io`, which owns the container: format, weights and
training state) is the only code that knows the checkpoint's keys. Training writes a
:class:`ModelSpec` with :func:`~medseg.checkpoint.save_checkpoint`; inference, export and the
output bundle's ``configs/inference.json`` read it with :meth:`ModelSpec.from_checkpoint`,
which checks every field once and names the file and the field it refuses.

The sliding-window settings travel in the checkpoint (``inference``) since this spec was
added; format-2 files written before, and format-1 files, have none, and
:attr:`ModelSpec.inference` is ``None`` for them: inference then uses what those runs used,
the output bundle's ``configs/inference.json`` (the run's ``roi_size`` and the bundle's
``sw_batch_size``/``sw_overlap``), or without a bundle :data:`LEGACY_INFERENCE`
(96^3 windows, 4 per batch, overlap 0.5, Gaussian blending).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import InvalidValueError, MedsegError
from medseg.networks.registry import network_size_divisor

__all__ = ["BLEND_MODES", "LEGACY_INFERENCE", "InferenceSettings", "ModelSpec", "inference_settings"]

# The checkpoint's keys for the model description.
_NETWORK, _CONVENTION, _CHANNELS, _PREPROCESSING = "network", "label_convention", "channel_names", "preprocessing"
_EXTRA, _OUTPUT_NAMES, _INFERENCE = "extra", "output_names", "inference"
_POSTPROCESSING = "postprocessing"
# Keys inside ``inference``; the same names as the bundle config ids they become.
_ROI, _SW_BATCH, _OVERLAP, _MODE, _TTA = "roi_size", "sw_batch_size", "sw_overlap", "mode", "tta_axes"
BLEND_MODES = ("gaussian", "constant")


def _refuse(source: str | os.PathLike[str], where: str, rule: str, value: Any) -> MedsegError:
    return MedsegError(f"{source}: checkpoint field {where!r} must be {rule}, got {value!r:.200}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class InferenceSettings:
    """How the network is run on a volume: MONAI ``SlidingWindowInferer`` settings and TTA.

    Attributes:
        roi_size: the window ``(X, Y, Z)`` (3D), or the network input ``(H, W)`` of a 2D
            model, which predicts whole resized images.
        sw_batch_size: windows per forward pass; ``None`` for 2D models.
        overlap: window overlap fraction in ``[0, 1)``; ``None`` for 2D models.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        tta_axes: spatial axes mirrored for test-time augmentation by default (none: ``()``).
    """

    roi_size: tuple[int, ...]
    sw_batch_size: int | None = None
    overlap: float | None = None
    mode: str = "gaussian"
    tta_axes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in the checkpoint."""
        return {_ROI: list(self.roi_size), _SW_BATCH: self.sw_batch_size, _OVERLAP: self.overlap,
                _MODE: self.mode, _TTA: list(self.tta_axes)}

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] = "checkpoint") -> InferenceSettings:
        """Check and read settings stored by :meth:`to_dict`.

        Raises:
            MedsegError: naming ``source`` and the field, when a value is missing or out of range.
        """
        where = _INFERENCE
        if not isinstance(data, dict):
            raise _refuse(source, where, "a dict", data)
        roi = data.get(_ROI)
        if not (isinstance(roi, (list, tuple)) and len(roi) in (2, 3) and all(_is_int(r) and r > 0 for r in roi)):
            raise _refuse(source, f"{where}.{_ROI}", "2 or 3 positive integers", roi)
        batch = data.get(_SW_BATCH)
        if batch is not None and not (_is_int(batch) and batch >= 1):
            raise _refuse(source, f"{where}.{_SW_BATCH}", "an integer >= 1 or null", batch)
        overlap = data.get(_OVERLAP)
        if overlap is not None and not (type(overlap) in (int, float) and 0.0 <= overlap < 1.0):
            raise _refuse(source, f"{where}.{_OVERLAP}", "a number in [0, 1) or null", overlap)
        mode = data.get(_MODE, "gaussian")
        if mode not in BLEND_MODES:
            raise _refuse(source, f"{where}.{_MODE}", f"one of {BLEND_MODES}", mode)
        tta = data.get(_TTA) or ()
        if not (isinstance(tta, (list, tuple)) and all(_is_int(a) and 0 <= a < len(roi) for a in tta)
                and len(set(tta)) == len(tta)):
            raise _refuse(source, f"{where}.{_TTA}", f"distinct spatial axes in [0, {len(roi)})", tta)
        return cls(tuple(roi), batch, None if overlap is None else float(overlap), mode, tuple(tta))


#: What inference used before checkpoints carried their settings, when no bundle config gave any.
LEGACY_INFERENCE = InferenceSettings(roi_size=(96, 96, 96), sw_batch_size=4, overlap=0.5)


@dataclass(frozen=True)
class ModelSpec:
    """Everything a checkpoint says about its model, checked once.

    Attributes:
        network: the registry name, e.g. ``"attention_unet3d"``.
        network_kwargs: the constructor arguments given to ``build_network``.
        label_convention: a name of :mod:`medseg.data.conventions`, or ``None``.
        channel_names: input channel names in the network's order, or ``None``.
        output_names: one name per output channel (``("TC", "WT", "ET")``), or ``None``.
        preprocessing: what inference must repeat (``task``, orientation, normalisation,
            ``pixdim``, ``label_values``; 2D: ``image_size``, ``resize``, ``normalize``).
        inference: the sliding-window settings; ``None`` in checkpoints written before they
            were recorded (format 1, and format 2 files without an ``inference`` entry). For
            those, inference uses what their runs used: the output bundle's
            ``configs/inference.json`` (the run's ``roi_size``, the bundle's ``sw_batch_size``
            and ``sw_overlap``), and without a bundle :data:`LEGACY_INFERENCE`.
        postprocessing: the post-processing chosen on out-of-fold predictions
            (:mod:`medseg.postprocessing`), e.g. ``{"largest_component": ["WT"], "et_min_voxels":
            100}``; ``None`` when none was chosen.
    """

    network: str
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    label_convention: str | None = None
    channel_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    inference: InferenceSettings | None = None
    postprocessing: dict[str, Any] | None = None

    @property
    def task(self) -> str | None:
        """``"regions"``, ``"multiclass"`` or ``"binary"`` (2D), as trained; ``None`` if not recorded."""
        return self.preprocessing.get("task")

    @property
    def spatial_dims(self) -> int:
        """2 or 3 (the network's ``spatial_dims``, 3 when not given)."""
        return self.network_kwargs.get("spatial_dims", 3)

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this, as the registry says for this network."""
        return network_size_divisor(self.network, self.network_kwargs)

    @property
    def network_spec(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": {...}}``, as ``build_network`` and the bundle configs take it."""
        return {"name": self.network, "kwargs": dict(self.network_kwargs)}

    @classmethod
    def create(cls, network: Any, label_convention: str | None = None, channel_names: Any = None,
               output_names: Any = None, preprocessing: dict[str, Any] | None = None,
               inference: InferenceSettings | dict[str, Any] | None = None) -> ModelSpec:
        """Build a spec from training's values (``network`` as ``{"name": str, "kwargs": dict}``).

        Raises:
            ValueError: ``network`` is not ``{"name": str, "kwargs": dict}``.
        """
        if not (isinstance(network, dict) and isinstance(network.get("name"), str)
                and isinstance(network.get("kwargs", {}), dict) and set(network) <= {"name", "kwargs"}):
            raise InvalidValueError(f'`network` must be {{"name": str, "kwargs": dict}}, got {network!r}')
        if inference is not None:  # checked as it will be read back
            data = inference.to_dict() if isinstance(inference, InferenceSettings) else inference
            inference = InferenceSettings.from_dict(data, "inference settings")
        return cls(network=network["name"], network_kwargs=dict(network.get("kwargs", {})),
                   label_convention=label_convention,
                   channel_names=tuple(channel_names) if channel_names is not None else None,
                   output_names=tuple(output_names) if output_names is not None else None,
                   preprocessing=dict(preprocessing or {}), inference=inference)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], source: str | os.PathLike[str] = "checkpoint") -> ModelSpec:
        """Read and check the model description of a loaded checkpoint (any format version).

        Raises:
            MedsegError: naming ``source`` and the field that is malformed.
        """
        network = ckpt.get(_NETWORK)
        if not (isinstance(network, dict) and isinstance(network.get("name"), str)
                and isinstance(network.get("kwargs", {}), dict)):
            raise MedsegError(f'{source}: the network spec must be {{"name": str, "kwargs": dict}}, '
                              f"got {network!r:.200}")
        convention = ckpt.get(_CONVENTION)
        if convention is not None and not isinstance(convention, str):
            raise _refuse(source, _CONVENTION, "a string or null", convention)
        extra = ckpt.get(_EXTRA) or {}
        if not isinstance(extra, dict):
            raise _refuse(source, _EXTRA, "a dict", extra)
        names = {}
        for where, value in ((_CHANNELS, ckpt.get(_CHANNELS)), (f"{_EXTRA}.{_OUTPUT_NAMES}", extra.get(_OUTPUT_NAMES))):
            if value is not None and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
                raise _refuse(source, where, "a list of strings or null", value)
            names[where] = tuple(value) if value else None  # an empty list means "not recorded", as before
        prep = ckpt.get(_PREPROCESSING) or {}
        if not isinstance(prep, dict):
            raise _refuse(source, _PREPROCESSING, "a dict or null", prep)
        settings = ckpt.get(_INFERENCE)
        post = ckpt.get(_POSTPROCESSING)
        if post is not None and not isinstance(post, dict):
            raise _refuse(source, _POSTPROCESSING, "a dict or null", post)
        return cls(network=network["name"], network_kwargs=dict(network.get("kwargs", {})),
                   label_convention=convention, channel_names=names[_CHANNELS],
                   output_names=names[f"{_EXTRA}.{_OUTPUT_NAMES}"], preprocessing=dict(prep),
                   inference=None if settings is None else InferenceSettings.from_dict(settings, source),
                   postprocessing=dict(post) if post is not None else None)

    def checkpoint_entries(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint entries that describe the model (``extra`` gains the output names)."""
        extra = dict(extra or {})
        if self.output_names is not None:
            extra.setdefault(_OUTPUT_NAMES, list(self.output_names))
        entries: dict[str, Any] = {
            _NETWORK: self.network_spec,
            _CONVENTION: self.label_convention,
            _CHANNELS: list(self.channel_names) if self.channel_names is not None else None,
            _PREPROCESSING: dict(self.preprocessing) if self.preprocessing else None,
            _EXTRA: extra,
        }
        if self.inference is not None:
            entries[_INFERENCE] = self.inference.to_dict()
        if self.postprocessing is not None:
            entries[_POSTPROCESSING] = dict(self.postprocessing)
        return entries

    def bundle_values(self) -> dict[str, Any]:
        """The ids of a bundle's ``configs/inference.json`` this model decides, with their values."""
        kwargs = self.network_kwargs
        values: dict[str, Any] = {"network_spec": self.network_spec}
        for key, value in (("num_channels", kwargs.get("in_channels")), ("num_classes", kwargs.get("out_channels"))):
            if value is not None:
                values[key] = value
        for key in ("pixdim", "label_values", "planned"):  # null included: "native spacing", "from the data"
            if key in self.preprocessing:
                values[key] = self.preprocessing[key]
        values["label_postprocessing"] = self.postprocessing  # "postprocessing" is MONAI's id of the output Compose
        if self.inference is not None:
            values[_ROI] = list(self.inference.roi_size)
            if self.inference.sw_batch_size is not None:
                values[_SW_BATCH] = self.inference.sw_batch_size
            if self.inference.overlap is not None:
                values[_OVERLAP] = self.inference.overlap
        return values


def inference_settings(roi_size: Any, sw_batch_size: Any = None, sw_overlap: Any = None, mode: str = "gaussian",
                       tta_axes: Any = ()) -> InferenceSettings:
    """Settings from a bundle's ids (``roi_size``, ``sw_batch_size``, ``sw_overlap``), checked.

    Raises:
        MedsegError: a value out of range, naming the id.
    """
    roi = [int(r) for r in roi_size] if isinstance(roi_size, (list, tuple)) else roi_size
    overlap = float(sw_overlap) if type(sw_overlap) is int else sw_overlap
    data = {_ROI: roi, _SW_BATCH: sw_batch_size, _OVERLAP: overlap, _MODE: mode, _TTA: list(tta_axes or ())}
    return InferenceSettings.from_dict(data, "the bundle's inference settings")


"""From probabilities to label values, and a voxel-wise uncertainty map.

Region models (BraTS TC/WT/ET, sigmoid) are thresholded at 0.5 and painted into a label
convention's values with :meth:`medseg.data.conventions.LabelConvention.from_regions`
(BraTS 2021 writes 0/1/2/4, BraTS 2023 0/1/2/3, MSD its own 0/1/2/3). Class models
(softmax) take the arg-max and write the checkpoint's ``label_values``.

Which convention a mask is written in (:func:`choose_convention`): the one ``--labels``
names; else the input's own, as its layout tells it (a BraTS 2023 folder, an MSD
``dataset.json``); else the model's. A convention is only ever written when the mapping
from the model's outputs is well-defined (:func:`conversion_problem`): the model's regions,
or classes that are exactly a region convention's labels, painted into any convention with
the same regions. A class model's ``0/1/4`` of a toy dataset means nothing in BraTS 2023, so
that combination is refused rather than guessed.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import torch

from medseg.data.conventions import LabelConvention, get_convention
from medseg.errors import InvalidValueError, MedsegError
from medseg.inference.model import InferenceModel
from medseg.inference.writer import label_dtype

__all__ = ["UNCERTAINTY_KINDS", "choose_convention", "conversion_problem", "forced_convention",
           "probabilities_to_labels", "tensor_to_labels", "uncertainty_map", "unknown_convention"]

UNCERTAINTY_KINDS = ("entropy", "variance")
_EPS = 1e-7


def _registered(name: str | None) -> LabelConvention | None:
    try:
        return get_convention(str(name)) if name else None
    except ValueError:
        return None


def unknown_convention(name: str) -> str | None:
    """Why ``name`` is no registered label convention (listing those that are), or ``None``."""
    try:
        get_convention(name)
    except ValueError as err:
        return str(err)
    return None


def conversion_problem(model: InferenceModel, target: LabelConvention) -> str | None:
    """Why ``model``'s outputs cannot be written in ``target``'s label values, or ``None`` when they can.

    They can when ``target`` is the model's own convention, or when both are region
    conventions with the same regions (brats2021, brats2023 and msd_brain all have TC, WT
    and ET): a region model's thresholded regions, or a class model's labels turned into
    its convention's regions, are painted with ``target``'s values.
    """
    own = _registered(model.convention)
    if model.convention == target.name:
        return None
    shown = f"{model.convention!r}" if model.convention else "unnamed"
    if own is None or not own.is_region_based:
        return f"the model's {shown} labels {list(model.label_values)} are classes with no regions to map through"
    regions = "/".join(own.region_names)
    if not target.is_region_based or set(target.region_names) != set(own.region_names):
        return f"{target.name!r} has no {regions} regions to paint the model's {shown} outputs into"
    if model.task != "regions" and set(model.label_values) != own.valid_values:
        return (f"the model's classes {list(model.label_values)} are not the {shown} labels "
                f"{sorted(own.valid_values)}, so they have no {regions} regions")
    return None


def forced_convention(model: InferenceModel, name: str) -> LabelConvention:
    """The registered convention ``name`` (``medseg infer --labels``), checked to be writable by ``model``.

    Raises:
        MedsegError: an unknown name (listing the valid ones), or one that ``model``'s outputs
            have no well-defined mapping to (naming both conventions); one line each.
    """
    target = _registered(name)
    if target is None:
        raise MedsegError(f"--labels {name}: {unknown_convention(name)}")
    why = conversion_problem(model, target)
    if why is not None:
        raise MedsegError(f"--labels {name}: a {model.convention or 'unnamed'} model's outputs cannot be written "
                          f"as {name} labels ({why})")
    return target


def choose_convention(model: InferenceModel, forced: str | None, detected: LabelConvention | None
                      ) -> LabelConvention | None:
    """The convention a case's mask is written in.

    Args:
        model: the model.
        forced: ``--labels``: this convention, whatever the input (checked as in :func:`forced_convention`).
        detected: the input's own convention, from its layout
            (:attr:`medseg.inference.inputs.InferenceCase.convention`), or ``None``.

    Returns:
        ``forced``; else ``detected`` when the model's outputs map to it; else ``None``: the
        model's own values (a plain file, a DICOM series, an nnU-Net dataset of other classes).
    """
    if forced is not None:
        return forced_convention(model, forced)
    if detected is not None and detected.is_region_based and conversion_problem(model, detected) is None:
        return detected
    return None


def _checked_target(shape: tuple[int, ...], model: InferenceModel,
                    convention: LabelConvention | None) -> LabelConvention | None:
    """The convention to paint into (``None``: the model's own), checked against ``model`` and the channels."""
    if shape[0] != model.out_channels:
        raise InvalidValueError(f"expected {model.out_channels} probability channels {list(model.output_names)}, "
                         f"got shape {shape}")
    if convention is not None and convention.name == model.convention:
        convention = None
    if convention is not None:
        why = conversion_problem(model, convention)
        if why is not None:
            raise InvalidValueError(f"cannot write {convention.name} labels: {why}")
    return convention


def probabilities_to_labels(probabilities: np.ndarray, model: InferenceModel, threshold: float = 0.5,
                            convention: LabelConvention | None = None) -> np.ndarray:
    """Turn output probabilities into a label map.

    :func:`tensor_to_labels` is its twin on torch tensors (any device).

    Args:
        probabilities: ``(C, X, Y, Z)`` in the network's output order.
        model: gives the task, the convention and the label values.
        threshold: region threshold (``"regions"`` only).
        convention: write this convention's values (from :func:`choose_convention`);
            ``None``: the model's own.

    Returns:
        ``(X, Y, Z)`` label map, uint8 (uint16 or uint32 for larger values).

    Raises:
        InvalidValueError: the wrong number of channels, or a ``convention`` the model's
            outputs do not map to.
    """
    convention = _checked_target(tuple(probabilities.shape), model, convention)
    if model.task == "regions":
        if convention is None:
            regions = probabilities[list(model.region_order)]
            own = get_convention(str(model.convention))
            return own.from_regions(regions, threshold).astype(label_dtype(own.valid_values))
        # The same regions, taken in the target's order by name.
        regions = probabilities[[model.output_names.index(r) for r in convention.region_names]]
        return convention.from_regions(regions, threshold).astype(label_dtype(convention.valid_values))
    values = np.asarray(model.label_values, dtype=label_dtype(model.label_values))
    labels = values[np.argmax(probabilities, axis=0)]
    if convention is None:
        return labels
    # A class model of a region convention: its labels -> that convention's regions -> the target's values.
    own = get_convention(str(model.convention))
    regions = own.to_regions(labels)[[own.region_names.index(r) for r in convention.region_names]]
    return convention.from_regions(regions).astype(label_dtype(convention.valid_values))


def _torch_label_dtype(values: Collection[int]) -> torch.dtype:
    """uint8 where :func:`~medseg.inference.writer.label_dtype` is uint8, else int64 (torch lacks full uint16/32)."""
    return torch.uint8 if label_dtype(values) == np.uint8 else torch.int64


def _paint_regions(regions: torch.Tensor, target: LabelConvention, threshold: float) -> torch.Tensor:
    """:meth:`~medseg.data.conventions.LabelConvention.from_regions` on a tensor, on its device."""
    out = torch.zeros(regions.shape[1:], dtype=_torch_label_dtype(target.valid_values), device=regions.device)
    index = {name: i for i, name in enumerate(target.regions)}
    for name, value in target.region_fill:
        out[regions[index[name]] > threshold] = value
    return out


def tensor_to_labels(probabilities: torch.Tensor, model: InferenceModel, threshold: float = 0.5,
                     convention: LabelConvention | None = None) -> np.ndarray:
    """:func:`probabilities_to_labels` on a torch tensor, computed on its device; only the label map is copied back.

    The same thresholds, painting order (``region_fill``), arg-max (ties to the first class, as
    NumPy) and conversions; tests check that the two agree exactly.

    Args:
        probabilities: ``(C, X, Y, Z)`` tensor in the network's output order, on any device.
        model, threshold, convention: as for :func:`probabilities_to_labels`.

    Returns:
        ``(X, Y, Z)`` label map on the host, in the dtype :func:`probabilities_to_labels` gives.

    Raises:
        InvalidValueError: as :func:`probabilities_to_labels`.
    """
    convention = _checked_target(tuple(probabilities.shape), model, convention)
    if model.task == "regions":
        target = convention or get_convention(str(model.convention))
        order = list(model.region_order) if convention is None else \
            [model.output_names.index(r) for r in convention.region_names]
        labels = _paint_regions(probabilities[order], target, threshold)
        return labels.cpu().numpy().astype(label_dtype(target.valid_values), copy=False)
    values = torch.as_tensor(model.label_values, dtype=_torch_label_dtype(model.label_values),
                             device=probabilities.device)
    labels = values[torch.argmax(probabilities, dim=0)]
    if convention is None:
        return labels.cpu().numpy().astype(label_dtype(model.label_values), copy=False)
    own = get_convention(str(model.convention))
    regions = torch.stack([torch.isin(labels, torch.as_tensor(own.regions[r], device=labels.device))
                           for r in convention.region_names])
    painted = _paint_regions(regions.to(torch.uint8), convention, 0.5)
    return painted.cpu().numpy().astype(label_dtype(convention.valid_values), copy=False)


def uncertainty_map(mean: torch.Tensor, variance: torch.Tensor | None, kind: str, task: str) -> torch.Tensor:
    """A voxel-wise uncertainty map ``(1, X, Y, Z)`` in ``[0, 1]`` (entropy) or ``[0, 0.25]`` (variance).

    Args:
        mean: probabilities ``(C, X, Y, Z)``, averaged over TTA passes.
        variance: per-channel variance across TTA passes ``(C, X, Y, Z)`` (``"variance"`` only).
        kind: ``"entropy"``: the predictive entropy of ``mean``, normalised by its maximum
            (``log C`` for softmax classes; for sigmoid regions, the mean binary entropy over
            regions divided by ``log 2``). ``"variance"``: the variance across TTA passes,
            averaged over channels.
        task: ``"regions"`` or ``"multiclass"``.

    Returns:
        float32 tensor ``(1, X, Y, Z)``.
    """
    if kind == "variance":
        if variance is None:
            raise InvalidValueError("the 'variance' uncertainty needs TTA passes (--tta)")
        return variance.mean(dim=0, keepdim=True).float()
    if kind != "entropy":
        raise InvalidValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {kind!r}")
    p = mean.float().clamp(_EPS, 1 - _EPS)
    if task == "regions":
        binary = -(p * torch.log(p) + (1 - p) * torch.log(1 - p))
        return (binary.mean(dim=0, keepdim=True) / math.log(2)).clamp(0, 1)
    channels = max(int(mean.shape[0]), 2)
    return (-(p * torch.log(p)).sum(dim=0, keepdim=True) / math.log(channels)).clamp(0, 1)

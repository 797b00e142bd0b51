"""The 3D task: volumes (NIfTI, BraTS, MSD, DICOM) through the sliding window, written in their input geometry.

One of the two tasks of the batch loop (:mod:`medseg.inference.task`; the 2D peer is
:mod:`medseg.inference.image_task`). A case is read and preprocessed
(:func:`~medseg.inference.preprocess.prepare_case`), predicted by the sliding window
(:class:`~medseg.inference.predictor.SlidingWindowPredictor`), then mapped back to its
input grid and written (:func:`~medseg.inference.writer.write_outputs`, with a DICOM-SEG
for DICOM series). Those three steps may overlap across cases
(:mod:`medseg.inference.pipeline`): the next case is read and the previous one written
while the network runs on the current one.

Each case's mask is written in the label convention
:func:`~medseg.inference.postprocess.choose_convention` picks for it, before anything runs:
``labels`` if given (an impossible one stops the batch there), else the input's own (a
BraTS 2023 folder gets 0/1/2/3), else the model's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from medseg.data.conventions import LabelConvention, get_convention
from medseg.errors import MedsegError
from medseg.inference.device_stages import (
    DeviceResult,
    LoadedCase,
    load_case,
    preprocess_on_device,
    restore_on_device,
)
from medseg.inference.dicom_seg import dicom_seg_writer
from medseg.inference.geometry import DicomReference, Reference
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.model import InferenceModel
from medseg.inference.options import InferenceOptions
from medseg.inference.outputs import CaseFiles
from medseg.inference.postprocess import (
    choose_convention,
    forced_convention,
    probabilities_to_labels,
    uncertainty_map,
)
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import PreparedCase, prepare_case, restore_geometry
from medseg.inference.writer import OutputPaths, output_paths, write_outputs
from medseg.postprocessing import apply_postprocessing

__all__ = ["VolumeRun", "VolumeTask", "case_conventions", "infer_case", "predict_case", "write_case",
           "write_labels", "write_restored"]

logger = logging.getLogger("medseg.infer")


def predict_case(prepared: PreparedCase, model: InferenceModel, predictor: SlidingWindowPredictor,
                 options: InferenceOptions, keep_on_device: bool = False) -> torch.Tensor:
    """Run the network on a prepared case.

    Args:
        keep_on_device: leave the maps on the predictor's device (see
            :meth:`~medseg.inference.predictor.SlidingWindowPredictor.predict`); default: the CPU.

    Returns:
        Its maps on the preprocessed grid: the probabilities, followed by the uncertainty map
        when ``options.save_prob`` is set.
    """
    prediction = predictor.predict(prepared.image, keep_on_device=keep_on_device)
    maps = [prediction.mean]
    if options.save_prob:
        maps.append(uncertainty_map(prediction.mean, prediction.variance, options.uncertainty, model.task))
    return torch.cat(maps) if len(maps) > 1 else maps[0]


def _labelled_as(model: InferenceModel, convention: LabelConvention | None) -> InferenceModel:
    """The model as the DICOM-SEG writer sees it when its masks hold ``convention``'s values (segments and meanings)."""
    if convention is None or convention.name == model.convention:
        return model
    return dataclasses.replace(model, convention=convention.name, label_values=tuple(sorted(convention.valid_values)),
                               label_names={v: n for v, n in convention.labels.items() if v != 0})


def write_case(prepared: PreparedCase, maps: torch.Tensor, model: InferenceModel, paths: OutputPaths,
               options: InferenceOptions, keep: Collection[Path] = (),
               convention: LabelConvention | None = None) -> list[Path]:
    """Map a case's maps back to its input geometry and write its outputs as one set.

    Args:
        keep: existing outputs to leave as they are (not written).
        convention: the label convention the mask is written in
            (:func:`~medseg.inference.postprocess.choose_convention`); ``None``: the model's.

    Returns:
        The files written.
    """
    restored = restore_geometry(maps, prepared)
    del maps
    uncertainty = restored[model.out_channels] if options.save_prob else None
    return write_restored(prepared.reference, restored[: model.out_channels], uncertainty, model, paths, options,
                          keep, convention)


def write_restored(reference: Reference, probabilities: np.ndarray, uncertainty: np.ndarray | None,
                   model: InferenceModel, paths: OutputPaths, options: InferenceOptions,
                   keep: Collection[Path] = (), convention: LabelConvention | None = None) -> list[Path]:
    """Write a case's outputs from probabilities already on its input grid.

    The probabilities become labels (:func:`~medseg.inference.postprocess.probabilities_to_labels`),
    the model's recorded post-processing is applied (:mod:`medseg.postprocessing`), and the mask
    (with the maps when ``options.save_prob``, and DICOM-SEG when asked) is written.

    Returns:
        The files written.
    """
    labels = probabilities_to_labels(probabilities, model, convention=convention)
    return write_labels(reference, labels, probabilities, uncertainty, model, paths, options, keep, convention)


def write_labels(reference: Reference, labels: np.ndarray, probabilities: np.ndarray | None,
                 uncertainty: np.ndarray | None, model: InferenceModel, paths: OutputPaths,
                 options: InferenceOptions, keep: Collection[Path] = (),
                 convention: LabelConvention | None = None) -> list[Path]:
    """Write a case's outputs from its label map on its input grid (:func:`write_restored` after the labels).

    Args:
        labels: ``(X, Y, Z)`` label map in ``convention``'s values, before post-processing.
        probabilities, uncertainty: the maps on the input grid, written with ``options.save_prob``.
        convention: the convention of ``labels`` (``None``: the model's).

    Returns:
        The files written.
    """
    if model.postprocessing is not None:
        regions = (convention or get_convention(str(model.convention))) if model.task == "regions" else None
        labels = apply_postprocessing(labels, model.postprocessing, regions)
    seg = None
    if options.dicom_seg and isinstance(reference, DicomReference) and paths.dicom_seg not in keep:
        seg = dicom_seg_writer(labels, reference, _labelled_as(model, convention))
    return write_outputs(
        reference, paths, labels,
        probabilities=probabilities if options.save_prob else None,
        uncertainty=uncertainty if options.save_prob else None,
        output_names=model.output_names, dicom_seg=seg, keep=keep,
    )


def infer_case(case: InferenceCase, model: InferenceModel, predictor: SlidingWindowPredictor, paths: OutputPaths,
               options: InferenceOptions) -> list[Path]:
    """Segment one case and write its outputs in its input geometry (read, predict, write in turn).

    Returns:
        The files written.
    """
    convention = choose_convention(model, options.labels, case.convention)
    prepared = prepare_case(case, model)
    return write_case(prepared, predict_case(prepared, model, predictor, options), model, paths, options,
                      convention=convention)


def case_conventions(model: InferenceModel, cases: Sequence[InferenceCase], forced: str | None
                      ) -> dict[str, LabelConvention | None]:
    """The label convention of each case's mask, by case id; says once which conventions the batch writes."""
    chosen = {case.case_id: choose_convention(model, forced, case.convention) for case in cases}
    written = Counter(c.name if c is not None else model.convention or "the model's" for c in chosen.values())
    how = "--labels" if forced else "each input's own, else the model's"
    logger.info("label values: %s (%s)", ", ".join(f"{name} for {n} case(s)" for name, n in written.items()), how)
    ignored = sorted({case.convention.name for case in cases if case.convention is not None and forced is None
                      and case.convention.is_region_based and chosen[case.case_id] is None})
    for name in ignored:
        logger.warning("inputs in %s labels get the model's %s values: its outputs do not map to %s", name,
                       model.convention or "unnamed", name)
    return chosen


def _place(predictor: SlidingWindowPredictor, in_channels: int, done: Future) -> None:
    """Move the network to its device and warm it up; ``done`` gets the predictor, or the error."""
    try:
        predictor.place()
        predictor.warm_up(in_channels)
    except BaseException as err:  # noqa: BLE001 - handed to the thread that waits for it
        done.set_exception(err)
    else:
        done.set_result(predictor)


def _readers(options: InferenceOptions, on_cpu: bool) -> int:
    if options.readers is not None:
        return options.readers
    return 1 if on_cpu else min(4, os.cpu_count() or 1)


class VolumeRun:
    """One batch's 3D cases, ready to run: the predictor is made and each case's label convention chosen.

    On CUDA the network is moved to the GPU and run once on empty windows in a background
    thread (:meth:`SlidingWindowPredictor.warm_up`): creating the CUDA context, copying the
    weights and loading the kernels then overlap with reading the first case, which needs none
    of them. :attr:`predictor` waits for that.

    Args:
        model: the 3D model.
        cases: the batch (their conventions are chosen, and logged, here).
        options: how to run.
    """

    def __init__(self, model: InferenceModel, cases: Sequence[InferenceCase], options: InferenceOptions) -> None:
        self.model = model
        self.options = options
        self.conventions = case_conventions(model, cases, options.labels)
        predictor = SlidingWindowPredictor(
            model.network, model.roi_size, model.sw_batch_size, model.overlap, activation=model.activation,
            device=options.device, tta=options.tta, mirror_axes=model.tta_axes, mode=model.blend_mode,
            track_variance=options.save_prob and options.uncertainty == "variance",
            cpu_threshold=options.cpu_threshold, defer_placement=True)
        #: Where the network runs (known before it is there).
        self.device = predictor.device
        self._placed: Future[SlidingWindowPredictor] = Future()
        if self.device.type == "cuda":
            threading.Thread(target=_place, args=(predictor, model.in_channels, self._placed),
                             name="medseg-place-network", daemon=True).start()
        else:
            predictor.place()
            self._placed.set_result(predictor)
        self.readers = _readers(options, on_cpu=self.device.type != "cuda")
        on = options.device_stages
        #: Preprocessing, inversion and labels on the network's device (medseg.inference.device_stages).
        self.device_stages = self.device.type == "cuda" if on is None else bool(on)

    @property
    def predictor(self) -> SlidingWindowPredictor:
        """The predictor, its network on the device (waits for the background placement on CUDA)."""
        return self._placed.result()

    def prepare(self, case: InferenceCase) -> PreparedCase | LoadedCase:
        """Read and preprocess a case, or with ``device_stages`` only read it (raises its input problem, if any)."""
        if self.device_stages and case.kind in ("nifti", "dicom"):
            return load_case(case, self.model, self.device, self.options.cpu_threshold)
        return prepare_case(case, self.model)

    def compute(self, case: InferenceCase, prepared: PreparedCase | LoadedCase
                ) -> tuple[PreparedCase, torch.Tensor] | DeviceResult:
        """The network's maps, the prepared case going on to the writer, which inverts its transforms.

        A case only read (``device_stages``) is preprocessed, predicted, mapped back and
        labelled on the device here: its labels go on to the writer.
        """
        if isinstance(prepared, LoadedCase):
            ready = preprocess_on_device(case, prepared, self.model, self.predictor.device)
            maps = predict_case(ready, self.model, self.predictor, self.options, keep_on_device=True)
            return restore_on_device(ready, maps.to(self.predictor.device), self.model, self.options.save_prob,
                                     convention=self.conventions[case.case_id])
        return prepared, predict_case(prepared, self.model, self.predictor, self.options)

    def write(self, case: InferenceCase, computed: tuple[PreparedCase, torch.Tensor] | DeviceResult,
              paths: OutputPaths, keep: Collection[Path]) -> list[Path]:
        """Write the case's outputs (but those in ``keep``) in its input geometry; returns the files written."""
        convention = self.conventions[case.case_id]
        if isinstance(computed, DeviceResult):
            maps, channels = computed.maps, self.model.out_channels
            return write_labels(computed.reference, computed.labels, None if maps is None else maps[:channels],
                                None if maps is None else maps[channels], self.model, paths, self.options, keep,
                                convention)
        return write_case(*computed, self.model, paths, self.options, keep, convention=convention)

    def size(self, prepared: PreparedCase | LoadedCase) -> int:
        """Voxels of one channel of the prepared case (of its preprocessed grid, for a case only read)."""
        if isinstance(prepared, LoadedCase):
            return prepared.voxels
        return prepared.image[0].numel()


class VolumeTask:
    """Segment volumes with a 3D :class:`~medseg.inference.model.InferenceModel`.

    Attributes:
        overlap: True: reading, the network and writing may overlap across cases.
    """

    overlap = True

    def __init__(self, model: InferenceModel) -> None:
        self.model = model

    def check_options(self, options: InferenceOptions) -> None:
        """Refuse ``--multiscale`` (2D only) and a ``--labels`` convention the model's outputs cannot take."""
        if options.multiscale:
            raise MedsegError("--multiscale averages scales of 2D images; this is a 3D model (use --tta instead)")
        if options.labels is not None:
            forced_convention(self.model, options.labels)  # an impossible one stops here, before any work

    def list_cases(self, inputs: Sequence[str | Path]) -> list[InferenceCase]:
        """NIfTI files, dataset folders and DICOM series (:func:`~medseg.inference.inputs.expand_inputs`)."""
        return expand_inputs(inputs, self.model)

    def case_files(self, case: InferenceCase, out: Path, options: InferenceOptions) -> CaseFiles:
        """``<id>.nii.gz``; ``_prob`` and ``_uncertainty`` with ``save_prob``; ``_seg.dcm`` for DICOM with ``dicom_seg``."""
        paths = output_paths(out, case.case_id)
        owned = (("mask", paths.labels), ("probability map", paths.probabilities),
                 ("uncertainty map", paths.uncertainty), ("DICOM-SEG", paths.dicom_seg))
        writes = owned[:1] + (owned[1:3] if options.save_prob else ()) + \
            (owned[3:] if options.dicom_seg and case.kind == "dicom" else ())
        return CaseFiles(paths, writes, owned)

    def start(self, cases: Sequence[InferenceCase], options: InferenceOptions) -> VolumeRun:
        """Make the predictor and choose each case's label convention."""
        return VolumeRun(self.model, cases, options)

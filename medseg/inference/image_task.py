"""The 2D task: image files (dermoscopy) through the whole-image predictor, written as PNG at their own size.

One of the two tasks of the batch loop (:mod:`medseg.inference.task`; the 3D peer is
:mod:`medseg.inference.volume_task`). A case is read as RGB
(:func:`~medseg.transforms.planar.read_rgb`), predicted whole
(:class:`~medseg.inference.planar_predictor.PlanarPredictor`) and written as its mask,
overlay and, with ``save_prob``, probability map
(:func:`~medseg.inference.planar_writer.write_planar_outputs`). The steps run one case at a
time: an image is read and written in milliseconds, so overlapping them would gain little.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import MedsegError
from medseg.inference.inputs import InferenceCase, expand_image_inputs
from medseg.inference.options import InferenceOptions
from medseg.inference.outputs import CaseFiles
from medseg.inference.planar_predictor import PlanarPredictor
from medseg.inference.planar_writer import PlanarOutputs, planar_output_paths, write_planar_outputs
from medseg.transforms.planar import read_rgb

if TYPE_CHECKING:
    from medseg.inference.planar import PlanarModel

__all__ = ["ImageRun", "ImageTask", "infer_image", "infer_planar_case"]


def infer_image(path: Path, predictor: PlanarPredictor, paths: PlanarOutputs, save_prob: bool = False,
                keep: Collection[Path] = ()) -> list[Path]:
    """Segment one image file and write its outputs (but those in ``keep``) at its own width and height.

    Returns:
        The files written.
    """
    rgb = read_rgb(path)
    probabilities = predictor.predict(rgb)
    return write_planar_outputs(rgb, probabilities, paths, predictor.model.threshold, save_prob, keep)


def infer_planar_case(case: InferenceCase, predictor: PlanarPredictor, paths: PlanarOutputs,
                      options: InferenceOptions, keep: Collection[Path] = ()) -> list[Path]:
    """Segment one 2D image and write its mask and overlay at the image's own width and height.

    Args:
        keep: existing outputs to leave as they are (not written).

    Returns:
        The files written.
    """
    if case.problem:
        raise MedsegError(case.problem)  # already names the file and the rule
    return infer_image(case.images[0], predictor, paths, save_prob=options.save_prob, keep=keep)


class ImageRun:
    """One batch's 2D cases, ready to run: the predictor is made.

    Args:
        model: the 2D model.
        options: how to run.
    """

    readers = 1

    def __init__(self, model: PlanarModel, options: InferenceOptions) -> None:
        self.options = options
        self.predictor = PlanarPredictor(model, options.device, multiscale=options.multiscale, tta=options.tta)

    def prepare(self, case: InferenceCase) -> np.ndarray | None:
        """The case's ``(H, W, 3)`` uint8 image; ``None`` for a case with an input problem.

        Such a case fails when it is written (:meth:`write`), after the batch has checked
        which of its outputs exist, as 2D cases always have: one whose files all exist is
        reported as skipped.
        """
        return None if case.problem else read_rgb(case.images[0])

    def compute(self, case: InferenceCase, prepared: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The image and its ``(H, W)`` lesion probabilities."""
        return None if prepared is None else (prepared, self.predictor.predict(prepared))

    def write(self, case: InferenceCase, computed: tuple[np.ndarray, np.ndarray] | None, paths: PlanarOutputs,
              keep: Collection[Path]) -> list[Path]:
        """Write the mask, overlay (and probability map) but those in ``keep``; returns the files written."""
        if computed is None:
            raise MedsegError(str(case.problem))  # already names the file and the rule
        rgb, probabilities = computed
        return write_planar_outputs(rgb, probabilities, paths, self.predictor.model.threshold,
                                    self.options.save_prob, keep)

    def size(self, prepared: np.ndarray | None) -> int:
        """Pixels of the image."""
        return 0 if prepared is None else prepared.shape[0] * prepared.shape[1]


class ImageTask:
    """Segment image files with a 2D :class:`~medseg.inference.planar.PlanarModel`.

    Attributes:
        overlap: False: each case is read, predicted and written before the next is read.
    """

    overlap = False

    def __init__(self, model: PlanarModel) -> None:
        self.model = model

    def check_options(self, options: InferenceOptions) -> None:
        """Refuse ``--dicom-seg`` and ``--labels``, which apply to 3D models."""
        if options.dicom_seg:
            raise MedsegError("--dicom-seg writes DICOM-SEG for 3D DICOM series; this is a 2D model")
        if options.labels is not None:
            raise MedsegError(f"--labels {options.labels}: a 2D model writes binary lesion masks (0 and 255); "
                              "--labels applies to 3D models")

    def list_cases(self, inputs: Sequence[str | Path]) -> list[InferenceCase]:
        """Image files and ISIC folders (:func:`~medseg.inference.inputs.expand_image_inputs`)."""
        return expand_image_inputs(inputs)

    def case_files(self, case: InferenceCase, out: Path, options: InferenceOptions) -> CaseFiles:
        """``<id>.png`` and ``<id>_overlay.png``; ``<id>_prob.png`` with ``save_prob``."""
        paths = planar_output_paths(out, case.case_id)
        owned = (("mask", paths.mask), ("overlay", paths.overlay), ("probability map", paths.probabilities))
        return CaseFiles(paths, owned if options.save_prob else owned[:2], owned)

    def start(self, cases: Sequence[InferenceCase], options: InferenceOptions) -> ImageRun:
        """Make the predictor."""
        return ImageRun(self.model, options)

"""How ``medseg infer`` runs a batch: the options, checked against each other and the model.

The options are checked where they enter (:func:`check_options`), before any input is read
or any output folder is made, so that a wrong flag costs one line and no work.
"""

from __future__ import annotations

from dataclasses import dataclass

from medseg.errors import MedsegError
from medseg.inference.postprocess import UNCERTAINTY_KINDS
from medseg.inference.predictor import LARGE_VOLUME_VOXELS

__all__ = ["InferenceOptions", "check_options"]


@dataclass(frozen=True)
class InferenceOptions:
    """How a batch runs.

    Attributes:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        tta: average the 8 mirrorings of the spatial axes (4 for 2D images).
        save_prob: also write ``<id>_prob.nii.gz`` and ``<id>_uncertainty.nii.gz`` (2D: ``<id>_prob.png``).
        uncertainty: ``"entropy"`` (default) or ``"variance"`` (needs ``tta``).
        dicom_seg: also write ``<id>_seg.dcm`` for DICOM inputs.
        overwrite: re-segment cases whose outputs exist and replace each case's whole set of
            outputs: those this run does not write (say ``_prob`` from an earlier ``save_prob``
            run) are removed. Without it no existing file is replaced.
        progress: show a progress bar on stderr (when it is a terminal).
        cpu_threshold: volumes with more voxels are stitched on the CPU.
        multiscale: 2D models only: average the predictions at 0.75, 1.0 and 1.25 times the training size.
        pipelined: 3D: read the next case and write the previous one in background threads while
            the network runs (:mod:`medseg.inference.pipeline`); ``False`` runs them one after another.
        readers: 3D, pipelined: cases read at once ahead of the network. ``None``: 1 on the
            CPU (the network uses every core), ``min(4, CPU cores)`` on CUDA.
        labels: 3D: write every mask in this label convention's values (a name of
            :mod:`medseg.data.conventions`, e.g. ``"brats2021"``); ``None``: each input's own
            convention when its layout tells it, else the model's.
        num_parts, part_id: segment only part ``part_id`` (0-based) of ``num_parts``
            deterministic, disjoint shares of the cases (:mod:`medseg.inference.shard`): one per
            process or machine for an archive; together the parts are every case once.
        case_ids: segment only the cases with these ids (each must be among the inputs'), e.g.
            a cross-validation fold's validation cases; ``None``: every case.
        device_stages: 3D: preprocess (reorientation, resampling, z-scoring), map back to the
            input grid and turn probabilities into labels on the network's device
            (:mod:`medseg.inference.device_stages`); the reading threads only read, and only the
            label map comes back to the host. ``None`` (default): on when the network runs on
            CUDA; ``False``: everything but the network on the CPU.
    """

    device: str = "auto"
    tta: bool = False
    save_prob: bool = False
    uncertainty: str = "entropy"
    dicom_seg: bool = False
    overwrite: bool = False
    progress: bool = True
    cpu_threshold: int = LARGE_VOLUME_VOXELS
    multiscale: bool = False
    pipelined: bool = True
    readers: int | None = None
    labels: str | None = None
    num_parts: int = 1
    part_id: int = 0
    case_ids: tuple[str, ...] | None = None
    device_stages: bool | None = None


def check_options(options: InferenceOptions) -> None:
    """Refuse options that contradict each other, before any input is read.

    What a kind of model allows is checked by its task (``Task.check_options``).

    Raises:
        MedsegError: naming the flag and the value it got.
    """
    if options.uncertainty not in UNCERTAINTY_KINDS:
        raise MedsegError(f"--uncertainty must be one of {UNCERTAINTY_KINDS}, got {options.uncertainty!r}")
    if isinstance(options.num_parts, bool) or not isinstance(options.num_parts, int) or options.num_parts < 1:
        raise MedsegError(f"--num-parts must be an integer >= 1, got {options.num_parts!r}")
    if not isinstance(options.part_id, int) or not 0 <= options.part_id < options.num_parts:
        raise MedsegError(f"--part-id must be in [0, {options.num_parts}) for --num-parts {options.num_parts}, "
                          f"got {options.part_id!r}")
    if options.readers is not None and options.readers < 1:
        raise MedsegError(f"--readers must be at least 1, got {options.readers}")
    if options.save_prob and options.uncertainty == "variance" and not options.tta:
        raise MedsegError("--uncertainty variance is the variance across TTA passes: it needs --tta")

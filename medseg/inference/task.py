"""What differs between 2D and 3D inference, behind one small interface the batch loop calls.

The batch loop (:func:`medseg.inference.batch.run_inference`) is the same for every model:
list the cases, plan their files, skip what exists, run each case through read → network →
write, isolate failures, summarise. What a model's kind decides is asked of its task, chosen
once by :func:`task_for`:

========================  ====================================  ======================================
decision                  :class:`~.volume_task.VolumeTask` 3D   :class:`~.image_task.ImageTask` 2D
========================  ====================================  ======================================
``list_cases``            NIfTI, dataset folders, DICOM series  image files, ISIC folders
``case_files``            ``.nii.gz`` (+ prob, uncertainty,     ``.png`` mask, overlay (+ prob)
                          DICOM-SEG)
``start``                 sliding-window predictor, label       whole-image predictor
                          conventions
``overlap``               True: stages overlap across cases     False: one case at a time
========================  ====================================  ======================================

The run that ``start`` returns holds the three steps of a case (``prepare``, ``compute``,
``write``) for :mod:`medseg.inference.pipeline`. A new kind of model (a 2.5D slice stack,
say) is a new task here, not a branch in the loop.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

from medseg.inference.ensemble import EnsembleModel, EnsembleTask
from medseg.inference.image_task import ImageTask
from medseg.inference.inputs import InferenceCase
from medseg.inference.model import InferenceModel
from medseg.inference.options import InferenceOptions
from medseg.inference.outputs import CaseFiles
from medseg.inference.planar import PlanarModel
from medseg.inference.volume_task import VolumeTask

__all__ = ["CaseRun", "Model", "Task", "task_for"]

#: A model :func:`medseg.inference.model.load_inference_model` gives (3D or 2D), or an ensemble of 3D models.
Model = InferenceModel | PlanarModel | EnsembleModel


class CaseRun(Protocol):
    """A batch's cases, ready to run (predictor made): the steps of one case.

    Attributes:
        readers: how many cases may be read at once when the steps overlap.
    """

    readers: int

    def prepare(self, case: InferenceCase) -> Any:
        """Read and preprocess (in a reading thread when the steps overlap)."""

    def compute(self, case: InferenceCase, prepared: Any) -> Any:
        """Run the network (always in the calling thread, which owns the device)."""

    def write(self, case: InferenceCase, computed: Any, paths: Any, keep: Collection[Path]) -> list[Path]:
        """Write the case's files to ``paths`` (from :meth:`Task.case_files`) but those in ``keep``."""

    def size(self, prepared: Any) -> int:
        """How many voxels (pixels) a prepared case holds, to keep large cases on their own."""


class Task(Protocol):
    """The decisions of the batch loop that depend on the kind of model.

    Attributes:
        overlap: whether reading, the network and writing may overlap across cases.
    """

    overlap: bool

    def check_options(self, options: InferenceOptions) -> None:
        """Refuse options this kind of model cannot honour, before any input is read."""

    def list_cases(self, inputs: Sequence[str | Path]) -> list[InferenceCase]:
        """The cases of the input paths, in order; unusable ones carry a problem."""

    def case_files(self, case: InferenceCase, out: Path, options: InferenceOptions) -> CaseFiles:
        """The files ``case`` owns in ``out``, and which of them this run writes."""

    def start(self, cases: Sequence[InferenceCase], options: InferenceOptions) -> CaseRun:
        """Make the predictor (and whatever else the batch needs) once, for every case."""


def task_for(model: Model) -> Task:
    """The task of ``model``: :class:`~.image_task.ImageTask` for a 2D model,
    :class:`~.ensemble.EnsembleTask` for an ensemble, else :class:`~.volume_task.VolumeTask`.

    The one place the kind of model is looked at; the batch loop only asks the task.
    """
    if isinstance(model, EnsembleModel):
        return EnsembleTask(model)
    return ImageTask(model) if isinstance(model, PlanarModel) else VolumeTask(model)

"""Inference: segment NIfTI, BraTS, MSD and DICOM inputs with a trained output bundle.

The pipeline, one module per step: :mod:`~medseg.inference.model` (load the network and
settings), :mod:`~medseg.inference.inputs` (expand input paths into cases),
:mod:`~medseg.inference.preprocess` (training-time preprocessing and its exact inverse),
:mod:`~medseg.inference.predictor` (sliding window, TTA, memory-bounded stitching),
:mod:`~medseg.inference.postprocess` (labels and uncertainty), :mod:`~medseg.inference.writer`
and :mod:`~medseg.inference.dicom_seg` (outputs in the input's geometry, which
:mod:`~medseg.inference.geometry` carries from the read stage), and
:mod:`~medseg.inference.batch` (the loop with isolation and a summary, run as
:mod:`~medseg.inference.options` says). What differs between 2D and 3D models is asked of
their task (:mod:`~medseg.inference.task`): :mod:`~medseg.inference.volume_task` (3D) and
:mod:`~medseg.inference.image_task` (2D, with :mod:`~medseg.inference.planar`,
:mod:`~medseg.inference.planar_predictor` and :mod:`~medseg.inference.planar_writer`).
"""

from medseg.inference.batch import BatchReport, CaseOutcome, run_inference
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.model import InferenceModel, load_inference_model
from medseg.inference.options import InferenceOptions
from medseg.inference.predictor import Prediction, SlidingWindowPredictor, resolve_device
from medseg.inference.volume_task import infer_case
from medseg.privacy import safe_case_id

__all__ = [
    "BatchReport",
    "CaseOutcome",
    "InferenceCase",
    "InferenceModel",
    "InferenceOptions",
    "Prediction",
    "SlidingWindowPredictor",
    "expand_inputs",
    "infer_case",
    "load_inference_model",
    "resolve_device",
    "run_inference",
    "safe_case_id",
]

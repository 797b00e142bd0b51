"""Inference: segment NIfTI, BraTS, MSD and DICOM inputs with a trained output bundle.

The pipeline, one module per step: :mod:`~medseg.inference.model` (load the network and
settings), :mod:`~medseg.inference.inputs` (expand input paths into cases),
:mod:`~medseg.inference.preprocess` (training-time preprocessing and its exact inverse),
:mod:`~medseg.inference.predictor` (sliding window, TTA, memory-bounded stitching),
:mod:`~medseg.inference.postprocess` (labels and uncertainty), :mod:`~medseg.inference.writer`
and :mod:`~medseg.inference.dicom_seg` (outputs in the input's geometry, which
:mod:`~medseg.inference.geometry` carries from the read stage), and
:mod:`~medseg.inference.batch` (the loop with isolation and a summary, run as
:mod:`~medseg.inference.options` says).
"""

from medseg.inference.batch import BatchReport, CaseOutcome, infer_case, run_inference
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.model import InferenceModel, load_inference_model
from medseg.inference.options import InferenceOptions
from medseg.inference.predictor import Prediction, SlidingWindowPredictor, resolve_device
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

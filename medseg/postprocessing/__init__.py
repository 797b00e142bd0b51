"""Post-processing of predicted label maps, chosen on out-of-fold predictions (nnU-Net's last stage)."""

from medseg.postprocessing.choice import ET_THRESHOLDS, PostprocessingChoice, choose_postprocessing
from medseg.postprocessing.rules import apply_postprocessing, check_postprocessing, largest_component

__all__ = ["ET_THRESHOLDS", "PostprocessingChoice", "apply_postprocessing", "check_postprocessing",
           "choose_postprocessing", "largest_component"]

"""MONAI dictionary transforms assembled by one builder per stage (train, validate, infer)."""

from medseg.transforms.builders import (
    infer_transforms,
    planned_preprocessing,
    train_transforms,
    val_transforms,
)
from medseg.transforms.keys import IMAGE, LABEL, PRED

__all__ = ["IMAGE", "LABEL", "PRED", "infer_transforms", "planned_preprocessing", "train_transforms",
           "val_transforms"]

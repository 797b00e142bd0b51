"""What ``medseg reproduce`` passes back to the installed bundle, for runs older and newer than an id."""

from __future__ import annotations

import pytest
from tiny_training import BUNDLE

from medseg.engine.reproduce import reproduction_values
from medseg.errors import MedsegError
from medseg.transforms.augment3d import NNUNET


def test_a_run_older_than_the_augmentation_id_reproduces_with_the_light_pipeline():
    # Runs made before the bundle had `augmentation` trained with flips and intensity changes only.
    old = reproduction_values({"bundle_name": "brats_attention_unet3d", "max_epochs": 3}, BUNDLE, "r1")
    assert old["augmentation"] == "light" and old["max_epochs"] == 3
    new = reproduction_values({"max_epochs": 3, "augmentation": NNUNET}, BUNDLE, "r2")
    assert new["augmentation"] == NNUNET


def test_recorded_values_that_run_code_are_refused():
    with pytest.raises(MedsegError, match="would run code"):
        reproduction_values({"augmentation": "$__import__('os').system('true')"}, BUNDLE, "r3")

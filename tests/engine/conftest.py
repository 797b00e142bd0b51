"""Fixtures for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic BraTS-2021 cases of 32x32x24 (3 train, 1 validation with 5 folds)."""
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("tiny_brats")
    write_brats_dataset(out, cases=4, shape=(32, 32, 24), seed=3)
    return out


@pytest.fixture
def isolated_logging():
    """The bundles' logging.conf reconfigures the root logger; put it back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

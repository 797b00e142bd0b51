"""Fixtures for the reliability tests: tiny synthetic BraTS data written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_brats_rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic BraTS-2021 cases of 32x32x24 (3 train, 1 validation), under a path with a space and
    non-ASCII letters; read-only: copy before breaking."""
    from medseg.data.synth.writers import write_brats_dataset

    # Spaces and non-ASCII in the path: every test that reads this set also proves they work.
    out = tmp_path_factory.mktemp("rel_brats") / "rel brats dätä"
    write_brats_dataset(out, cases=4, shape=(32, 32, 24), seed=3)
    return out

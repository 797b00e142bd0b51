"""Shared fixtures: small synthetic datasets written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_SHAPE = (40, 40, 32)


@pytest.fixture(scope="session")
def brats2021_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny synthetic cases in BraTS 2021 naming (read-only for tests: copy before breaking)."""
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("brats2021")
    write_brats_dataset(out, cases=4, shape=SMALL_SHAPE, seed=7, fmt="brats2021")
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests unless CUDA is available (they are opt-in: ``-m gpu``)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Fixtures for the reliability tests: tiny synthetic BraTS data, isolation of in-process ``medseg train``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from bad_input_helpers import UNET_1CH
from rel_helpers import brats_bundle, single_channel_bundle

from medseg.inference.predictor import SlidingWindowPredictor


@pytest.fixture(scope="session")
def tiny_brats_rel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic BraTS-2021 cases of 32x32x24 (3 train, 1 validation), under a path with a space and
    non-ASCII letters; read-only: copy before breaking."""
    from medseg.data.synth.writers import write_brats_dataset

    # Spaces and non-ASCII in the path: every test that reads this set also proves they work.
    out = tmp_path_factory.mktemp("rel_brats") / "rel brats dätä"
    write_brats_dataset(out, cases=4, shape=(32, 32, 24), seed=3)
    return out


@pytest.fixture
def isolated_global_state() -> Iterator[None]:
    """Undo what an in-process ``medseg train`` changes globally: the bundle's logging.conf, determinism."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = {name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items()
                if isinstance(lg, logging.Logger)}
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.disabled = disabled.get(name, False)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def predictions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources the network ran on, in order (``SlidingWindowPredictor.predict`` is counted)."""
    seen: list[str] = []
    real = SlidingWindowPredictor.predict

    def counted(self, image, *args, **kwargs):
        seen.append(str(getattr(image, "meta", {}).get("filename_or_obj", "?")))
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(SlidingWindowPredictor, "predict", counted)
    return seen


@pytest.fixture(scope="module")
def brats_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-channel BraTS-regions model bundle."""
    return brats_bundle(tmp_path_factory.mktemp("bundle4"))


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1-channel, 2-class model bundle (MONAI U-Net, random weights)."""
    return single_channel_bundle(tmp_path_factory.mktemp("bundle1"), network=UNET_1CH)

"""Fixtures for the evaluation tests: tiny synthetic truth sets and the CLI entry point."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

BRATS_SHAPE = (32, 32, 24)


@pytest.fixture(scope="session")
def brats_truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic BraTS 2021 cases of 32 x 32 x 24 (read-only: copy before changing)."""
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("brats_truth")
    write_brats_dataset(out, cases=4, shape=BRATS_SHAPE, seed=0, fmt="brats2021")
    return out


@pytest.fixture(scope="session")
def isic_truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic ISIC 2018 images of 64 x 48 with their masks."""
    from medseg.data.synth.isic import write_isic_dataset

    out = tmp_path_factory.mktemp("isic_truth")
    write_isic_dataset(out, cases=3, size=(64, 48), seed=5)
    return out


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str]], int]:
    """``medseg.cli.main.main`` with the ``evaluate`` subcommand registered."""
    from medseg.cli import main as cli_main

    if "medseg.cli.evaluate_cmd" not in cli_main.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli_main, "SUBCOMMAND_MODULES",
                            (*cli_main.SUBCOMMAND_MODULES, "medseg.cli.evaluate_cmd"))
    return lambda argv: cli_main.main(list(argv))

"""Fixtures for inference tests: tiny output bundles and the CLI with ``infer`` registered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from infer_helpers import make_bundle, multiclass_pointwise

import medseg.cli.main as cli_main
from medseg.networks import build_network


@pytest.fixture(scope="session")
def multiclass_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pointwise 1 channel -> classes 0/1/4 (see :func:`infer_helpers.multiclass_pointwise`)."""
    return multiclass_pointwise(tmp_path_factory.mktemp("bundle_mc"))


@pytest.fixture(scope="session")
def unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real network (attention_unet3d, features 4/8/16), 1 channel -> 2 classes, random weights."""
    network = {"name": "attention_unet3d",
               "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 8, 16]}}
    torch.manual_seed(0)
    model = build_network(network["name"], **network["kwargs"])
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "label_values": [0, 1], "channels": ["image"]}
    return make_bundle(tmp_path_factory.mktemp("bundle_unet"), network, model.state_dict(), convention="toy",
                       channels=["image"], preprocessing=prep)


@pytest.fixture
def infer_cli(monkeypatch: pytest.MonkeyPatch):
    """``medseg.cli.main.main(["infer", ...])`` with the infer subcommand registered, without a progress bar."""
    if "medseg.cli.infer_cmd" not in cli_main.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli_main, "SUBCOMMAND_MODULES", (*cli_main.SUBCOMMAND_MODULES, "medseg.cli.infer_cmd"))

    def run(*argv: str | Path) -> int:
        return cli_main.main(["infer", *[str(a) for a in argv], "--no-progress"])

    return run

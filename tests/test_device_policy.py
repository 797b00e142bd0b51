"""One device-and-precision policy for training, 3D and 2D inference (issue #17)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from medseg.engine.fastpath import amp_kwargs
from medseg.errors import MedsegError
from medseg.utils.device import autocast, autocast_dtype, resolve_device

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"


def test_no_autocast_on_the_cpu_and_devices_resolve():
    assert autocast_dtype("cpu") is None
    with autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    assert amp_kwargs("cpu") == {"dtype": torch.float16}  # a valid type for MONAI; never used on the CPU
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MedsegError, match="must be auto, cpu or cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(MedsegError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_inference_autocast_alike_on_a_gpu():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("cuda") == expected == amp_kwargs("cuda")["dtype"]
    with autocast("cuda"):
        assert torch.get_autocast_dtype("cuda") == expected


def test_only_the_policy_module_picks_a_precision():
    """No other module calls torch.autocast or chooses bfloat16/float16 for autocast itself."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "utils/device.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.autocast\(|is_bf16_supported\(", line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == [], found

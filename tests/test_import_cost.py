"""The command line starts without the heavy libraries: help and argument errors import no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "mlflow", "itk", "SimpleITK", "matplotlib", "highdicom", "scipy", "nibabel")


def _imported(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert names, result.stderr[-500:]  # -X importtime did report
    return names


@pytest.mark.parametrize("args", [("-c", "import medseg.cli.main"), ("-m", "medseg", "--help"),
                                  ("-m", "medseg", "infer", "--help"), ("-m", "medseg", "train", "--help"),
                                  ("-m", "medseg", "evaluate", "--help"), ("-m", "medseg", "plan", "--help")],
                         ids=["import", "help", "infer-help", "train-help", "evaluate-help", "plan-help"])
def test_no_heavy_library_is_imported(args):
    assert not _imported(*args) & set(HEAVY)

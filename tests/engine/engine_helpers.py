"""Shared helpers for the training tests: tiny data, a tiny network, deterministic CPU runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_attention_unet3d"

# A few seconds per epoch on 2 CPU cores: 3 training cases of 32x32x24, 16^3 patches.
TINY = {
    "max_epochs": "3",
    "roi_size": "[16,16,16]",
    "num_workers": "0",
    "deterministic": "true",
    "network_spec#kwargs#features": "[4,8,16]",
    "sw_batch_size": "4",
    "learning_rate": "0.003",
    "warmup_epochs": "1",
}


def set_args(values: dict[str, str]) -> list[str]:
    """``--set k=v`` arguments for ``medseg train``."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


def medseg(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``medseg`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "medseg", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)

"""Load: one ``medseg infer`` process segments 200 cases without its memory growing.

The host RSS of the real CLI process (``VmRSS`` in ``/proc/PID/status``) is sampled while it
works; from the 20th case written to the end it may not rise more than 10% above its value
at the 20th case. Cases are 16^3 to keep the test short; a leak of whole cases (the input,
the network's activations, the writer's buffers) would still break the bound.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rel_helpers import files_under, single_channel_bundle

CASES = 200
WARM_UP = 20
# MONAI's UNet, two levels, batch norm: ~10 ms a case on the CPU, so the test measures the
# pipeline (reading, preprocessing, sliding window, inversion, writing), not the network.
NETWORK = {
    "name": "unet",
    "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
               "num_res_units": 0, "norm": "batch"},
}


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def test_200_cases_in_one_process_without_memory_growth(tmp_path):
    bundle = single_channel_bundle(tmp_path / "bundle", network=NETWORK)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([1.2, 0.9, 1.5, 1.0])
    for i in range(CASES):
        data = rng.integers(0, 800, (16, 16, 16), dtype=np.int16)
        nib.save(nib.Nifti1Image(data, affine), inputs / f"case_{i:03d}.nii.gz")
    out = tmp_path / "out"
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    # Files, not pipes: a full pipe would block the process.
    with open(log_out, "w") as stdout_file, open(log_err, "w") as stderr_file:
        command = [sys.executable, "-m", "medseg", "infer", str(bundle), "--input", str(inputs),
                   "--output", str(out), "--no-progress"]
        process = subprocess.Popen(command, stdout=stdout_file, stderr=stderr_file)
    baseline, peak, written = None, 0, 0
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:  # sampled every 20 ms
        written = len(list(out.glob("*.nii.gz"))) if out.is_dir() else 0
        rss = _rss_kb(process.pid)
        if rss is not None and written >= WARM_UP:
            if baseline is None:
                baseline = rss
            peak = max(peak, rss)
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=60)
    stdout, stderr = log_out.read_text(), log_err.read_text()
    assert process.returncode == 0, stderr[-3000:]
    assert f"{CASES} case(s)" in stdout and f"{CASES} written" in stdout
    assert files_under(out) == {f"case_{i:03d}.nii.gz" for i in range(CASES)}
    assert baseline is not None and peak > 0, "the process was never sampled after the warm-up"
    assert peak <= 1.10 * baseline, f"RSS grew from {baseline / 1024:.0f} MB to {peak / 1024:.0f} MB"
    print(f"RSS after {WARM_UP} cases {baseline / 1024:.0f} MB, peak after {peak / 1024:.0f} MB")

"""A full disk, simulated with a tiny ``RLIMIT_FSIZE`` in a real ``medseg`` process.

There is no root or tmpfs to fill in CI, but a file-size limit fails ``write()`` the same way
a full disk does, in the writer's own code: with SIGXFSZ ignored, a write past the limit
raises ``OSError(EFBIG)`` (a full disk raises ``ENOSPC``; medseg treats both, and
``EDQUOT``, alike). Each command must print one clear line naming the file it could not
write, leave no partial file behind, and (``infer``) still try every case.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from rel_helpers import brats_bundle, files_under
from tiny_training import BUNDLE, set_args

NO_SPACE = "cannot be written (File too large: the disk, the quota or the file-size limit is full)"


def _medseg_with_file_limit(limit: int, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    def limit_file_size() -> None:  # runs in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size)


def test_infer_reports_every_case_and_leaves_no_partial_file(tiny_brats_rel, tmp_path):
    bundle = brats_bundle(tmp_path / "bundle")
    out = tmp_path / "preds"
    result = _medseg_with_file_limit(200, "infer", bundle, "--input", tiny_brats_rel, "--output", out,
                                     "--no-progress", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "4 case(s)" in result.stdout and "0 written" in result.stdout and "4 failed" in result.stdout
    for i in range(4):  # every case was tried, and each message names the file it could not write
        assert f"{out / f'BraTS2021_{i:05d}.nii.gz'}: {NO_SPACE}" in result.stdout, result.stdout
    assert files_under(out) == set()  # not even a hidden temporary file


def test_train_stops_with_one_line_and_no_partial_checkpoint(tiny_brats_rel, tmp_path):
    # 100 kB: the configs and the datalist fit, the first checkpoint (~110 kB) does not.
    out = tmp_path / "run"
    train = {"max_epochs": "1", "roi_size": "[16,16,16]", "num_workers": "0",
             "network_spec#kwargs#features": "[4,8,16]"}
    result = _medseg_with_file_limit(100_000, "train", BUNDLE, "--data", tiny_brats_rel, "--output", out,
                                     *set_args(train), "--no-tracking", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("medseg ")]
    assert lines == [f"medseg train: error: {out / 'models' / 'model.pt'}: {NO_SPACE}; "
                     "nothing was written under that name"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not [f for f in files_under(out) if f.startswith("models/")]  # no checkpoint, whole or partial


def test_data_list_leaves_no_partial_datalist(tiny_brats_rel, tmp_path):
    target = tmp_path / "lists" / "datalist.json"
    result = _medseg_with_file_limit(10, "data", "list", tiny_brats_rel, "--out", target, "--folds", "2",
                                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    expected = f"medseg data: error: {target}: {NO_SPACE}; nothing was written under that name"
    assert result.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in result.stderr
    assert files_under(tmp_path / "lists") == set()

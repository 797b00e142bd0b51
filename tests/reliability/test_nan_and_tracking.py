"""NaN loss and MLflow faults in a real training process.

* A NaN loss stops the run with one line naming the epoch, the iteration and the case ids of
  the batch; the last good checkpoint is untouched; the MLflow run is marked FAILED with
  the reason.
* An unreachable tracking server fails the run in seconds, before anything is written, or
  (``--tracking-fallback local``) the run uses the local MLflow store.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from mlflow import MlflowClient
from rel_helpers import files_under
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import load_checkpoint
from medseg.cli.main import main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overflowing_copy(src: Path, dst: Path) -> Path:
    """A copy of the set whose FLAIR voxels are 3e38: finite (so ``data check`` passes), but their sum
    overflows float32, so intensity normalisation turns every voxel into NaN, like a header with a
    wrong scale factor would."""
    shutil.copytree(src, dst)
    for flair in dst.glob("*/*_flair.nii.gz"):
        img = nib.load(flair)
        data = np.asarray(img.dataobj).astype(np.float32)
        data[data != 0] = 3e38
        nib.save(nib.Nifti1Image(data, img.affine), flair)
    return dst


def test_nan_loss_stops_keeps_the_checkpoint_and_fails_the_mlflow_run(tiny_brats_rel, tmp_path, unused_port):
    out = tmp_path / "run"
    unreachable = f"http://127.0.0.1:{unused_port}"
    # Epoch 1 on good data; the server is down, so the run falls back to the local store runs/mlflow.db.
    first = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out,
                   *set_args({**TINY, "max_epochs": "1"}), "--tracking-uri", unreachable,
                   "--tracking-fallback", "local", cwd=tmp_path)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert f"{unreachable}" in log and "the run will use the local MLflow store" in log
    store = tmp_path / "runs" / "mlflow.db"
    assert store.is_file()
    last, best = out / "models" / "last.pt", out / "models" / "model.pt"
    hashes = {p: _sha(p) for p in (last, best)}
    run_id = load_checkpoint(last)["extra"]["mlflow_run_id"]

    # Epoch 2 on data that make the loss NaN at once.
    bad = _overflowing_copy(tiny_brats_rel, tmp_path / "overflowing data")
    assert main(["data", "check", str(bad)]) == 0  # finite voxels: no check can see this coming
    second = medseg("train", BUNDLE, "--resume", out, "--data", bad, "--set", "max_epochs=2", cwd=tmp_path)
    assert second.returncode == 2, (second.stdout + second.stderr)[-3000:]
    assert "Traceback" not in second.stderr
    lines = [line for line in second.stderr.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1, second.stderr[-3000:]
    assert re.fullmatch(r"medseg train: error: loss is nan at epoch 2, iteration 4; cases in the batch: "
                        r"BraTS2021_0000\d\. The last good checkpoint is kept\.", lines[0]), lines[0]
    # The last good state is untouched, byte for byte, and nothing half-written is left.
    assert {p: _sha(p) for p in (last, best)} == hashes
    checkpoints = sorted(f for f in files_under(out) if f.startswith("models/"))
    assert checkpoints == ["models/last.pt", "models/model.pt"]
    run = MlflowClient(f"sqlite:///{store}").get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["medseg.failure_reason"] == "NonFiniteLossError: " + lines[0].split("error: ", 1)[1]


def test_unreachable_tracking_server_fails_fast_before_writing(tiny_brats_rel, tmp_path, unused_port, capsys,
                                                              isolated_global_state, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    start = time.monotonic()
    code = main(["train", str(BUNDLE), "--data", str(tiny_brats_rel), "--output", str(out),
                 "--tracking-uri", f"http://127.0.0.1:{unused_port}"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 30, (code, elapsed)
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1 and f"127.0.0.1:{unused_port}" in lines[0]
    assert "--tracking-fallback local" in lines[0]
    assert "Traceback" not in err
    assert not out.exists() or files_under(out) == set()
    assert not (tmp_path / "runs").exists()  # no local store was created either

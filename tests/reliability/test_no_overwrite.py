"""Issue 14, items 7 and 9: no command replaces a file it did not create, and two runs never share a folder.

Each attack of the red team, tried through the real CLI; afterwards the user's files are byte for byte
what they were.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rel_helpers import brats_bundle
from tiny_training import BUNDLE, medseg

from medseg.engine.data import default_output_dir
from medseg.engine.outputs import LOCK_FILE, claim_output_dir, release_output_dir
from medseg.errors import MedsegError


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(result, *needles: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_a_folder_in_use_by_another_run_is_refused(tiny_brats_rel, tmp_path):
    """Two ``medseg train`` with the same --output used to both run and mix their files (and MLflow artifacts)."""
    out = tmp_path / "shared out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from medseg.engine.outputs import claim_output_dir
            claim_output_dir({str(out)!r})
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out, "--no-tracking", cwd=tmp_path)
        _refused(result, f"{out}: in use by another medseg run")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process: nothing stale blocks the folder afterwards.
    claim_output_dir(out)
    release_output_dir(out)


def test_default_output_folders_are_unique_and_agree_across_torchrun_ranks(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    names = {default_output_dir(BUNDLE) for _ in range(200)}  # all within the same second
    assert len(names) == 200
    # Under torchrun each rank computes the name itself; the rendezvous id they share makes them agree.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv-1234")
    suffix = "-" + hashlib.sha256(b"rdzv-1234").hexdigest()[:10]
    assert all(default_output_dir(BUNDLE).endswith(suffix) for _ in range(5))


def test_a_finished_run_the_source_bundle_and_a_user_folder_are_never_overwritten(tiny_brats_rel, tmp_path):
    finished = brats_bundle(tmp_path / "finished run")
    (finished / "configs" / "train.json").write_text("{}")
    before = _digests(finished)
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", finished, "--no-tracking", cwd=tmp_path)
    _refused(result, "--output already holds", "--resume", "--overwrite")
    assert _digests(finished) == before

    source_before = _digests(BUNDLE)
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", BUNDLE, "--no-tracking", cwd=tmp_path)
    _refused(result, f"--output {BUNDLE} is the source bundle")
    assert _digests(BUNDLE) == source_before

    mine = tmp_path / "my folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("years of work")
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", mine, "--overwrite", "--no-tracking",
                    cwd=tmp_path)
    _refused(result, "--overwrite replaces only an earlier medseg output bundle")
    assert (mine / "notes.txt").read_text() == "years of work"

    result = medseg("train", BUNDLE, "--resume", finished, "--output", tmp_path / "elsewhere", cwd=tmp_path)
    _refused(result, "differs from --resume")


def test_overwrite_replaces_an_earlier_output_bundle_only_when_asked(tmp_path):
    earlier = brats_bundle(tmp_path / "earlier")
    (earlier / "configs" / "train.json").write_text("{}")
    with pytest.raises(MedsegError, match="already holds"):
        claim_output_dir(earlier)
    assert (earlier / "models" / "model.pt").is_file()
    claim_output_dir(earlier, overwrite=True)
    try:
        assert sorted(p.name for p in earlier.iterdir()) == [LOCK_FILE]
    finally:
        release_output_dir(earlier)


def test_data_list_and_synth_refuse_to_replace_files(tmp_path):
    msd = tmp_path / "msd"
    result = medseg("data", "synth", "brats", "--out", msd, "--cases", "2", "--shape", "16", "16", "16",
                    "--format", "msd", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = _digests(msd)
    result = medseg("data", "list", msd, "--out", msd / "dataset.json", "--overwrite", cwd=tmp_path)
    _refused(result, "is the dataset's own dataset.json")
    result = medseg("data", "synth", "brats", "--out", msd, "--cases", "2", "--shape", "16", "16", "16",
                    "--seed", "9", "--format", "msd", cwd=tmp_path)
    _refused(result, "--out already holds", "--overwrite")
    assert _digests(msd) == before

    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"mine": true}')
    result = medseg("data", "list", msd, "--out", datalist, cwd=tmp_path)
    _refused(result, f"{datalist}: already exists", "--overwrite")
    assert datalist.read_text() == '{"mine": true}'
    result = medseg("data", "list", msd, "--out", datalist, "--overwrite", "--folds", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training" in json.loads(datalist.read_text())


def test_export_never_replaces_the_checkpoint_and_asks_before_replacing_an_export(tmp_path):
    bundle = brats_bundle(tmp_path / "b")
    meta = {"network_data_format": {"inputs": {"image": {"num_channels": 4, "spatial_shape": [16, 16, 16]}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    weights = bundle / "models" / "model.pt"
    before = weights.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = medseg("export", bundle, "--format", "onnx", "--out", weights, *extra, cwd=tmp_path)
        _refused(result, "--out is the checkpoint being exported")
        assert weights.read_bytes() == before
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"someone else's model")
    result = medseg("export", bundle, "--format", "onnx", "--out", mine, cwd=tmp_path)
    _refused(result, f"{mine}: already exists", "--overwrite")
    assert mine.read_bytes() == b"someone else's model"

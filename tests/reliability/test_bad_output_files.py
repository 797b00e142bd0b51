"""Outputs that cannot be written as asked: names longer than the file system allows, and the temporary
files a killed run leaves (issue #16, item 5). The kill runs ``python -m medseg`` in a child process."""


import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_helpers import (
    failed_lines,
    infer,
)
from rel_helpers import files_under, volume_file

# --- output names longer than the file system allows ------------------------------------------------------------


@pytest.fixture
def long_named(tmp_path: Path) -> dict[str, Path]:
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("the test names are sized for a 255-byte NAME_MAX")
    long = volume_file(tmp_path / "in" / ("é" * 120 + ".nii.gz"), 0)  # 240 + 7 = 247 bytes: legal
    assert len(os.fsencode(long.name)) == 247
    return {"long": long, "short": volume_file(tmp_path / "in" / "short.nii.gz", 1)}


def test_an_output_name_too_long_fails_the_case_before_the_network(long_named, ct_model, tmp_path, capsys,
                                                                   predictions):
    """With --save-prob the 247-byte input's ``_uncertainty.nii.gz`` would be 259 bytes: refused up front."""
    out_dir = tmp_path / "out"
    assert infer(ct_model, [long_named["long"], long_named["short"]], out_dir, "--save-prob") == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = failed_lines(out)
    assert len(failed) == 1 and str(long_named["long"]) in failed[0], out
    assert "output name too long" in failed[0] and "259-byte" in failed[0] and "255 bytes" in failed[0]
    assert files_under(out_dir) == {"short.nii.gz", "short_prob.nii.gz", "short_uncertainty.nii.gz"}
    assert len(predictions) == 1 and predictions[0].endswith("short.nii.gz"), predictions  # never on the long one


def test_a_legal_long_output_name_is_written(long_named, ct_model, tmp_path, capsys):
    """Without --save-prob the 247-byte mask name is legal: written (its temporary name is shortened to fit)."""
    out_dir = tmp_path / "out"
    assert infer(ct_model, [long_named["long"]], out_dir) == 0, capsys.readouterr().out
    assert files_under(out_dir) == {long_named["long"].name}


# --- temporary files of a killed run --------------------------------------------------------------------------

# The real CLI, SIGKILLed by itself at its first output rename: every temporary file of that case
# is complete and none is renamed, as after a kill at the worst moment.
_KILLED_AT_FIRST_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(src)).startswith(".") and str(dst).endswith(".nii.gz"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from medseg.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rerun_removes_the_temporary_files_of_a_killed_infer(ct_model, tmp_path):
    inputs = [volume_file(tmp_path / "in" / f"case{i}.nii.gz", i) for i in range(2)]
    out_dir = tmp_path / "out"
    args = ["infer", str(ct_model), "--input", *map(str, inputs), "--output", str(out_dir), "--no-progress",
            "--save-prob"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_FIRST_RENAME, *args], capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = sorted(p.name for p in out_dir.iterdir())
    assert len(left) == 3 and all(name.startswith(".case0") and name.endswith(".part.nii.gz") for name in left), left
    tag = re.search(r"\.(\d+)-([0-9a-f]{6})\.[a-z0-9_]{8}\.part\.nii\.gz$", left[0])
    assert tag is not None and int(tag[1]) != os.getpid(), left
    # Not medseg's to remove: a user's hidden file, and a temporary file of a process that still runs (this one).
    user_file = out_dir / ".notes.part.txt"
    user_file.write_text("mine")
    live = out_dir / f".case9.nii.gz.{os.getpid()}-{tag[2]}.abcd1234.part.nii.gz"
    live.write_bytes(b"being written")

    rerun = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=300,
                           env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in left:
        assert f"removed {out_dir / name}, left by an interrupted run" in rerun.stderr
    assert files_under(out_dir) == {f"case{i}{s}.nii.gz" for i in range(2) for s in ("", "_prob", "_uncertainty")} \
        | {user_file.name, live.name}
    assert user_file.read_text() == "mine" and live.read_bytes() == b"being written"


def test_the_temporary_file_pattern_is_medsegs_own(tmp_path):
    """Only ``.<target>.<pid>-<host>.<8 random>.part<ext>`` files of dead processes of this host (or the
    untagged names of older medseg versions) are removed; any other ``.part`` name stays."""
    from medseg.utils import atomic

    host = atomic._host_tag()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    removable = [f".scan.nii.gz.{dead}-{host}.k2j4_x9q.part.nii.gz", ".last.pt.abcd1234.part.pt",
                 ".model.onnx.zz99yy88.part.onnx"]
    kept = [f".scan.nii.gz.{os.getpid()}-{host}.k2j4_x9q.part.nii.gz",  # this process: still writing
            f".scan.nii.gz.{dead}-{'0' * 6 if host != '0' * 6 else '1' * 6}.k2j4_x9q.part.nii.gz",  # another host
            ".notes.part.txt", ".thesis.partial.tex", ".draft.part1.nii.gz", "scan.nii.gz.abcd1234.part.nii.gz",
            ".a.nii.gz.abcd1234.part.png"]
    for name in removable + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = atomic.remove_partial_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(removable)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_temporary_names_fit_name_max(tmp_path, monkeypatch):
    """A 254-byte target gets a temporary name of at most 255 bytes that keeps its extension."""
    from medseg.utils.atomic import atomic_write_bytes

    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("sized for a 255-byte NAME_MAX")
    target = tmp_path / ("日" * 82 + "x.nii.gz")  # 246 + 1 + 7 = 254 bytes
    seen = []
    real = os.replace

    def spy(src, dst, *args, **kwargs):
        seen.append(Path(src).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert len(os.fsencode(seen[0])) <= 255 and seen[0].endswith(".part.nii.gz") and seen[0].startswith(".日")

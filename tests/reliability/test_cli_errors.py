"""Issue 16, item 6: a bug in medseg shows its traceback and says so; only user errors are one line."""

from __future__ import annotations

from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.cli.main import BUG_REPORT, main
from medseg.errors import InvalidValueError, MedsegError


def test_a_programming_error_prints_its_traceback_and_says_it_is_a_bug(tmp_path, monkeypatch, capsys):
    """A bare ValueError from medseg's own code used to print as one line, as if the input were wrong."""
    import medseg.data.checks

    def broken(*args, **kwargs):
        return {}["channel_names"]  # a real KeyError from a real bug

    monkeypatch.setattr(medseg.data.checks, "check_dataset", broken)
    assert main(["data", "check", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'channel_names'" in err
    assert err.rstrip().endswith(f"medseg data: {BUG_REPORT}")

    def bare_value_error(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")  # numpy's words: not the user's fault

    monkeypatch.setattr(medseg.data.checks, "check_dataset", bare_value_error)
    assert main(["data", "check", str(tmp_path)]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_medseg_argument_checks_stay_one_line(tmp_path, capsys):
    assert issubclass(InvalidValueError, (MedsegError, ValueError))
    assert main(["data", "synth", "brats", "--out", str(tmp_path / "s"), "--shape", "8", "8", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "at least 16 voxels" in err


def test_a_bad_config_value_is_the_users_error(tiny_brats_rel, tmp_path):
    """A value that fails inside MONAI's config parser comes from the user's --set: one line, not a bug."""
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", tmp_path / "o", "--no-tracking",
                    *set_args({**TINY, "max_epochs": "1"}), "--set", "sw_overlap=1.5", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("medseg train:")]
    assert len(errors) == 1 and "overlap" in errors[0], result.stderr  # MONAI's SlidingWindowInferer's own check
    assert "Traceback" not in result.stderr and "bug" not in result.stderr


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = medseg("--debug", "data", "synth", "brats", "--out", tmp_path / "s", "--shape", "8", "8", "8",
                    cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "InvalidValueError" in result.stderr


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """``medseg ... | head``: the reader is gone before medseg writes; no traceback, no "bug in medseg", status 141."""
    import os
    import subprocess
    import sys

    # Unbuffered, so the first print meets the closed pipe (buffered, it would meet it at exit).
    process = subprocess.Popen([sys.executable, "-m", "medseg", "data", "synth", "isic", "--out", "isic", "--cases", "1",
                                "--shape", "64", "48"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.stdout.close()  # no reader: the first write fails with EPIPE (the interpreter takes a while to start)
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in stderr and "bug in medseg" not in stderr and "BrokenPipe" not in stderr, stderr
    assert process.returncode == 141

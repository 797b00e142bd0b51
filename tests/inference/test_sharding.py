"""Sharding an archive: ``--num-parts N --part-id K``, and ``torchrun`` with one share per rank and one summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from infer_helpers import random_volume, save_volume

from medseg.errors import MedsegError
from medseg.inference import InferenceOptions
from medseg.inference.options import check_options
from medseg.inference.shard import select_part

CASES = [f"case{i:02d}" for i in range(7)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    for i, name in enumerate(CASES):
        save_volume(folder / f"{name}.nii.gz", random_volume(i, (12, 10, 8)))
    return folder


def _medseg(*args: str | Path, cwd: Path, prefix: tuple[str, ...] = ("-m", "medseg")) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *prefix, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_parts_are_disjoint_deterministic_and_cover_every_case():
    class Case:
        def __init__(self, case_id: str) -> None:
            self.case_id = case_id

    cases = [Case(c) for c in reversed(CASES)]
    parts = [[c.case_id for c in select_part(cases, 3, k)] for k in range(3)]
    assert parts == [["case00", "case03", "case06"], ["case01", "case04"], ["case02", "case05"]]
    assert [c.case_id for c in select_part(cases[::-1], 3, 1)] == parts[1]  # input order does not matter
    assert select_part(cases, 10, 9) == []


@pytest.mark.parametrize(("parts", "part", "message"), [(0, 0, "--num-parts must be an integer >= 1"),
                                                        (2, 2, r"--part-id must be in \[0, 2\)"),
                                                        (2, -1, r"--part-id must be in \[0, 2\)")])
def test_bad_parts_are_refused(parts, part, message):
    with pytest.raises(MedsegError, match=message):
        check_options(InferenceOptions(num_parts=parts, part_id=part))


def test_two_parts_by_hand_segment_every_case_once(unet_bundle, archive, tmp_path):
    out = tmp_path / "out"
    written = []
    for part in (0, 1):
        result = _medseg("infer", unet_bundle, "--input", archive, "--output", out, "--device", "cpu",
                         "--num-parts", "2", "--part-id", str(part), "--no-progress", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [line.split() for line in result.stdout.splitlines()]
        written.append({row[0] for row in rows if len(row) > 1 and row[0] in CASES and row[1] == "written"})
    assert written[0].isdisjoint(written[1]) and written[0] | written[1] == set(CASES)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]



def test_a_part_id_needs_its_number_of_parts(unet_bundle, archive, tmp_path, infer_cli, capsys):
    assert infer_cli(unet_bundle, "--input", archive, "--output", tmp_path / "x", "--part-id", "1") == 2
    assert "--part-id needs --num-parts" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_torchrun_gives_each_rank_a_share_and_one_summary(unet_bundle, archive, tmp_path):
    out = tmp_path / "out"
    result = _medseg("infer", unet_bundle, "--input", archive, "--output", out, "--device", "cpu", "--no-progress",
                     cwd=tmp_path, prefix=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                           "-m", "medseg"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    # One merged summary, printed once, of all 7 cases.
    assert result.stdout.count("case(s) ->") == 1 and "7 case(s) ->" in result.stdout, result.stdout
    for name in CASES:
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == (12, 10, 8) and np.allclose(mask.affine, nib.load(archive / f"{name}.nii.gz").affine)

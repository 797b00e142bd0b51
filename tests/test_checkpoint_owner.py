"""The checkpoint format has one owner, ``medseg/checkpoint/`` (issue #17): no other module reads its keys."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"
OWNER = PACKAGE / "checkpoint"
# A loaded checkpoint indexed or .get()-ed, or a key only the format uses, spelled out.
ACCESS = re.compile(r"\b(ckpt|checkpoint|loaded|payload)(\[|\.get\()")
KEYS = re.compile(r"""["'](optimizer_state|scheduler_state|scaler_state|rng_state|format_version|model_state|"""
                  r"""medseg-checkpoint)["']|\[WEIGHTS_KEY\]""")


def offenders(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if OWNER in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ACCESS.search(line) or KEYS.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_only_the_checkpoint_package_reads_checkpoint_keys():
    assert offenders(PACKAGE) == []


def test_the_check_finds_a_key_read_elsewhere(tmp_path):
    (tmp_path / "reader.py").write_text('def f(ckpt):\n    return ckpt.get("network")\n')
    (tmp_path / "state.py").write_text('STATE = "optimizer_state"\n')
    assert [line.split(":")[0] for line in offenders(tmp_path)] == ["reader.py", "state.py"]

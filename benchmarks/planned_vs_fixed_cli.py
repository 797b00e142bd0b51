"""``planned_vs_fixed.py``'s calls of the medseg CLI, with the machine's CPU shares during each.

Every call is a fresh ``python -m medseg`` process from the repository root with the thread
counts pinned; :data:`CALLS` records each one for the results JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import Timer

REPO = Path(__file__).resolve().parent.parent


def subprocess_env(threads: int) -> dict[str, str]:
    """The environment of every CLI call: this one with the thread counts pinned."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def cpu_times() -> list[int]:
    """The machine's CPU jiffies from ``/proc/stat`` (user nice system idle iowait irq softirq steal), or []."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return []


#: Per CLI call: its log name, wall seconds and the machine's CPU shares meanwhile (niced: other processes
#: at a positive nice level, as this benchmark runs at 0; steal: taken by the hypervisor).
CALLS: list[dict[str, Any]] = []


def medseg(args: argparse.Namespace, cli: list[str], log: Path) -> float:
    """Run ``python -m medseg CLI...`` (stdout and stderr to ``log``); return its wall seconds; raise on failure."""
    command = [sys.executable, "-m", "medseg", *cli]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(command[1:]), flush=True)
    before = cpu_times()
    with log.open("w") as stream, Timer() as t:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        rc = subprocess.run(command, check=False, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO,
                            env=subprocess_env(args.threads)).returncode
    after = cpu_times()
    call: dict[str, Any] = {"log": str(log.relative_to(args.work)), "wall_s": round(t.seconds, 2),
                            "loadavg_1min_end": os.getloadavg()[0]}
    if before and after and sum(after) > sum(before):
        delta = [b - a for a, b in zip(before, after)]
        call.update(busy_share=round(1 - (delta[3] + delta[4]) / sum(delta), 3),
                    niced_share=round(delta[1] / sum(delta), 3), steal_share=round(delta[7] / sum(delta), 4))
    CALLS.append(call)
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"exit status {rc}: {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    return t.seconds


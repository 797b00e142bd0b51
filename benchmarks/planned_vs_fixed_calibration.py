"""``planned_vs_fixed.py``'s calibration: the epochs that fill the training budget, from ``medseg train`` logs.

The speed comes from the fastest periods between epoch-end lines (other work on the host only
slows epochs down) and the fixed cost from the smallest seen; ``planned_vs_fixed.py``'s docstring
says why.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_EPOCHS = 3
EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - medseg\.train - INFO - epoch (\d+)/(\d+) .*?"
                        r"([\d.]+) s\s*$")
VALIDATION_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - medseg\.train - INFO - validation (\d+)\s+"
                             r"val_mean_dice ([-\d.naN]+)")


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_log(log: Path) -> dict[str, Any]:
    """Epoch and validation lines of a ``medseg train`` log: seconds, timestamps, val_mean_dice."""
    epochs, validations = {}, {}
    for line in log.read_text().splitlines():
        if m := EPOCH_LINE.match(line):
            epochs[int(m[2])] = {"at": _time(m[1]), "train_s": float(m[4])}
        elif m := VALIDATION_LINE.match(line):
            validations[int(m[2])] = {"at": _time(m[1]), "val_mean_dice": float(m[3])}
    if not epochs:
        raise RuntimeError(f"{log}: no epoch lines (the log format of medseg train changed?)")
    dices = [v["val_mean_dice"] for v in validations.values()]
    return {"epochs": epochs, "validations": validations, "epochs_run": max(epochs),
            "train_seconds_sum": sum(e["train_s"] for e in epochs.values()),
            "best_val_mean_dice": max(dices) if dices else None}


def epoch_rate(log: Path, wall: float) -> dict[str, Any]:
    """Seconds per epoch and fixed cost of one ``medseg train`` run, as on an undisturbed machine.

    The periods are the times between consecutive epoch-end lines (one epoch of training, its
    validation and the handlers). Other work on the host only slows epochs down, so the seconds
    per epoch are the fastest period (2 or 3 periods) or the 25th percentile (4 or more), and the
    fixed cost (start-up, caching, the first epoch's warm-up, the final writing) is the wall time
    less the periods measured and one undisturbed period.
    """
    parsed = parse_log(log)
    ends = [parsed["epochs"][i]["at"] for i in sorted(parsed["epochs"])]
    if len(ends) < 3:
        raise RuntimeError(f"{log}: measuring the speed needs 3 epochs or more")
    periods = np.diff(ends)
    period = float(np.quantile(periods, 0.25) if len(periods) >= 4 else periods.min())
    return {"log": log.name, "wall_s": wall, "epochs": len(ends), "seconds_per_epoch": period,
            "median_period_s": float(np.median(periods)), "slow_epochs": int((periods > 1.25 * period).sum()),
            "fixed_cost_s": max(0.0, wall - float(periods.sum()) - period)}


def epochs_for(budget: float, rates: list[dict[str, Any]]) -> dict[str, Any]:
    """The epochs that fill ``budget`` at the measured speed: the rate of the longest run, the smallest fixed cost."""
    longest = max(enumerate(rates), key=lambda item: (item[1]["epochs"], item[0]))[1]
    fixed = min(r["fixed_cost_s"] for r in rates)
    epochs = max(3, math.floor((budget - fixed) / longest["seconds_per_epoch"]))
    return {"max_epochs": epochs, "seconds_per_epoch": longest["seconds_per_epoch"], "fixed_cost_s": fixed,
            "expected_wall_s": fixed + epochs * longest["seconds_per_epoch"]}


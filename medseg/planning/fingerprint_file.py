"""``fingerprint.json``: written atomically, read back and checked (it may come from elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.errors import DataError, InvalidValueError, MedsegError
from medseg.utils.atomic import atomic_write_text

__all__ = ["FINGERPRINT_FORMAT", "MAX_FINGERPRINT_BYTES", "read_fingerprint", "write_fingerprint"]

FINGERPRINT_FORMAT = "medseg-fingerprint/1"
#: Largest fingerprint file read: 1,000 cases take about 0.5 MB.
MAX_FINGERPRINT_BYTES = 64 * 2**20
_TOP_KEYS: dict[str, type] = {"format": str, "dataset": dict, "channels": list, "labels": dict, "cases": list,
                              "intensity": list, "samples_per_case": int, "seed": int}
_CASE_KEYS = ("id", "shape", "spacing", "orientation", "cropped_shape", "nonzero_fraction", "class_voxels")
_STAT_KEYS = ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5", "num_samples")



def _format_problem(fingerprint: Any) -> str | None:
    found = fingerprint.get("format") if isinstance(fingerprint, dict) else f"a JSON {type(fingerprint).__name__}"
    return None if found == FINGERPRINT_FORMAT else f"format {found!r}, expected {FINGERPRINT_FORMAT!r}"


def _problem(fingerprint: Any) -> str | None:
    """Why ``fingerprint`` (of the right format) is not a valid fingerprint, or ``None``."""
    for key, kind in _TOP_KEYS.items():
        if not isinstance(fingerprint.get(key), kind):
            return f"{key!r}: expected a {kind.__name__}, got {type(fingerprint.get(key)).__name__}"
    dataset, cases = fingerprint["dataset"], fingerprint["cases"]
    if dataset.get("num_cases") != len(cases) or not cases:
        return f"dataset.num_cases is {dataset.get('num_cases')!r} for {len(cases)} cases"
    if len(fingerprint["intensity"]) != len(fingerprint["channels"]):
        return f"{len(fingerprint['intensity'])} intensity entries for {len(fingerprint['channels'])} channels"
    for i, case in enumerate(cases):
        missing = [k for k in _CASE_KEYS if k not in case] if isinstance(case, dict) else list(_CASE_KEYS)
        if missing:
            return f"cases[{i}]: missing {missing}"
        for key in ("shape", "cropped_shape", "spacing"):
            value = case[key]
            if not (isinstance(value, list) and len(value) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
                return f"cases[{i}].{key}: expected 3 positive numbers, got {value!r}"
    for i, stats in enumerate(fingerprint["intensity"]):
        if not isinstance(stats, dict) or not all(isinstance(stats.get(k), (int, float)) for k in _STAT_KEYS):
            return f"intensity[{i}]: needs numbers {list(_STAT_KEYS)}"
    return None


def write_fingerprint(fingerprint: dict, path: Path, overwrite: bool = False) -> Path:
    """Write ``fingerprint`` (from :func:`extract_fingerprint`) to ``path`` as indented JSON, atomically.

    Args:
        overwrite: replace an existing file; without it an existing ``path`` is refused.

    Returns:
        ``path``.

    Raises:
        MedsegError: ``path`` exists and ``overwrite`` is False.
        InvalidValueError: ``fingerprint`` is not a valid fingerprint.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MedsegError(f"{path}: exists; not overwritten (pass overwrite=True, --overwrite, to replace it)")
    why = _format_problem(fingerprint) or _problem(fingerprint)
    if why:
        raise InvalidValueError(f"not a valid fingerprint: {why}")
    return atomic_write_text(path, json.dumps(fingerprint, indent=2, allow_nan=False) + "\n")


def read_fingerprint(path: Path) -> dict:
    """Read and check the fingerprint file ``path`` that :func:`write_fingerprint` wrote.

    Returns:
        The fingerprint, as :func:`extract_fingerprint` returns it.

    Raises:
        DataError: naming the file: missing, too large, not JSON, another format, or a key
            missing or of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file missing")
    size = path.stat().st_size
    if size > MAX_FINGERPRINT_BYTES:
        raise DataError(path, "too large", f"{size:,} bytes; a fingerprint is at most {MAX_FINGERPRINT_BYTES:,}")
    try:
        fingerprint = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, "unreadable fingerprint", str(err)) from err
    if why := _format_problem(fingerprint):
        raise DataError(path, "not a fingerprint", why)
    why = _problem(fingerprint)
    if why:
        raise DataError(path, "invalid fingerprint", why)
    return fingerprint

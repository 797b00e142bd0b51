"""Helpers shared by the evaluation tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI label map as uint8 and its affine."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.uint8), img.affine


def save_label(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Save a uint8 label map as NIfTI (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))
    return path


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """Read a ``metrics.csv`` back as a list of ``{column: text}`` rows."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

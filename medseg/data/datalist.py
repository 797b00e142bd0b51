"""MONAI decathlon-style datalists with deterministic cross-validation folds.

The JSON has MONAI's ``"training"`` (labelled) and ``"testing"`` (unlabelled) lists, so
:func:`monai.data.load_decathlon_datalist` reads it directly. Paths are relative to the
datalist's own folder, MONAI's default ``base_dir``. Dataset-level facts (layout, label
convention, channel order, regions) are stored beside the lists, so training and
inference never guess them.

Nothing identifying a patient is written: DICOM attributes among a case's details go
through :func:`medseg.privacy.scrub_phi` (``SeriesInstanceUID`` is written as its hash), and
paths have the patient identifiers of the case's headers replaced by ``<redacted>``. A DICOM
series folder named after the patient therefore appears with its name redacted, under the
case id that ``medseg infer`` gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medseg.data.cases import Case, DiscoveredDataset
from medseg.data.discovery import case_identifiers
from medseg.errors import InvalidValueError
from medseg.privacy import redact, scrub_phi
from medseg.utils.atomic import atomic_write_text

DATALIST_VERSION = 1
# Case details kept in memory only: "missing" is reported as a problem, "identifiers" redacts.
_NOT_WRITTEN = frozenset({"missing", "identifiers"})


def assign_folds(case_ids: list[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Assign each case to one of ``folds`` folds, deterministically.

    The ids are sorted, shuffled with a generator seeded by ``seed``, and dealt round
    robin, so folds differ in size by at most one and depend only on the set of ids and
    the seed, never on the order the files were listed in.

    Raises:
        ValueError: if ``folds`` < 1 or there are fewer labelled cases than folds.
    """
    if folds < 1:
        raise InvalidValueError(f"folds must be >= 1, got {folds}")
    ids = sorted(case_ids)
    if folds > 1 and len(ids) < folds:
        raise InvalidValueError(f"{folds} folds need at least {folds} labelled cases, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[j]: i % folds for i, j in enumerate(order)}


def _entry(case: Case, base: Path) -> dict[str, object]:
    identifiers = case.extra.get("identifiers") or ()

    def rel(p: Path) -> str:
        return redact(Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix(), identifiers)

    entry: dict[str, object] = {"case_id": case.case_id}
    entry["image"] = [rel(p) for p in case.images] if len(case.images) > 1 else rel(case.images[0])
    if case.label is not None:
        entry["label"] = rel(case.label)
    entry["has_label"] = case.label is not None
    entry.update(scrub_phi({key: value for key, value in case.extra.items() if key not in _NOT_WRITTEN}))
    return entry


def build_datalist(dataset: DiscoveredDataset, base: Path, folds: int = 5, seed: int = 0) -> dict:
    """Build the datalist dictionary for ``dataset`` with paths relative to ``base``."""
    labelled = [c for c in dataset.cases if c.has_label]
    fold_of = assign_folds([c.case_id for c in labelled], folds, seed) if labelled else {}
    conv = dataset.convention
    return {
        "medseg_datalist_version": DATALIST_VERSION,
        "name": redact(dataset.root.name, case_identifiers(dataset)),
        "root": redact(dataset.root.resolve().as_posix(), case_identifiers(dataset)),
        "layout": dataset.layout,
        "spatial_dims": dataset.spatial_dims,
        "label_convention": conv.name,
        "labels": {str(k): v for k, v in conv.labels.items()},
        "regions": {k: list(v) for k, v in conv.regions.items()},
        "channel_names": list(dataset.channel_names),
        "num_folds": folds,
        "seed": seed,
        "numTraining": len(labelled),
        "numTest": len(dataset.cases) - len(labelled),
        "training": [dict(_entry(c, base), fold=fold_of[c.case_id]) for c in labelled],
        "testing": [_entry(c, base) for c in dataset.cases if not c.has_label],
    }


def write_datalist(dataset: DiscoveredDataset, out: str | Path, folds: int = 5, seed: int = 0) -> Path:
    """Write the datalist JSON for ``dataset`` to ``out`` atomically and return its path."""
    out = Path(out)
    datalist = build_datalist(dataset, out.parent if str(out.parent) else Path("."), folds, seed)
    return atomic_write_text(out, json.dumps(datalist, indent=2) + "\n")


def split_fold(datalist: dict, fold: int) -> tuple[list[dict], list[dict]]:
    """Split the labelled cases of a datalist into (train, validation) for ``fold``."""
    folds = int(datalist.get("num_folds", 1))
    if not 0 <= fold < max(folds, 1):
        raise InvalidValueError(f"fold must be in [0, {folds - 1}], got {fold}")
    train = [e for e in datalist["training"] if e["fold"] != fold]
    val = [e for e in datalist["training"] if e["fold"] == fold]
    return train, val

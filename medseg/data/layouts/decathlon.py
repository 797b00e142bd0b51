"""Medical Segmentation Decathlon and nnU-Net-style ``imagesTr``/``labelsTr`` folders.

Two flavours of ``dataset.json`` are read:

* MSD: ``"modality": {"0": "FLAIR", ...}``, ``"labels": {"0": "background", ...}`` and a
  ``"training"`` list; images are 3D (one channel) or 4D (channels last).
* nnU-Net v2: ``"channel_names": {"0": "T1", ...}``, ``"labels": {"background": 0, ...}``
  and ``"file_ending"``; each channel is its own file, ``{case}_{XXXX}{file_ending}``.

MSD Task01_BrainTumour is recognised by its modalities and labels and gets the BraTS
region convention and the canonical channel order; every other dataset is ``generic``,
with plain multi-class labels read from ``dataset.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import (
    BRATS_CHANNELS,
    MSD_BRAIN,
    channel_permutation,
    label_value_problem,
    multiclass_convention,
)
from medseg.errors import DataError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\..+)$")


def is_decathlon_root(root: Path) -> bool:
    """True if ``root`` has a ``dataset.json`` and an ``imagesTr`` folder."""
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def read_dataset_json(root: Path) -> dict:
    """Read ``root/dataset.json``, with a clear error naming the file if it is not valid JSON."""
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, "unreadable dataset.json", str(err)) from err
    if not isinstance(meta, dict):
        raise DataError(path, "unreadable dataset.json", "top level is not an object")
    return meta


def _labels(meta: dict, path: Path) -> dict[int, str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(path, "missing labels", "dataset.json needs a non-empty 'labels' object")
    try:
        if all(isinstance(v, int) for v in raw.values()):  # nnU-Net v2: name -> value
            labels = {int(v): str(k) for k, v in raw.items()}
        else:
            labels = {int(k): str(v) for k, v in raw.items()}  # MSD: "value" -> name
    except (TypeError, ValueError) as err:
        raise DataError(path, "bad labels", f"labels must map names to integers: {raw}") from err
    why = label_value_problem(labels)
    if why:
        raise DataError(path, "label value out of range", why)
    return labels


def _channels(meta: dict) -> list[str]:
    raw = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    return [str(raw[k]) for k in sorted(raw, key=int)]


def _is_msd_brain(channels: list[str], labels: dict[int, str]) -> bool:
    try:
        channel_permutation(channels)
    except ValueError:
        return False
    names = {k: v.lower() for k, v in labels.items()}
    return len(names) == 4 and "edema" in names.get(1, "") and "enhancing" in names.get(3, "") \
        and "non" in names.get(2, "")


def _visible(folder: Path) -> list[Path]:
    # MSD tarballs carry AppleDouble "._" files beside every image: never treat them as data.
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _cases_per_channel_files(folder: Path, n_channels: int, ending: str) -> dict[str, list[Path]]:
    groups: dict[str, dict[int, Path]] = {}
    for path in _visible(folder):
        match = _CHANNEL_FILE.match(path.name)
        if match and match["ending"] == ending:
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    return {case: [chans.get(c, folder / f"{case}_{c:04d}{ending}") for c in range(n_channels)]
            for case, chans in groups.items()}


def discover_decathlon(root: Path) -> DiscoveredDataset:
    """Discover an MSD or nnU-Net-style dataset rooted at ``root``."""
    meta = read_dataset_json(root)
    json_path = root / "dataset.json"
    labels = _labels(meta, json_path)
    channels = _channels(meta)
    msd_brain = _is_msd_brain(channels, labels)
    dataset = DiscoveredDataset(
        root=root,
        layout="msd" if msd_brain else "generic",
        convention=MSD_BRAIN if msd_brain else multiclass_convention(str(meta.get("name", root.name)), labels),
        channel_names=BRATS_CHANNELS if msd_brain else tuple(channels),
        spatial_dims=3,
    )
    ending = str(meta.get("file_ending", ".nii.gz"))
    per_channel = "channel_names" in meta or any(_CHANNEL_FILE.match(p.name) for p in _visible(root / "imagesTr")[:1])
    extra = {"channel_permutation": channel_permutation(channels)} if msd_brain else {}
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if per_channel:
            groups = _cases_per_channel_files(folder, len(channels), ending)
        else:
            groups = {p.name[: -len(ending)] if p.name.endswith(ending) else p.stem: [p]
                      for p in _visible(folder) if p.name.endswith(ending)}
        for case_id, images in sorted(groups.items()):
            label = root / "labelsTr" / f"{case_id}{ending}" if labelled else None
            case = Case(case_id=case_id, images=images, label=label, extra=dict(extra, n_channels=len(channels)))
            for path in images:
                if not path.is_file():
                    dataset.problems.append(Problem(case_id, str(path), "missing modality",
                                                    f"channel file {path.name} not found"))
            if label is not None and not label.is_file():
                dataset.problems.append(Problem(case_id, str(label), "missing label",
                                                f"{split} case has no label in labelsTr"))
                case.label = None
            dataset.cases.append(case)
    if not dataset.cases:
        dataset.problems.append(Problem("", str(root / "imagesTr"), "no cases", f"no *{ending} images found"))
    return dataset

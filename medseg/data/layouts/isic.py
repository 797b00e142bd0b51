"""ISIC 2018 Task 1: ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_xxxxxxx.jpg`` with
``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_xxxxxxx_segmentation.png``."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.data.cases import Case, DiscoveredDataset
from medseg.data.conventions import ISIC

_INPUT_DIR = re.compile(r"^ISIC2018_Task1-2_(?P<split>\w+?)_Input$")
_IMAGE = re.compile(r"^(?P<case>ISIC_\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
ISIC_CHANNELS: tuple[str, ...] = ("R", "G", "B")


def find_isic_inputs(root: Path) -> list[Path]:
    """ISIC input folders directly in ``root`` or one level down (or ``root`` itself)."""
    candidates = [root] + [p for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    found = []
    for folder in candidates:
        if _INPUT_DIR.match(folder.name):
            found.append(folder)
        elif folder.is_dir():
            found.extend(p for p in sorted(folder.iterdir()) if p.is_dir() and _INPUT_DIR.match(p.name))
    return sorted(set(found))


def discover_isic(root: Path, input_dirs: list[Path]) -> DiscoveredDataset:
    """Pair every ISIC image with its ``_segmentation.png`` mask, when the ground-truth folder has one."""
    dataset = DiscoveredDataset(root=root, layout="isic", convention=ISIC, channel_names=ISIC_CHANNELS,
                                spatial_dims=2)
    for input_dir in input_dirs:
        split = _INPUT_DIR.match(input_dir.name)["split"]  # type: ignore[index]
        truth_dir = input_dir.parent / f"ISIC2018_Task1_{split}_GroundTruth"
        for path in sorted(input_dir.iterdir()):
            match = _IMAGE.match(path.name)
            if not match or not path.is_file():
                continue  # LICENSE, ATTRIBUTION.txt, "._" files
            mask = truth_dir / f"{match['case']}_segmentation.png"
            dataset.cases.append(Case(case_id=match["case"], images=[path], label=mask if mask.is_file() else None,
                                      extra={"split": split.lower()}))
    return dataset

"""``--rules brats2025``: the official BraTS evaluation package scores each case; medseg reports it.

The BraTS challenges of 2024 and 2025 are scored by ``brats-evaluation`` (PyPI
``BraTS-evaluation``, https://github.com/BraTS/BraTS_evaluation), built on ``panoptica``
(https://github.com/BrainLesion/panoptica). medseg calls it the way its README shows:
``Panoptica_Evaluator.load_from_config(config_path(NAME))`` with a bundled config, then
``evaluate_single_exam(prediction, reference, case, evaluator)`` per case, then the
package's own parser of that output (``parse_seg_results``; ``parse_mets_results`` for MET,
with its command-line defaults, 20 mm^3 and Dice 0.1), and renames the parsed columns to
medseg's (:data:`PARSED_COLUMNS`). Nothing is downloaded: the configs ship in the wheel.

=========  ==============  ==================================================================
challenge  config          regions (label values)
=========  ==============  ==================================================================
GLI, SSA   ``gli``         WT {1,2,3}, TC {1,3}, ET 3, RC 4, NETC 1, SNFH 2
PED        ``ped``         WT {1,2,3,4}, TC {1,2,3}, ET 1, NETC 2, CC 3, ED 4 (PED 2024+ labels)
MEN        ``MenPre``      WT {1,2,3}, TC {1,3}, ET 3
MET        ``mets``        WT {1,2,3}, TC {1,3}, ET 3, RC 4
=========  ==============  ==================================================================

``brats-evaluation`` 0.0.10 has no SSA config; SSA data carry the glioma labels, so medseg
uses ``gli``. What the package computes differs from the 2023 rules, and medseg reports it
as it is: lesions are matched one to one (maximum bipartite matching on Dice > 1e-6), with
no dilation and no volume threshold; the ``seg`` parser's lesion-wise Dice and HD95 are the
means over the *matched* lesions (panoptica's segmentation quality, ``sq_dsc``,
``sq_hd95``), so misses and false positives show in the TP/FN/FP counts only, and a region
with lesions but no match has a lesion-wise HD95 of ``inf``; HD95 and NSD are in voxels
(``evaluate_single_exam`` passes no spacing and panoptica's default is 1), while lesion
volumes use the header spacing. BraTS data are 1 mm isotropic, where the two agree.

The package is an optional extra, ``pip install 'medseg[brats]'``; it is imported only here,
when ``--rules brats2025`` is asked for.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg.errors import DataError, InvalidValueError, MedsegError

#: The optional extra that installs the package.
EXTRA: str = "brats"
#: Challenge -> the bundled config of ``brats-evaluation`` that scores it.
OFFICIAL_CONFIGS: dict[str, str] = {"GLI": "gli", "SSA": "gli", "PED": "ped", "MEN": "MenPre", "MET": "mets"}
#: ``brats-parse-metrics mets`` defaults (brats-evaluation 0.0.10): lesions of at least this volume
#: (mm^3) are scored for segmentation, smaller ones for detection at :data:`MET_OVERLAP_THRESHOLD`.
MET_VOLUME_THRESHOLD: float = 20.0
MET_OVERLAP_THRESHOLD: float = 0.1
#: The parser's column prefix (its region key follows) -> medseg's column suffix.
PARSED_COLUMNS: dict[str, str] = {
    "lesionwise_dsc_mean": "lesionwise_dice",
    "lesionwise_hd95_mean": "lesionwise_hd95",
    "all_instance_tp": "tp",
    "all_instance_fn": "fn",
    "all_instance_fp": "fp",
    "global_dsc": "legacy_dice",
    "global_hd95": "legacy_hd95",
    "lesionwise_nsd_mean": "lesionwise_nsd",
    "global_nsd": "legacy_nsd",
}
_FIRST_REGIONS = ("WT", "TC", "ET", "RC")


@dataclass(frozen=True)
class OfficialLesion:
    """One reference lesion as panoptica matched it (for the lesions CSV and the scatter).

    Attributes:
        region: the region, upper case (``WT`` ...).
        volume_mm3: its volume (voxels times the header's voxel volume).
        dice: its Dice with its matched prediction; 0 when unmatched.
        hd95: its HD95 (voxels); ``inf`` when unmatched.
        matched: whether a predicted lesion was matched to it.
    """

    region: str
    volume_mm3: float
    dice: float
    hd95: float
    matched: bool


def _import_package() -> tuple[Any, Any]:
    try:
        import brats_evaluation
        from panoptica import Panoptica_Evaluator
    except ImportError as err:
        raise MedsegError(f"--rules brats2025 needs the official BraTS evaluation package (brats-evaluation, "
                          f"on panoptica), which is not installed ({err}); install medseg's extra: "
                          f"pip install 'medseg[{EXTRA}]'") from None
    return brats_evaluation, Panoptica_Evaluator


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep panoptica's banner, group notes and warnings out of medseg's output."""
    log = logging.getLogger("panoptica")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _number(text: str | None) -> float:
    if text is None or text.strip() == "":
        return math.nan
    return float(text)


def _json_value(value: object) -> object:
    return value.item() if hasattr(value, "item") else str(value)


class OfficialEvaluator:
    """``brats-evaluation`` with one challenge's bundled config, loaded once for every case.

    Args:
        challenge: ``GLI``, ``SSA``, ``PED``, ``MEN`` or ``MET``.

    Raises:
        InvalidValueError: an unknown challenge.
        MedsegError: the package is not installed (naming the extra that installs it).
    """

    def __init__(self, challenge: str) -> None:
        if challenge not in OFFICIAL_CONFIGS:
            raise InvalidValueError(f"unknown challenge {challenge!r}; valid: {list(OFFICIAL_CONFIGS)}")
        package, evaluator_class = _import_package()
        self.challenge = challenge
        self.config = OFFICIAL_CONFIGS[challenge]
        self._package = package
        with _quiet():
            self._evaluator = evaluator_class.load_from_config(str(package.config_path(self.config)))
        # The config's groups: panoptica exposes them through its YAML representation only.
        groups = evaluator_class._yaml_repr(self._evaluator)["segmentation_class_groups"]
        self.groups: dict[str, tuple[int, ...]] = {name.upper(): tuple(int(v) for v in group.value_labels)
                                                   for name, group in groups.items()}
        self.valid_values = frozenset({0, *(v for values in self.groups.values() for v in values)})
        self.regions = tuple([r for r in _FIRST_REGIONS if r in self.groups]
                             + [r for r in self.groups if r not in _FIRST_REGIONS])
        self.versions = {name: metadata.version(name) for name in ("brats-evaluation", "panoptica")}

    @property
    def parser(self) -> str:
        """The package's parser that turns its output into the leaderboard columns: ``seg`` or ``mets``."""
        return "mets" if self.config == "mets" else "seg"

    def describe(self) -> dict[str, object]:
        """What scored the cases, for ``summary.json``."""
        out: dict[str, object] = {"package": "brats-evaluation", "versions": self.versions, "config": self.config,
                                  "parser": self.parser, "groups": {k: list(v) for k, v in self.groups.items()}}
        if self.parser == "mets":
            out.update(vol_threshold=MET_VOLUME_THRESHOLD, overlap_threshold=MET_OVERLAP_THRESHOLD)
        return out

    def _parse(self, result: dict[str, Any], folder: Path) -> dict[str, str]:
        summary, parsed = folder / "summary.json", folder / "parsed.csv"
        summary.write_text(json.dumps({"metrics": [result], "missings": []}, default=_json_value), encoding="utf-8")
        if self.parser == "mets":
            self._package.parse_mets_results(str(summary), MET_VOLUME_THRESHOLD, MET_OVERLAP_THRESHOLD, str(parsed))
        else:
            self._package.parse_seg_results(str(summary), str(parsed))
        with open(parsed, newline="", encoding="utf-8") as handle:
            return next(csv.DictReader(handle))  # the case; the parser's mean/std/median rows follow

    def evaluate(self, pred: Path, truth: Path, case_id: str) -> tuple[dict[str, float], list[OfficialLesion]]:
        """Score one case with the package and return medseg's columns and the reference lesions.

        The files are given to the package as they are; check their label values against
        :attr:`valid_values` first (panoptica refuses others without naming the file).

        Returns:
            ``{"<REGION>_<metric>": value}`` for each region of :attr:`regions` and each
            column of :data:`PARSED_COLUMNS` (NaN where the package gives none), and the
            reference lesions of every region.

        Raises:
            DataError: the package failed on the pair, naming the prediction and its error.
        """
        with _quiet(), tempfile.TemporaryDirectory(prefix="medseg-brats-") as tmp:
            result = self._package.evaluate_single_exam(str(pred), str(truth), case_id, self._evaluator)
            if "error" in result:
                raise DataError(pred, "brats-evaluation failed", f"{result['error']} (truth {truth})")
            row = self._parse(result, Path(tmp))
        metrics = {f"{region}_{suffix}": _number(row.get(f"{prefix}_{region.lower()}"))
                   for region in self.regions for prefix, suffix in PARSED_COLUMNS.items()}
        lesions = [OfficialLesion(region, float(item.get("volume", math.nan)),
                                  float(item["sq_dsc"]) if item.get("is_matched") else 0.0,
                                  float(item["sq_hd95"]) if item.get("is_matched") else math.inf,
                                  bool(item.get("is_matched")))
                   for region in self.regions
                   for item in (result.get(region.lower()) or {}).get("reference_instances", [])]
        return metrics, lesions

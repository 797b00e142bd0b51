"""``medseg evaluate --task brats-lesionwise``: BraTS lesion-wise scores of a folder of predictions.

Two rule sets (``rules``):

* ``brats2023``: the published BraTS 2023 rules, computed by medseg
  (:mod:`medseg.evaluation.lesionwise`): WT, TC and ET from the label convention's values,
  lesions merged by dilation, the challenge's dilation and volume threshold.
* ``brats2025``: the official ``brats-evaluation`` package of the 2024 and 2025 challenges
  and its bundled config for the challenge (:mod:`medseg.evaluation.brats_official`); its
  regions (RC and the single labels included) are the config's.

Cases are paired as for ``--task brats`` (:mod:`medseg.evaluation.pairing`); a flat folder
of masks is read as ``brats2023`` (``brats2024`` under ``brats2025``, whose configs read 4 as
the resection cavity) unless ``convention`` says otherwise, and a BraTS 2023-named dataset
whose truth holds the resection cavity (4) and ET (3) as ``brats2024``. Label
values are checked against the convention (and, for ``brats2025``, against the config)
before anything is scored, so a bad file is a failed row naming it.

Beside ``out_csv``: ``summary.json``, ``boxplot.png`` (lesion-wise and legacy Dice and HD95
per region), ``lesions.csv`` (one row per reference lesion) and ``lesion_scatter.png`` (each
lesion's volume against its Dice).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medseg.data.conventions import LabelConvention
from medseg.errors import DataError, InvalidValueError
from medseg.evaluation.brats_official import MET_VOLUME_THRESHOLD, OfficialEvaluator
from medseg.evaluation.figures import LesionPoints, plot_boxplots, plot_lesion_scatter
from medseg.evaluation.lesionwise import CHALLENGE_RULES, MISSING_HD95, brats2023_case
from medseg.evaluation.loading import check_values, load_pair, truth_convention
from medseg.evaluation.pairing import CasePair, pair_cases
from medseg.evaluation.report import (
    CaseResult,
    EvaluationResult,
    LesionRecord,
    sibling_path,
    summarize,
    summary_record,
    write_csv,
    write_lesions_csv,
    write_summary,
)

TASK: str = "brats-lesionwise"
#: ``brats2023``: the 2023 rules (medseg); ``brats2025``: the official package of 2024-2025.
RULES: tuple[str, ...] = ("brats2023", "brats2025")
CHALLENGES: tuple[str, ...] = tuple(CHALLENGE_RULES)
#: Conventions whose values the official configs read as they mean them (2021's ET = 4 would be RC).
_OFFICIAL_CONVENTIONS = ("brats2023", "brats2024")
_SOURCE_2023 = "https://github.com/rachitsaluja/BraTS-2023-Metrics"


def _score_case(pair: CasePair, convention: LabelConvention, challenge: str,
                official: OfficialEvaluator | None) -> CaseResult:
    """Read, check and score one case; a :class:`~medseg.errors.DataError` becomes its error."""
    result = CaseResult(pair.case_id, pred=pair.pred, truth=pair.truth)
    if pair.pred is None:
        result.error = pair.problem or "no prediction found"
        return result
    try:
        loaded = load_pair(pair.pred, pair.truth)
        for labels, path in ((loaded.truth, pair.truth), (loaded.pred, pair.pred)):
            check_values(labels, convention.valid_values, path, convention.name)
            if official is not None:
                check_values(labels, official.valid_values, path, f"the brats-evaluation config {official.config!r}",
                             suggest=False)
        if official is None:
            for region, scores in brats2023_case(loaded.pred, loaded.truth, convention, loaded.spacing,
                                                 challenge).items():
                result.metrics.update(scores.as_metrics(region))
                result.lesions += [LesionRecord(region, x.lesion, x.volume_mm3, x.dice, x.hd95, x.matches, x.counted)
                                   for x in scores.lesions]
        else:
            result.metrics, lesions = official.evaluate(pair.pred, pair.truth, pair.case_id)
            numbers: dict[str, int] = {}
            for x in lesions:
                numbers[x.region] = numbers.get(x.region, 0) + 1
                counted = official.parser != "mets" or x.volume_mm3 >= MET_VOLUME_THRESHOLD
                result.lesions.append(LesionRecord(x.region, numbers[x.region], x.volume_mm3, x.dice, x.hd95,
                                                   int(x.matched), bool(counted)))
    except DataError as err:
        result.error = str(err)
        result.metrics, result.lesions = {}, []
    return result


def _boxplot(results: list[CaseResult], out_png: Path, title: str, distance_unit: str) -> Path | None:
    ok = [r for r in results if r.ok]
    names = list(dict.fromkeys(n for r in ok for n in r.metrics))
    values = {n: [r.metrics[n] for r in ok if n in r.metrics] for n in names}
    panels = {label: {n: v for n, v in values.items() if n.endswith(suffix)}
              for label, suffix in (("Dice", "_dice"), (f"HD95 ({distance_unit})", "_hd95"), ("NSD", "_nsd"))}
    try:
        return plot_boxplots({k: v for k, v in panels.items() if v}, out_png, title=title)
    except ValueError:
        return None  # nothing finite to draw


def _scatter(results: list[CaseResult], out_png: Path, threshold: float | None, title: str) -> Path | None:
    regions: dict[str, list[LesionRecord]] = {}
    for r in results:
        for lesion in r.lesions:
            regions.setdefault(lesion.region, []).append(lesion)
    points = {name: LesionPoints([x.volume_mm3 for x in found], [x.dice for x in found], [x.counted for x in found])
              for name, found in regions.items()}
    try:
        return plot_lesion_scatter(points, out_png, threshold=threshold, title=title)
    except ValueError:
        return None  # no lesion in any truth


def _lesion_counts(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        for x in r.lesions:
            entry = counts.setdefault(x.region, {"reference": 0, "counted": 0, "matched": 0})
            entry["reference"] += 1
            entry["counted"] += int(x.counted)
            entry["matched"] += int(x.matched > 0)
    return counts


def evaluate_lesionwise(
    pred_dir: str | Path,
    truth_dir: str | Path,
    out_csv: str | Path,
    rules: str,
    challenge: str = "GLI",
    convention: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Score every case with the BraTS lesion-wise rules and write the reports.

    Args:
        pred_dir: the predictions (names as for ``--task brats``).
        truth_dir: the truth dataset or a flat folder of truth masks.
        out_csv: the per-case CSV: ``<REGION>_lesionwise_dice``, ``_lesionwise_hd95``,
            ``_tp``, ``_fn``, ``_fp``, ``_legacy_dice``, ``_legacy_hd95`` per region
            (``brats2025`` adds ``_lesionwise_nsd`` and ``_legacy_nsd``).
        rules: ``brats2023`` or ``brats2025`` (:data:`RULES`).
        challenge: ``GLI``, ``SSA``, ``PED``, ``MEN`` or ``MET``.
        convention: the label convention (``brats2021``, ``brats2023``, ``brats2024``,
            ``msd_brain``); default: the dataset's (2023 naming with a 4: ``brats2024``), or
            for a flat folder ``brats2023`` (``brats2025``: ``brats2024``). ``brats2025``
            reads 2023/2024+ values only.
        progress: optional callback ``(done, total)``.

    Returns:
        The per-case results (with their lesions), the summary and the files written.

    Raises:
        InvalidValueError: unknown rules or challenge, or a convention the official configs misread.
        MedsegError: ``brats2025`` without the ``brats`` extra installed.
        DataError: a missing folder, a truth folder of the wrong kind, or no truth cases.
    """
    if rules not in RULES:
        raise InvalidValueError(f"unknown lesion-wise rules {rules!r}; valid: {list(RULES)}")
    if challenge not in CHALLENGES:
        raise InvalidValueError(f"unknown challenge {challenge!r}; valid: {list(CHALLENGES)}")
    out_csv = Path(out_csv)
    if out_csv.is_dir():
        raise DataError(out_csv, "not a file", "--out names the CSV to write, not a folder")
    official = OfficialEvaluator(challenge) if rules == "brats2025" else None
    # The 2024-2025 configs read 4 as the resection cavity: a flat folder is read with the 2024+ labels there.
    flat = "brats2024" if official is not None else "brats2023"
    pairing = pair_cases(pred_dir, truth_dir, "brats", convention, flat_convention=flat)
    conv = pairing.convention
    if convention is None and pairing.layout == "brats2023":
        conv = truth_convention(conv, [p.truth for p in pairing.pairs])
    if official is not None and conv.name not in _OFFICIAL_CONVENTIONS:
        raise InvalidValueError(f"--rules brats2025: the official configs read BraTS 2023/2024+ label values, not "
                                f"{conv.name} ones (the 2021 ET, 4, would be read as the resection cavity); "
                                f"convert the labels, or use --rules brats2023")
    results = []
    for i, pair in enumerate(pairing.pairs):
        results.append(_score_case(pair, conv, challenge, official))
        if progress:
            progress(i + 1, len(pairing.pairs))
    title = f"{TASK} ({rules}, {challenge}): {sum(r.ok for r in results)} cases"
    if official is None:
        threshold: float | None = CHALLENGE_RULES[challenge].volume_threshold
    else:
        threshold = MET_VOLUME_THRESHOLD if official.parser == "mets" else None
    summary = summarize(results)
    files = {"csv": write_csv(results, out_csv), "lesions": write_lesions_csv(results, sibling_path(out_csv,
                                                                                                    "lesions.csv"))}
    unit = "mm" if official is None else "voxels"  # panoptica measures in voxels (brats_official)
    for name, path in (("boxplot", _boxplot(results, sibling_path(out_csv, "boxplot.png"), title, unit)),
                       ("lesion_scatter", _scatter(results, sibling_path(out_csv, "lesion_scatter.png"),
                                                   threshold, title))):
        if path is not None:
            files[name] = path
    files["summary"] = sibling_path(out_csv, "summary.json")
    if official is None:
        rule_set = {"source": _SOURCE_2023, "dilation": CHALLENGE_RULES[challenge].dilation,
                    "volume_threshold_mm3": CHALLENGE_RULES[challenge].volume_threshold,
                    "missing_hd95": MISSING_HD95, "regions": {r: list(conv.regions[r]) for r in ("WT", "TC", "ET")}}
    else:
        rule_set = official.describe()
    write_summary(summary_record(TASK, conv.name, pred_dir, truth_dir, results, pairing.unmatched_predictions,
                                 summary, files, rules=rules, challenge=challenge, rule_set=rule_set,
                                 lesions=_lesion_counts(results)), files["summary"])
    return EvaluationResult(TASK, conv.name, results, summary, files, pairing.unmatched_predictions,
                            description=f"rules {rules}, {challenge}, labels {conv.name}")

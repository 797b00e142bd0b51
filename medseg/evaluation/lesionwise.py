"""BraTS lesion-wise Dice and HD95 under the 2023 rules, as the challenges' own code scores them.

The source is the BraTS 2023 evaluation code, https://github.com/rachitsaluja/BraTS-2023-Metrics
(``eval.py``: ``get_LesionWiseScores`` and ``get_LesionWiseResults``; the same logic is packaged
in ``brats_2023_metrics/surface_distance/brats_metrics.py``). Per region (WT, TC, ET), on
binary masks:

1. Connected components of the prediction, 26-connected.
2. Reference lesions that lie close together are one lesion: the reference is dilated
   ``d`` times with the 18-connected 3x3x3 structure, the dilated mask is labelled
   (26-connected), and every reference voxel takes the label of its dilated component
   (``d`` = 3 for GLI, SSA and PED; 1 for MEN and MET).
3. A reference lesion's matches are the predicted components that intersect the ``d``-fold
   dilation of the lesion itself; its Dice and HD95 (DeepMind surface distances, 95th
   percentile, in mm from the header spacing: :mod:`medseg.evaluation.surface`) are taken
   between the lesion and the union of its matches. No match: Dice 0, HD95 374.
4. Predicted components that match no reference lesion (small ones included) are false
   positives, each scoring Dice 0 and HD95 374.
5. Reference lesions of at most the volume threshold (50 mm^3; 2 mm^3 for MET) are left out
   of the scores and of the TP/FN counts. Their matches are still matches, not false
   positives, as in the reference code.
6. Lesion-wise Dice = sum over the kept lesions / (kept + FP); lesion-wise HD95 =
   (sum + 374 FP) / (kept + FP); with nothing to count, Dice 1 and HD95 0.

The legacy (whole-region) scores come with them, with the reference code's conventions:
Dice 1 and HD95 0 when both masks are empty, and an HD95 of 374 when one is (the reference
code replaces the infinite distance by 374; ``medseg evaluate --task brats`` keeps the
373.13 of earlier BraTS evaluations, :data:`medseg.evaluation.metrics.BRATS_EMPTY_HD95`).

Speed: the reference code dilates and scans the whole volume once per lesion. Here each
lesion is dilated inside its bounding box grown by ``d`` voxels, the farthest that ``d``
dilations with the 3x3x3 structure reach, which gives the same voxels; and its surface
distances are computed on the box that holds it and its matches. On a 240 x 240 x 155 case
with 30 lesions per region the 90-lesion loop takes about 1.5 s and the three whole-region
HD95s 3.3 s, on one loaded CPU core (``benchmarks/lesionwise_speed.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.data.conventions import LabelConvention
from medseg.errors import InvalidValueError
from medseg.evaluation.surface import compute_surface_distances, robust_hausdorff

#: The distance the 2023 rules give a missed lesion, a false positive and an empty mask (mm).
MISSING_HD95: float = 374.0
#: The regions the 2023 rules score, in report order.
LESIONWISE_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
#: Per-region columns of the 2023 rules, in report order.
LESIONWISE_METRICS: tuple[str, ...] = (
    "lesionwise_dice", "lesionwise_hd95", "tp", "fn", "fp", "legacy_dice", "legacy_hd95",
)

_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # 18-connected, as the reference code
_COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connected (cc3d connectivity=26)


@dataclass(frozen=True)
class ChallengeRules:
    """The two numbers by which the BraTS 2023 challenges' lesion-wise rules differ.

    Attributes:
        dilation: dilations of the reference (3x3x3, 18-connected) that merge nearby lesions
            and define a lesion's neighbourhood for matching.
        volume_threshold: reference lesions of at most this volume (mm^3) are not scored.
    """

    dilation: int
    volume_threshold: float

    def __post_init__(self) -> None:
        if isinstance(self.dilation, bool) or not isinstance(self.dilation, int) or self.dilation < 1:
            # scipy dilates until nothing changes for iterations=0: never what the rules mean.
            raise InvalidValueError(f"dilation must be an integer >= 1, got {self.dilation!r}")
        if not self.volume_threshold >= 0:
            raise InvalidValueError(f"volume_threshold must be >= 0 mm^3, got {self.volume_threshold!r}")


#: ``get_LesionWiseResults`` of the 2023 code, per challenge.
CHALLENGE_RULES: dict[str, ChallengeRules] = {
    "GLI": ChallengeRules(dilation=3, volume_threshold=50.0),
    "SSA": ChallengeRules(dilation=3, volume_threshold=50.0),
    "PED": ChallengeRules(dilation=3, volume_threshold=50.0),
    "MEN": ChallengeRules(dilation=1, volume_threshold=50.0),
    "MET": ChallengeRules(dilation=1, volume_threshold=2.0),
}


@dataclass(frozen=True)
class LesionScore:
    """One reference lesion (after merging by dilation) and how it was predicted.

    Attributes:
        lesion: its number in the merged labelling of the region (1..N, in scan order).
        volume_mm3: its volume: voxels times the voxel volume.
        dice: Dice between the lesion and the union of its matches (0 without a match).
        hd95: HD95 in mm between them (:data:`MISSING_HD95` without a match).
        matches: how many predicted components it matched.
        counted: whether its volume is above the threshold (it enters the scores).
    """

    lesion: int
    volume_mm3: float
    dice: float
    hd95: float
    matches: int
    counted: bool


@dataclass(frozen=True)
class RegionScores:
    """The 2023 lesion-wise and legacy scores of one region of one case.

    Attributes:
        lesionwise_dice: sum of the counted lesions' Dice / (counted lesions + FP).
        lesionwise_hd95: (sum of their HD95 + 374 FP) / (counted lesions + FP).
        tp: counted lesions with at least one match.
        fn: counted lesions without a match.
        fp: predicted components that match no reference lesion.
        legacy_dice: Dice of the whole region.
        legacy_hd95: HD95 of the whole region (mm).
        lesions: every reference lesion, counted or not.
    """

    lesionwise_dice: float
    lesionwise_hd95: float
    tp: int
    fn: int
    fp: int
    legacy_dice: float
    legacy_hd95: float
    lesions: tuple[LesionScore, ...]

    def as_metrics(self, region: str) -> dict[str, float]:
        """The report columns ``<region>_<metric>`` of :data:`LESIONWISE_METRICS`."""
        return {f"{region}_{name}": float(getattr(self, name)) for name in LESIONWISE_METRICS}


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))


def merged_lesions(truth: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Label the reference lesions, merging those whose ``dilation``-fold dilations touch.

    Args:
        truth: binary reference mask ``(X, Y, Z)``.
        dilation: dilations with the 18-connected 3x3x3 structure.

    Returns:
        ``(labels, n)``: int32 ``(X, Y, Z)`` with 0 outside the reference and 1..n on it,
        each reference voxel labelled by the component of the dilated reference it is in.
    """
    truth = np.asarray(truth, dtype=bool)
    labels = np.zeros(truth.shape, dtype=np.int32)
    box = ndimage.find_objects(truth.astype(np.uint8))
    if not box or box[0] is None:
        return labels, 0
    # The dilated reference lies within the reference's box grown by `dilation`: dilating and
    # labelling there gives the voxels and components of the whole volume.
    box = _grow(box[0], dilation, truth.shape)
    dilated = ndimage.binary_dilation(truth[box], _DILATION_STRUCTURE, iterations=dilation)
    components, n = ndimage.label(dilated, _COMPONENT_STRUCTURE)
    labels[box] = np.where(truth[box], components, 0)
    return labels, int(n)


def _lesion_hd95(lesion: np.ndarray, matched: np.ndarray, spacing: Sequence[float]) -> float:
    distance = robust_hausdorff(compute_surface_distances(lesion, matched, spacing), 95.0)
    return distance if np.isfinite(distance) else MISSING_HD95


def legacy_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Whole-region Dice and HD95 with the 2023 code's conventions for empty masks.

    Returns:
        ``(dice, hd95)``: ``(1, 0)`` when both are empty; Dice 0 and HD95 374 when one is.
    """
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    if n_p == 0 and n_t == 0:
        return 1.0, 0.0
    dice = 2.0 * int(np.count_nonzero(p & t)) / (n_p + n_t)
    return dice, _lesion_hd95(t, p, spacing)


def lesionwise_region(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], rules: ChallengeRules
) -> RegionScores:
    """The 2023 lesion-wise scores of one region (steps 1-6 of the module docstring).

    Args:
        pred: binary prediction mask ``(X, Y, Z)``.
        truth: binary reference mask of the same shape.
        spacing: voxel size in mm along each axis (from the reference's header).
        rules: the challenge's dilation and volume threshold (:data:`CHALLENGE_RULES`).

    Returns:
        The lesion-wise and legacy scores, the counts and every reference lesion.

    Raises:
        InvalidValueError: masks that are not 3D or differ in shape, or a spacing of the wrong length.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise InvalidValueError(f"lesion-wise scores need two 3D masks of one shape, got {pred.shape} and {truth.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3:
        raise InvalidValueError(f"spacing needs 3 values, got {spacing}")
    d = rules.dilation
    merged, _ = merged_lesions(truth, d)
    components, n_components = ndimage.label(pred, _COMPONENT_STRUCTURE)
    component_boxes = ndimage.find_objects(components)
    matched_any = np.zeros(n_components + 1, dtype=bool)
    lesions = []
    for k, box in enumerate(ndimage.find_objects(merged), start=1):
        reach_box = _grow(box, d, truth.shape)
        lesion = merged[reach_box] == k
        reach = ndimage.binary_dilation(lesion, _DILATION_STRUCTURE, iterations=d)
        ids = np.unique(components[reach_box][reach])
        ids = ids[ids != 0]
        matched_any[ids] = True
        voxels = int(np.count_nonzero(lesion))
        volume = voxels * spacing[0] * spacing[1] * spacing[2]  # the reference code's order of products
        if ids.size:
            joint = _union([box, *(component_boxes[i - 1] for i in ids)])
            mine = merged[joint] == k
            theirs = np.isin(components[joint], ids)
            dice = 2.0 * int(np.count_nonzero(mine & theirs)) / (voxels + int(np.count_nonzero(theirs)))
            hd95 = _lesion_hd95(mine, theirs, spacing)
        else:
            dice, hd95 = 0.0, MISSING_HD95
        lesions.append(LesionScore(k, volume, dice, hd95, int(ids.size), volume > rules.volume_threshold))
    fp = int(n_components - np.count_nonzero(matched_any[1:]))
    counted = [lesion for lesion in lesions if lesion.counted]
    tp = sum(lesion.matches > 0 for lesion in counted)
    total = len(counted) + fp
    if total:
        lw_dice = sum(lesion.dice for lesion in counted) / total
        lw_hd95 = (sum(lesion.hd95 for lesion in counted) + MISSING_HD95 * fp) / total
    else:
        lw_dice, lw_hd95 = 1.0, 0.0
    legacy_dice, legacy_hd95 = legacy_scores(pred, truth, spacing)
    return RegionScores(lw_dice, lw_hd95, tp, len(counted) - tp, fp, legacy_dice, legacy_hd95, tuple(lesions))


def brats2023_case(
    pred_label: np.ndarray,
    truth_label: np.ndarray,
    convention: LabelConvention,
    spacing: Sequence[float],
    challenge: str = "GLI",
) -> dict[str, RegionScores]:
    """The 2023 lesion-wise scores of WT, TC and ET for one case.

    Args:
        pred_label: predicted label map ``(X, Y, Z)`` in the convention's values.
        truth_label: reference label map of the same shape and convention.
        convention: a BraTS region convention; it says which label values make WT, TC and
            ET (2023 and 2024+: {1, 2, 3}, {1, 3}, {3}; 2021: ET is 4).
        spacing: voxel size in mm (the reference's header).
        challenge: ``GLI``, ``SSA``, ``PED``, ``MEN`` or ``MET`` (:data:`CHALLENGE_RULES`).

    Returns:
        Region name -> its scores, in :data:`LESIONWISE_REGIONS` order.

    Raises:
        InvalidValueError: an unknown challenge, a convention without WT/TC/ET, or maps of
            different shapes.
    """
    if challenge not in CHALLENGE_RULES:
        raise InvalidValueError(f"unknown challenge {challenge!r}; valid: {list(CHALLENGE_RULES)}")
    missing = [r for r in LESIONWISE_REGIONS if r not in convention.regions]
    if missing:
        raise InvalidValueError(f"label convention {convention.name!r} has no {'/'.join(missing)} region")
    pred_label, truth_label = np.asarray(pred_label), np.asarray(truth_label)
    if pred_label.shape != truth_label.shape:
        raise InvalidValueError(f"prediction and truth shapes differ: {pred_label.shape} vs {truth_label.shape}")
    rules = CHALLENGE_RULES[challenge]
    regions: Mapping[str, tuple[int, ...]] = convention.regions
    return {region: lesionwise_region(np.isin(pred_label, regions[region]), np.isin(truth_label, regions[region]),
                                      spacing, rules)
            for region in LESIONWISE_REGIONS}

"""One label convention per task and one canonical channel order for BraTS.

Every BraTS variant is mapped onto the three nested regions used for training and
evaluation, in the canonical order ``(TC, WT, ET)``:

===============  ===========  ==============  ==============  ===========================
source           ET           TC              WT              source labels
===============  ===========  ==============  ==============  ===========================
BraTS 2020/2021  4            {1, 4}          {1, 2, 4}       1 NCR/NET, 2 ED, 4 ET
BraTS 2023       3            {1, 3}          {1, 2, 3}       1 NCR, 2 ED, 3 ET
BraTS 2024+      3            {1, 3}          {1, 2, 3}       1 NETC, 2 SNFH, 3 ET, 4 RC
MSD Task01       3            {2, 3}          {1, 2, 3}       1 edema, 2 non-enh., 3 enh.
===============  ===========  ==============  ==============  ===========================

The BraTS 2024+ glioma data (post-treatment cases) add a fourth label, the resection
cavity (RC = 4). It lies outside the tumour regions (the official ``brats-evaluation``
configs define WT as {1, 2, 3}), so it is a fourth region channel of its own:
``(TC, WT, ET, RC)``, the first three in the canonical order of every BraTS model. The
2024+ files use the 2023 naming, so the two are told apart by their label values
(:func:`medseg.data.layouts.brats.brats_convention_for_values`) or chosen with ``--labels``.

MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` hard-codes the 2021 values, so it
silently produces wrong regions for MSD and BraTS 2023; these conventions are explicit
and invertible instead, so inference can write each source's own label values.

The canonical BraTS channel order is ``(T1, T1ce, T2, FLAIR)``, whatever the source
calls them (2023: t1n, t1c, t2w, t2f; MSD: channels FLAIR, T1w, t1gd, T2w).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import InvalidValueError

#: Label values medseg can write: a mask is stored as uint8, uint16 or uint32, the smallest that holds them.
LABEL_VALUE_RANGE: tuple[int, int] = (0, 2**32 - 1)
#: Canonical BraTS channel order used by every medseg BraTS model.
BRATS_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Canonical region order of the sigmoid outputs of every BraTS model.
BRATS_REGIONS: tuple[str, ...] = ("TC", "WT", "ET")


@dataclass(frozen=True)
class LabelConvention:
    """How a source encodes its label map, and how it maps to training targets.

    Args:
        name: identifier stored in datalists and checkpoints (e.g. ``"brats2021"``).
        labels: source label value -> meaning, including background 0.
        regions: region name -> the source label values it is made of. Empty for
            plain multi-class (softmax) conventions.
        region_fill: for writing labels back from nested regions: ``(region, value)``
            pairs painted in order, each one over the previous ones.
    """

    name: str
    labels: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    region_fill: tuple[tuple[str, int], ...] = ()

    @property
    def valid_values(self) -> frozenset[int]:
        """The set of label values a correct label map may contain."""
        return frozenset(int(v) for v in self.labels)

    @property
    def is_region_based(self) -> bool:
        """True when training targets are overlapping sigmoid regions (BraTS)."""
        return bool(self.regions)

    @property
    def region_names(self) -> tuple[str, ...]:
        """Region names in output-channel order."""
        return tuple(self.regions)

    def to_regions(self, label: np.ndarray) -> np.ndarray:
        """Convert a label map to stacked binary region masks.

        Args:
            label: integer label map ``(X, Y, Z)``, or ``(1, X, Y, Z)`` channel-first.

        Returns:
            uint8 array ``(len(regions), *spatial)`` in :attr:`region_names` order.
        """
        if not self.regions:
            raise InvalidValueError(f"label convention {self.name!r} has no regions; it is plain multi-class")
        label = np.asarray(label)
        if label.ndim == 4 and label.shape[0] == 1:
            label = label[0]
        rounded = np.rint(label).astype(np.int64) if label.dtype.kind == "f" else label
        return np.stack([np.isin(rounded, values) for values in self.regions.values()]).astype(np.uint8)

    def from_regions(self, regions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Convert region masks (or probabilities) back to this source's label values.

        The regions are nested (ET within TC within WT), so painting WT, then TC, then
        ET, each with the value of the sub-region that the larger one adds, recovers the
        source labels exactly for masks produced by :meth:`to_regions`.

        Args:
            regions: array ``(len(regions), *spatial)`` of masks or probabilities.
            threshold: values above it count as inside a region.

        Returns:
            uint8 label map ``(*spatial)`` with this convention's values.
        """
        regions = np.asarray(regions)
        if regions.shape[0] != len(self.regions):
            raise InvalidValueError(
                f"{self.name}: expected {len(self.regions)} region channels {self.region_names}, "
                f"got array of shape {regions.shape}"
            )
        out = np.zeros(regions.shape[1:], dtype=np.uint8)
        index = {name: i for i, name in enumerate(self.regions)}
        for name, value in self.region_fill:
            out[regions[index[name]] > threshold] = value
        return out


BRATS2021 = LabelConvention(
    name="brats2021",
    labels={0: "background", 1: "necrotic / non-enhancing tumour core", 2: "peritumoral edema", 4: "enhancing tumour"},
    regions={"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)},
    region_fill=(("WT", 2), ("TC", 1), ("ET", 4)),
)
BRATS2023 = LabelConvention(
    name="brats2023",
    labels={0: "background", 1: "necrotic tumour core", 2: "peritumoral edema", 3: "enhancing tumour"},
    regions={"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)},
    region_fill=(("WT", 2), ("TC", 1), ("ET", 3)),
)
# RC is painted first: where a model predicts both cavity and tumour, the tumour label wins,
# since a missed tumour voxel costs more than a missed cavity voxel. Truth regions never overlap
# (RC is outside WT), so from_regions(to_regions(x)) == x still holds exactly.
BRATS2024 = LabelConvention(
    name="brats2024",
    labels={0: "background", 1: "non-enhancing tumour core (NETC)", 2: "surrounding non-enhancing FLAIR "
            "hyperintensity (SNFH)", 3: "enhancing tissue (ET)", 4: "resection cavity (RC)"},
    regions={"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,), "RC": (4,)},
    region_fill=(("RC", 4), ("WT", 2), ("TC", 1), ("ET", 3)),
)
MSD_BRAIN = LabelConvention(
    name="msd_brain",
    labels={0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
    regions={"TC": (2, 3), "WT": (1, 2, 3), "ET": (3,)},
    region_fill=(("WT", 1), ("TC", 2), ("ET", 3)),
)
ISIC = LabelConvention(name="isic", labels={0: "background", 1: "lesion"})

_REGISTRY: dict[str, LabelConvention] = {c.name: c for c in (BRATS2021, BRATS2023, BRATS2024, MSD_BRAIN, ISIC)}
#: The conventions of BraTS case folders, which ``--labels`` chooses among.
BRATS_LABEL_CONVENTIONS: tuple[str, ...] = ("brats2021", "brats2023", "brats2024")


def get_convention(name: str) -> LabelConvention:
    """Return a registered label convention by name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidValueError(f"unknown label convention {name!r}; valid: {sorted(_REGISTRY)}") from None


def conventions_allowing(values: Iterable[int], among: Iterable[str] = BRATS_LABEL_CONVENTIONS) -> list[str]:
    """The conventions of ``among`` whose label values include all of ``values``, in ``among``'s order.

    Used to suggest ``--labels``: BraTS 2024+ labels (with the resection cavity, 4) read as
    BraTS 2023 break only on the value 4, and only ``brats2024`` allows 0..4.
    """
    found = {int(v) for v in values}
    return [name for name in among if found <= _REGISTRY[name].valid_values]


def labels_hint(values: Iterable[int], convention: str) -> str:
    """How to read BraTS label ``values`` that ``convention`` refuses: ``"; they fit ...: pass --labels ..."``, or ``""``.

    Args:
        values: every label value of the file (or dataset), valid ones included.
        convention: the BraTS convention that refused them.
    """
    if convention not in BRATS_LABEL_CONVENTIONS:
        return ""
    fits = [name for name in conventions_allowing(values) if name != convention]
    if not fits:
        return ""
    why = " (4 is the resection cavity of the BraTS 2024+ labels)" if fits == ["brats2024"] else ""
    return f"; they fit {' and '.join(fits)}{why}: pass --labels {' or '.join(fits)}"


def label_value_problem(values: Iterable[int]) -> str | None:
    """Why some of ``values`` cannot be written in a mask (outside :data:`LABEL_VALUE_RANGE`), or ``None``."""
    low, high = LABEL_VALUE_RANGE
    bad = sorted(int(v) for v in values if not low <= int(v) <= high)
    if bad:
        return (f"label value {bad[-1] if bad[-1] > high else bad[0]} is outside {low}..{high:,}: masks are written "
                "as unsigned integers of at most 32 bits (uint8, uint16 or uint32)")
    return None


def multiclass_convention(name: str, labels: Mapping[int, str]) -> LabelConvention:
    """Build a plain multi-class (softmax) convention, e.g. from a generic ``dataset.json``.

    Raises:
        ValueError: label 0 is missing, or a value is outside :data:`LABEL_VALUE_RANGE`.
    """
    if 0 not in labels:
        raise InvalidValueError(f"{name}: label 0 (background) is missing from labels {dict(labels)}")
    why = label_value_problem(labels)
    if why:
        raise InvalidValueError(f"{name}: {why}")
    return LabelConvention(name=name, labels=dict(sorted(labels.items())))


# Source modality names -> canonical BraTS channel. Keys are lower-case.
_MODALITY_ALIASES: dict[str, str] = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "native t1": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce", "t1_gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2-flair": "flair", "t2_flair": "flair",
}


def canonical_modality(name: str) -> str:
    """Map a source's modality name (``t1n``, ``T1w``, ``t2f``, ``FLAIR`` ...) to the canonical one.

    Raises:
        ValueError: if the name is not a known BraTS modality.
    """
    key = name.strip().lower()
    if key not in _MODALITY_ALIASES:
        raise InvalidValueError(f"unknown BraTS modality name {name!r}; known: {sorted(_MODALITY_ALIASES)}")
    return _MODALITY_ALIASES[key]


def channel_permutation(source_order: Sequence[str]) -> list[int]:
    """Indices that reorder a source's channels into :data:`BRATS_CHANNELS` order.

    Example:
        MSD Task01 stores ``(FLAIR, T1w, t1gd, T2w)``; the permutation is ``[1, 2, 3, 0]``,
        so ``image[perm]`` is ``(T1, T1ce, T2, FLAIR)``.
    """
    canonical = [canonical_modality(n) for n in source_order]
    missing = [c for c in BRATS_CHANNELS if c not in canonical]
    if missing or len(canonical) != len(BRATS_CHANNELS):
        raise InvalidValueError(f"channels {list(source_order)} do not cover {BRATS_CHANNELS} exactly (missing {missing})")
    return [canonical.index(c) for c in BRATS_CHANNELS]

"""Region mapping of every BraTS convention on known voxels, and the canonical channel order."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.conventions import (
    BRATS2021, BRATS2023, BRATS_CHANNELS, MSD_BRAIN, canonical_modality, channel_permutation, get_convention,
)

# (convention, source label value, expected (TC, WT, ET) membership)
KNOWN_VOXELS = [
    (BRATS2021, 0, (0, 0, 0)), (BRATS2021, 1, (1, 1, 0)), (BRATS2021, 2, (0, 1, 0)), (BRATS2021, 4, (1, 1, 1)),
    (BRATS2023, 0, (0, 0, 0)), (BRATS2023, 1, (1, 1, 0)), (BRATS2023, 2, (0, 1, 0)), (BRATS2023, 3, (1, 1, 1)),
    (MSD_BRAIN, 0, (0, 0, 0)), (MSD_BRAIN, 1, (0, 1, 0)), (MSD_BRAIN, 2, (1, 1, 0)), (MSD_BRAIN, 3, (1, 1, 1)),
]


@pytest.mark.parametrize("convention,value,expected", KNOWN_VOXELS, ids=lambda x: getattr(x, "name", str(x)))
def test_region_membership_of_each_label_value(convention, value, expected):
    label = np.zeros((3, 3, 3), dtype=np.uint8)
    label[1, 2, 0] = value
    regions = convention.to_regions(label)
    assert regions.shape == (3, 3, 3, 3)
    assert tuple(regions[:, 1, 2, 0]) == expected
    assert regions[:, 0, 0, 0].sum() == 0


@pytest.mark.parametrize("convention", [BRATS2021, BRATS2023, MSD_BRAIN], ids=lambda c: c.name)
def test_regions_invert_to_source_values(convention):
    rng = np.random.default_rng(0)
    label = rng.choice(sorted(convention.valid_values), size=(6, 5, 4)).astype(np.uint8)
    assert np.array_equal(convention.from_regions(convention.to_regions(label)), label)


def test_region_order_and_nesting():
    assert BRATS2021.region_names == ("TC", "WT", "ET")
    # ET within TC within WT for every convention.
    for conv in (BRATS2021, BRATS2023, MSD_BRAIN):
        tc, wt, et = (set(conv.regions[r]) for r in ("TC", "WT", "ET"))
        assert et <= tc <= wt


def test_monai_stock_converter_is_wrong_for_msd():
    """The reason medseg has its own conventions: MONAI's converter assumes 2021 values."""
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    label = np.array([[[1, 2, 3]]])  # MSD: edema, non-enhancing, enhancing
    stock = np.asarray(ConvertToMultiChannelBasedOnBratsClasses()(label))
    ours = MSD_BRAIN.to_regions(label)
    assert not np.array_equal(stock.astype(np.uint8), ours)
    assert tuple(ours[:, 0, 0, 0]) == (0, 1, 0)  # edema is WT only


def test_channel_permutation_msd_and_2023_names():
    assert channel_permutation(["FLAIR", "T1w", "t1gd", "T2w"]) == [1, 2, 3, 0]
    assert channel_permutation(["t1c", "t1n", "t2f", "t2w"]) == [1, 0, 3, 2]
    assert [canonical_modality(n) for n in ("t1n", "t1c", "t2w", "t2f")] == list(BRATS_CHANNELS)
    with pytest.raises(ValueError, match="do not cover"):
        channel_permutation(["t1", "t1", "t2", "flair"])
    with pytest.raises(ValueError, match="unknown label convention 'nope'"):
        get_convention("nope")

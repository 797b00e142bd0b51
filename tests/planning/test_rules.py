"""The planner's rules on small fingerprints written by hand: spacing, anisotropy, normalisation, cropping."""

from __future__ import annotations

import pytest

from medseg.errors import InvalidValueError
from medseg.planning import rules


def test_target_spacing_is_the_median_per_axis():
    spacings = [[1.0, 1.0, 1.0], [0.8, 0.8, 1.2], [1.2, 1.1, 1.4]]
    target, axis = rules.target_spacing(spacings)
    assert target == [1.0, 1.0, 1.2] and axis is None


def test_an_axis_over_three_times_coarser_takes_its_tenth_percentile():
    # Prostate-like: 0.6 mm in-plane, slices of 3 to 4 mm; the median 3.6 is > 3 x 0.6.
    spacings = [[0.6, 0.6, 3.6]] * 6 + [[0.6, 0.6, 3.0]] * 2 + [[0.6, 0.6, 4.0]] * 2
    target, axis = rules.target_spacing(spacings)
    assert axis == 2
    assert target[:2] == [0.6, 0.6]
    assert target[2] == pytest.approx(3.0)  # np.percentile(..., 10) of the slice spacings


def test_the_coarse_axis_is_found_wherever_it_lies():
    target, axis = rules.target_spacing([[5.0, 0.8, 0.8], [5.0, 0.7, 0.7], [4.0, 0.8, 0.8]])
    assert axis == 0 and target[0] == pytest.approx(4.2)


def test_exactly_three_times_is_not_anisotropic():
    target, axis = rules.target_spacing([[1.0, 1.0, 3.0]] * 3)
    assert axis is None and target == [1.0, 1.0, 3.0]


def test_the_percentile_never_goes_below_the_other_axes():
    # One thin-slice case among thick ones: the 10th percentile would be 0.5, finer than in-plane 0.9.
    spacings = [[0.9, 0.9, 5.0]] * 5 + [[0.9, 0.9, 0.5]]
    target, axis = rules.target_spacing(spacings)
    assert axis == 2 and target[2] >= 0.9


def test_ct_channels_get_ct_normalisation_and_mr_per_image_zscore():
    assert rules.normalization(["CT"], [1.0, 1.0]) == ["ct"]
    assert rules.normalization(["ct", "T2"], [1.0]) == ["ct", "zscore"]
    assert rules.normalization(["T1", "FLAIR"], [0.9, 0.95, 0.8]) == ["zscore", "zscore"]


def test_nonzero_zscore_when_cropping_removes_more_than_a_quarter():
    assert rules.normalization(["T1", "CT"], [0.4, 0.5, 0.9]) == ["zscore_nonzero", "ct"]
    assert rules.normalization(["T1"], [0.74, 0.74, 0.9]) == ["zscore_nonzero"]
    assert rules.normalization(["T1"], [0.76, 0.76, 0.5]) == ["zscore"]


def test_crop_when_the_box_removes_something_on_the_median_case():
    assert rules.crop_to_nonzero([0.5, 0.6, 1.0])
    assert not rules.crop_to_nonzero([1.0, 1.0, 0.3])


def test_interpolation_separates_the_coarse_axis_of_data_or_target():
    assert rules.interpolation([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])["separate_axis"] is None
    assert rules.interpolation([0.7, 0.7, 5.0], [0.7, 0.7, 4.0])["separate_axis"] == 2
    # The data are anisotropic even when a target is not (e.g. set by hand): still separate.
    planned = rules.interpolation([0.7, 0.7, 5.0], [1.5, 1.5, 2.0])
    assert planned == {"image_order": 3, "label_order": 0, "separate_axis": 2, "separate_axis_order": 0}


def test_resampled_shapes_keep_the_physical_extent():
    shapes = rules.resampled_shapes([[100, 100, 20]], [[0.9, 0.9, 4.0]], [1.0, 1.0, 2.0])
    assert shapes.tolist() == [[90, 90, 40]]


def test_bad_spacings_are_refused():
    with pytest.raises(InvalidValueError, match="triple"):
        rules.target_spacing([[1.0, 1.0]])
    with pytest.raises(InvalidValueError, match="finite"):
        rules.target_spacing([[1.0, float("nan"), 1.0]])

"""``plan.json``: made from a fingerprint, written, read back, and refused when a value breaks its rule."""

from __future__ import annotations

import copy
import json

import pytest

from medseg.errors import DataError, MedsegError
from medseg.planning import check_plan, format_plan, load_plan, make_plan, write_plan
from medseg.planning.apply import planned, planned_network


def _fingerprint(channels=("T1", "FLAIR"), spacing=(0.9, 0.9, 4.0), fraction=0.6):
    cases = [{"id": f"c{i}", "shape": [200, 200, 30 + i], "spacing": list(spacing), "orientation": "RAS",
              "cropped_shape": [150, 160, 30 + i], "nonzero_fraction": fraction, "class_voxels": {"1": 100}}
             for i in range(5)]
    intensity = [{"channel": i, "name": n, "mean": 10.0 * (i + 1), "std": 2.0, "median": 10.0, "min": 0.0,
                  "max": 50.0, "percentile_00_5": 1.0, "percentile_99_5": 40.0, "num_samples": 500}
                 for i, n in enumerate(channels)]
    return {"format": "medseg-fingerprint/1", "dataset": {"name": "Toy", "layout": "generic", "num_cases": 5},
            "channels": [{"index": i, "name": n} for i, n in enumerate(channels)],
            "labels": {"0": "background", "1": "lesion"}, "cases": cases, "intensity": intensity,
            "samples_per_case": 100, "seed": 0}


@pytest.fixture(scope="module")
def plan():
    return make_plan(_fingerprint(), gpu_memory_gib=4.0)


def test_a_plan_holds_the_keys_scripts_read(plan):
    assert plan["target_spacing"] == [0.9, 0.9, 4.0] and plan["anisotropic_axis"] == 2
    assert plan["normalization"] == ["zscore_nonzero", "zscore_nonzero"]
    assert plan["crop_to_nonzero"] is True
    assert plan["resampling"]["separate_axis"] == 2
    assert len(plan["patch_size"]) == 3 and plan["batch_size"] >= 2
    assert plan["network"]["strides"][1] == [2, 2, 1]
    assert plan["memory"]["estimated_gib"] <= 4.0
    check_plan(plan)


def test_a_ct_dataset_is_planned_with_ct_normalisation():
    made = make_plan(_fingerprint(channels=("CT",), spacing=(0.8, 0.8, 1.0), fraction=1.0), gpu_memory_gib=4.0)
    assert made["normalization"] == ["ct"] and made["crop_to_nonzero"] is False
    assert made["intensity_properties"][0]["percentile_99_5"] == 40.0


def test_written_plans_read_back_and_are_not_overwritten(plan, tmp_path):
    path = write_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan
    with pytest.raises(MedsegError, match="exists"):
        write_plan(plan, path)
    assert "target spacing (mm)" in format_plan(plan) and "0.9 x 0.9 x 4" in format_plan(plan)


@pytest.mark.parametrize(("key", "value"), [
    ("target_spacing", [0.001, 1.0, 1.0]),
    ("target_spacing", [1.0, 1.0]),
    ("patch_size", [100000, 128, 128]),
    ("patch_size", [64.5, 64, 64]),
    ("batch_size", 0),
    ("normalization", ["minmax", "zscore"]),
    ("intensity_properties", [{"mean": "NaN"}]),
    ("resampling", {"image_order": 9, "label_order": 0, "separate_axis": None, "separate_axis_order": 0}),
    ("network", {"name": "dynunet", "filters": [32, 64], "kernel_size": [[3, 3, 3]] * 2,
                 "strides": [[1, 1, 1], [4, 4, 4]]}),
    ("crop_to_nonzero", "yes"),
])
def test_a_bad_value_is_refused_naming_the_file_and_key(plan, tmp_path, key, value):
    bad = copy.deepcopy(plan)
    bad[key] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=f"bad plan value {key}") as err:
        load_plan(path)
    assert str(path) in str(err.value)


def test_missing_oversized_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_plan(tmp_path / "nope.json")
    big = tmp_path / "big.json"
    big.write_text(" " * (2 << 20))
    with pytest.raises(DataError, match="too large"):
        load_plan(big)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something"}))
    with pytest.raises(DataError, match="not a medseg plan"):
        load_plan(other)


def test_bundle_ids_take_the_plan_or_the_default(plan):
    assert planned(None, "patch_size", [96, 96, 96]) == [96, 96, 96]
    assert planned(plan, "patch_size", [96, 96, 96]) == plan["patch_size"]
    bad = {**plan, "batch_size": -1}
    with pytest.raises(DataError, match="batch_size"):
        planned(bad, "patch_size", None)  # an inline plan (--set plan=..., a reproduction) is checked too
    default = {"name": "segresnet", "kwargs": {"init_filters": 8}}
    assert planned_network(default, 2, 3) == default
    net = planned_network(default, 2, 3, **{k: plan["network"][k] for k in ("kernel_size", "strides", "filters")})
    assert net["name"] == "dynunet" and net["kwargs"]["upsample_kernel_size"] == plan["network"]["strides"][1:]
    with pytest.raises(MedsegError, match="go together"):
        planned_network(default, 2, 3, kernel_size=plan["network"]["kernel_size"])

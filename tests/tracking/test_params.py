"""Flattening a config into MLflow params within MLflow's limits."""

from __future__ import annotations

import re
from typing import Any

import pytest

from medseg.tracking.params import (
    TRUNCATION_MARKER,
    flatten_config,
    log_params_batched,
    mlflow_limits,
    sanitize_key,
)


def test_limits_come_from_the_installed_mlflow() -> None:
    from mlflow.utils import validation

    limits = mlflow_limits()
    assert limits["max_value_length"] == validation.MAX_PARAM_VAL_LENGTH
    assert limits["max_key_length"] == validation.MAX_ENTITY_KEY_LENGTH
    assert limits["max_params_per_batch"] == validation.MAX_PARAMS_TAGS_PER_BATCH


def test_nested_dicts_and_lists_get_index_keys() -> None:
    config = {
        "network": {"name": "unet", "channels": [16, 32, 64], "dropout": None},
        "optimizer": {"lr": 1e-3, "betas": (0.9, 0.999)},
        "transforms": [{"_target_": "LoadImaged", "keys": ["image", "label"]}],
        "empty": {},
        "none_list": [],
        "amp": True,
    }
    flat = flatten_config(config)
    assert flat == {
        "network.name": "unet",
        "network.channels.0": "16",
        "network.channels.1": "32",
        "network.channels.2": "64",
        "network.dropout": "None",
        "optimizer.lr": "0.001",
        "optimizer.betas.0": "0.9",
        "optimizer.betas.1": "0.999",
        "transforms.0._target_": "LoadImaged",
        "transforms.0.keys.0": "image",
        "transforms.0.keys.1": "label",
        "empty": "{}",
        "none_list": "[]",
        "amp": "True",
    }
    assert flatten_config({"a": {"b": 1}}, sep="/") == {"a/b": "1"}
    assert flatten_config({}) == {}


def test_long_values_are_truncated_with_a_marker() -> None:
    limit = mlflow_limits()["max_value_length"]
    flat = flatten_config({"note": "x" * (limit + 500), "short": "y" * limit})
    assert len(flat["note"]) == limit
    assert flat["note"].endswith(TRUNCATION_MARKER)
    assert flat["note"].startswith("x" * 100)
    assert flat["short"] == "y" * limit  # exactly at the limit: untouched


def test_truncation_keeps_the_start_when_room_allows() -> None:
    flat = flatten_config({"v": "a" * 50}, max_value_length=20)
    assert flat["v"] == "a" * (20 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER


def test_keys_are_sanitized_to_mlflow_rules() -> None:
    from mlflow.utils.validation import _validate_param_name

    flat = flatten_config({"data": {"roi:size@x": 1, "../up": 2, "a//b/": 3, "label→name": 4}})
    assert set(flat) == {"data.roi_size_x", "data.../up", "data.a/b", "data.label_name"}
    for key in flat:
        _validate_param_name(key)  # raises MlflowException if MLflow would reject it
    assert sanitize_key("/..") == "_.."
    assert sanitize_key("a/./b") == "a/_./b"
    assert sanitize_key("") == "_"
    for key in ("_..", "a/_./b", "_../x"):
        _validate_param_name(key)


def test_long_keys_are_cut_but_stay_distinct() -> None:
    limit = mlflow_limits()["max_key_length"]
    deep: dict[str, Any] = {"a" * 200: {"b" * 100 + "1": 1, "b" * 100 + "2": 2}}
    flat = flatten_config(deep)
    assert len(flat) == 2
    assert all(len(k) <= limit for k in flat)
    assert all(re.fullmatch(r"a+\.b+-[0-9a-f]{8}", k) for k in flat)


def test_keys_colliding_after_sanitizing_are_both_kept() -> None:
    flat = flatten_config({"a:b": 1, "a_b": 2})
    assert flat["a_b"] == "1"
    assert [v for k, v in flat.items() if re.fullmatch(r"a_b-[0-9a-f]{8}", k)] == ["2"]


def test_flatten_rejects_non_mappings() -> None:
    with pytest.raises(TypeError, match="expects a mapping, got list"):
        flatten_config([1, 2])  # type: ignore[arg-type]


class _RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    def log_batch(self, run_id: str, params: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.calls.append((run_id, list(params)))


def test_log_params_batched_respects_the_batch_limit() -> None:
    client = _RecordingClient()
    params = {f"p{i:03d}": str(i) for i in range(250)}
    assert log_params_batched(client, "run-1", params) == 3
    assert [len(batch) for _, batch in client.calls] == [100, 100, 50]
    assert {p.key: p.value for _, batch in client.calls for p in batch} == params
    assert {run for run, _ in client.calls} == {"run-1"}

"""Turn a nested config into MLflow params that MLflow accepts.

MLflow limits parameter keys (characters, length) and values (length), and a batch call
to at most 100 params. The limits are read from ``mlflow.utils.validation`` at run time
(they changed between MLflow 1, 2 and 3) with the MLflow 3 values as fallback. Long
values are truncated with a visible marker; the full config always goes to the run as
the ``config/resolved.json`` artifact, which is what a reproduction reads.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from medseg.errors import InvalidTypeError, InvalidValueError

TRUNCATION_MARKER = "…[truncated]"
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


@functools.lru_cache(maxsize=1)
def mlflow_limits() -> dict[str, int]:
    """MLflow's limits on params, read from the installed MLflow.

    Returns:
        ``{"max_key_length", "max_value_length", "max_params_per_batch",
        "max_tag_value_length", "max_metrics_per_batch"}``.
    """
    limits = {
        "max_key_length": 250,
        "max_value_length": 6000,
        "max_params_per_batch": 100,
        "max_tag_value_length": 8000,
        "max_metrics_per_batch": 1000,
    }
    try:
        from mlflow.utils import validation
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return limits
    names = {
        "max_key_length": "MAX_ENTITY_KEY_LENGTH",
        "max_value_length": "MAX_PARAM_VAL_LENGTH",
        "max_params_per_batch": "MAX_PARAMS_TAGS_PER_BATCH",
        "max_tag_value_length": "MAX_TAG_VAL_LENGTH",
        "max_metrics_per_batch": "MAX_METRICS_PER_BATCH",
    }
    for ours, theirs in names.items():
        value = getattr(validation, theirs, None)
        if isinstance(value, int) and value > 0:
            limits[ours] = value
    return limits


def truncate_value(text: str, max_length: int) -> str:
    """Cut ``text`` to ``max_length`` characters, ending with :data:`TRUNCATION_MARKER`.

    Args:
        text: the value.
        max_length: the longest allowed value.

    Returns:
        ``text`` unchanged when short enough.
    """
    if len(text) <= max_length:
        return text
    return text[: max(0, max_length - len(TRUNCATION_MARKER))] + TRUNCATION_MARKER


def sanitize_key(key: str, max_length: int | None = None) -> str:
    """Make ``key`` a valid MLflow param, metric or tag name.

    MLflow allows word characters, ``. - / space`` (and ``:`` except on Windows, so it
    is replaced too); the name must not look like a relative path (``..``, ``//``,
    leading or trailing ``/``). Too long keys keep their start and get a short hash so
    that two long keys stay distinct.

    Args:
        key: the raw key.
        max_length: the longest allowed key; default MLflow's.

    Returns:
        A valid key (``"_"`` for an empty one).
    """
    max_length = max_length or mlflow_limits()["max_key_length"]
    clean = _BAD_KEY_CHARS.sub("_", key)
    clean = re.sub(r"/+", "/", clean).strip("/")
    parts = [("_" + p if p.startswith("..") or p == "." else p) for p in clean.split("/")]
    clean = "/".join(parts) or "_"
    if len(clean) > max_length:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        clean = clean[: max_length - 9].rstrip("/") + "-" + digest
    return clean


# Top-level ids that are plain JSON but not settings: the workflow's lists, what medseg fills in
# (--resume, reproduce, the DDP rank, the output names the data decide) and the record of the run's values.
# ``plan``: a self-configured run's whole plan (medseg.planning); what it decides shows as the ids it
# sets (pixdim, roi_size, batch_size, normalization, ...), and the plan itself is an artifact.
NOT_SETTINGS = frozenset({"imports", "initialize", "run", "finalize", "overrides", "hyperparameters", "bundle_name",
                          "is_main_process", "reproduction_of", "resume_dir", "output_names", "plan"})


def _is_setting(value: Any, nested_expressions: bool = False, top: bool = True) -> bool:
    """Plain JSON a user sets (a number, a list, a dict of plain values), not wiring or code."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%")) or (nested_expressions and not top)
    if isinstance(value, list):
        return all(_is_setting(v, nested_expressions, False) for v in value)
    if isinstance(value, dict):
        return "_target_" not in value and all(_is_setting(v, nested_expressions, False) for v in value.values())
    return True


def config_settings(config: Mapping[str, Any], nested_expressions: bool = False) -> dict[str, Any]:
    """The top-level ids of a bundle config that hold plain settings, with their values.

    What ``--set id=value`` is for and what a run's MLflow params show: ids whose value is an
    expression (``$...``), a reference (``@...``) or a component (``_target_``) are the
    bundle's wiring, and the workflow lists (``imports``, ``run``, ...) are code; both are left
    out (the whole config is the run's ``config/resolved.json`` artifact).

    Args:
        config: the config.
        nested_expressions: also keep a dict of settings with an expression inside it (a
            source bundle's ``network_spec`` whose ``out_channels`` follows the data), as
            ``medseg train BUNDLE --help`` lists it; MLflow params are the resolved values.
    """
    return {k: v for k, v in config.items()
            if k not in NOT_SETTINGS and not str(k).startswith("_") and _is_setting(v, nested_expressions)}


def flatten_config(
    config: Mapping[str, Any],
    sep: str = ".",
    max_value_length: int | None = None,
    max_key_length: int | None = None,
) -> dict[str, str]:
    """Flatten a nested config into ``{"a.b.0.c": "value"}`` strings for MLflow params.

    Nested mappings join their keys with ``sep``; lists and tuples use the item index
    as key. Empty mappings and lists become ``"{}"`` and ``"[]"`` so that they still
    show. Values are ``str(value)``, truncated to MLflow's maximum value length with a
    ``…[truncated]`` marker; keys are sanitized with :func:`sanitize_key`. Run
    :func:`medseg.tracking.phi.scrub_phi` on the config first if it can hold patient
    identifiers (:class:`medseg.tracking.session.TrackingSession` does).

    Args:
        config: the resolved config.
        sep: the separator between nesting levels.
        max_value_length: override MLflow's limit (default: read from MLflow).
        max_key_length: override MLflow's key limit.

    Returns:
        A dict of string keys to string values, in config order.

    Raises:
        TypeError: ``config`` is not a mapping.
    """
    if not isinstance(config, Mapping):
        raise InvalidTypeError(f"flatten_config expects a mapping, got {type(config).__name__}")
    if max_value_length is None or max_key_length is None:
        limits = mlflow_limits()
        max_value_length = max_value_length or limits["max_value_length"]
        max_key_length = max_key_length or limits["max_key_length"]
    flat: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                visit(f"{prefix}{sep}{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)) and value:
            for index, item in enumerate(value):
                visit(f"{prefix}{sep}{index}" if prefix else str(index), item)
        else:
            if isinstance(value, Mapping):
                text = "{}"
            elif isinstance(value, (list, tuple)):
                text = "[]"
            else:
                text = str(value)
            key = sanitize_key(prefix, max_key_length)
            if key in flat:  # two raw keys sanitized to the same name: keep both
                key = sanitize_key(f"{key}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}", max_key_length)
            flat[key] = truncate_value(text, max_value_length)

    for key, item in config.items():
        visit(str(key), item)
    return flat


def log_params_batched(client_or_mlflow: Any, run_id: str, params: Mapping[str, str]) -> int:
    """Log params in batches of at most MLflow's per-call limit (100 in MLflow 3).

    Args:
        client_or_mlflow: an ``mlflow.MlflowClient`` (uses ``log_batch(run_id, ...)``)
            or the ``mlflow`` module itself (uses ``log_params`` on the active run,
            which must be ``run_id``).
        run_id: the run to log to.
        params: already flattened string params (see :func:`flatten_config`).

    Returns:
        The number of batch calls made.

    Raises:
        ValueError: the fluent API's active run is not ``run_id``.
    """
    items = [(str(k), str(v)) for k, v in params.items()]
    size = mlflow_limits()["max_params_per_batch"]
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    if hasattr(client_or_mlflow, "log_batch"):
        from mlflow.entities import Param

        for batch in batches:
            client_or_mlflow.log_batch(run_id, params=[Param(k, v) for k, v in batch])
    else:
        active = client_or_mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise InvalidValueError(f"log_params_batched: the active MLflow run is not {run_id}")
        for batch in batches:
            client_or_mlflow.log_params(dict(batch))
    return len(batches)

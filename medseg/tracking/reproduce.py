"""Read back what a reproduction needs from an MLflow run: config, manifest, tags, metrics.

The server is not trusted: each artifact must match the sha256 that the training run logged
as a param when it uploaded it (params cannot be changed through MLflow's API), and nothing
read here is ever executed: :mod:`medseg.engine.reproduce` retrains the *installed* bundle
with the run's plain-data values, checks the dataset on disk against the manifest, and
tags the new run ``medseg.reproduction_of=<original run id>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.connect import check_tracking_server, get_run_or_fail, make_client, resolve_tracking_uri
from medseg.tracking.manifest import validate_manifest
from medseg.tracking.upload import CONFIG_ARTIFACT, DIGEST_PARAMS, MANIFEST_ARTIFACT


def _check_digest(data: bytes, artifact: str, run_id: str, params: dict[str, str]) -> None:
    """Refuse an artifact whose sha256 is not one the run recorded when it logged it."""
    key = DIGEST_PARAMS[artifact]
    recorded = {v for k, v in params.items() if k == key or k.startswith(key + ".")}
    if not recorded:
        raise MedsegError(f"MLflow run {run_id}: no sha256 was recorded for {artifact} (param {key}); the run "
                          "predates artifact checks, so its artifacts cannot be verified. Pass --trust-bundle "
                          "to reproduce it anyway")
    digest = hashlib.sha256(data).hexdigest()
    if digest not in recorded:
        raise MedsegError(f"MLflow run {run_id}: artifact {artifact} was changed after training (sha256 "
                          f"{digest[:16]}... is not the {sorted(recorded)[0][:16]}... recorded at training time); "
                          "refusing to reproduce from it")


def _download_json(client: Any, run_id: str, artifact: str, folder: str, uri: str,
                   params: dict[str, str] | None = None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, artifact, folder)
    except (MlflowException, OSError) as err:
        raise MedsegError(
            f"MLflow run {run_id} at {uri} has no artifact {artifact}; it was not logged by medseg "
            f"or its logging failed ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    try:
        data = Path(local).read_bytes()
    except OSError as err:
        raise MedsegError(f"artifact {artifact} of MLflow run {run_id} cannot be read: {err}") from err
    if params is not None:
        _check_digest(data, artifact, run_id, params)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as err:
        raise MedsegError(f"artifact {artifact} of MLflow run {run_id} is not valid JSON: {err}") from err


def fetch_run_for_reproduction(
    uri: str | None,
    run_id: str,
    runs_dir: str | os.PathLike[str] = "runs",
    timeout_s: float = 5.0,
    verify: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, float]]:
    """Fetch the resolved config and dataset manifest that a run logged.

    Args:
        uri: the tracking URI of the original run (``None``: the local store).
        run_id: the original run's id.
        runs_dir: the folder of the local store.
        timeout_s: the server check's timeout.
        verify: check each artifact against the sha256 the run recorded (``False`` only when
            the user trusts the server: ``--trust-bundle``).

    Returns:
        ``(config, manifest, tags, metrics)``: the ``config/resolved.json`` and
        ``dataset/manifest.json`` artifacts, the run's tags, and the last value of
        each metric.

    Raises:
        MedsegError: the server is unreachable, the run does not exist, or an
            artifact is missing, malformed or changed since training.
    """
    resolved = resolve_tracking_uri(uri, runs_dir)
    check_tracking_server(resolved, timeout_s)
    client = make_client(resolved)
    run = get_run_or_fail(client, run_id, resolved)
    params = dict(run.data.params) if verify else None
    with tempfile.TemporaryDirectory(prefix="medseg-reproduce-") as tmp:
        config = _download_json(client, run_id, CONFIG_ARTIFACT, tmp, resolved, params)
        manifest = _download_json(client, run_id, MANIFEST_ARTIFACT, tmp, resolved, params)
    if not isinstance(config, dict):
        raise MedsegError(f"artifact {CONFIG_ARTIFACT} of MLflow run {run_id} is not a JSON object")
    validate_manifest(manifest, source=f"{MANIFEST_ARTIFACT} of run {run_id}")
    return config, manifest, dict(run.data.tags), dict(run.data.metrics)

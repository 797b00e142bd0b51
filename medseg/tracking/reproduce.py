"""Read back what a reproduction needs from an MLflow run: config, manifest, tags, metrics.

The reproduce command (later) checks the dataset on disk against the manifest with
:func:`medseg.tracking.manifest.verify_dataset`, stops with the list of differing files
if they do not match, and otherwise retrains in a new run tagged
``medseg.reproduction_of=<original run id>``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.connect import check_tracking_server, get_run_or_fail, make_client, resolve_tracking_uri
from medseg.tracking.manifest import validate_manifest
from medseg.tracking.session import CONFIG_ARTIFACT, MANIFEST_ARTIFACT


def _download_json(client: Any, run_id: str, artifact: str, folder: str, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, artifact, folder)
    except (MlflowException, OSError) as err:
        raise MedsegError(
            f"MLflow run {run_id} at {uri} has no artifact {artifact}; it was not logged by medseg "
            f"or its logging failed ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    try:
        return json.loads(Path(local).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MedsegError(f"artifact {artifact} of MLflow run {run_id} is not valid JSON: {err}") from err


def fetch_run_for_reproduction(
    uri: str | None,
    run_id: str,
    runs_dir: str | os.PathLike[str] = "runs",
    timeout_s: float = 5.0,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, float]]:
    """Fetch the resolved config and dataset manifest that a run logged.

    Args:
        uri: the tracking URI of the original run (``None``: the local store).
        run_id: the original run's id.
        runs_dir: the folder of the local store.
        timeout_s: the server check's timeout.

    Returns:
        ``(config, manifest, tags, metrics)``: the ``config/resolved.json`` and
        ``dataset/manifest.json`` artifacts, the run's tags, and the last value of
        each metric.

    Raises:
        MedsegError: the server is unreachable, the run does not exist, or an
            artifact is missing or malformed.
    """
    resolved = resolve_tracking_uri(uri, runs_dir)
    check_tracking_server(resolved, timeout_s)
    client = make_client(resolved)
    run = get_run_or_fail(client, run_id, resolved)
    with tempfile.TemporaryDirectory(prefix="medseg-reproduce-") as tmp:
        config = _download_json(client, run_id, CONFIG_ARTIFACT, tmp, resolved)
        manifest = _download_json(client, run_id, MANIFEST_ARTIFACT, tmp, resolved)
    if not isinstance(config, dict):
        raise MedsegError(f"artifact {CONFIG_ARTIFACT} of MLflow run {run_id} is not a JSON object")
    validate_manifest(manifest, source=f"{MANIFEST_ARTIFACT} of run {run_id}")
    return config, manifest, dict(run.data.tags), dict(run.data.metrics)

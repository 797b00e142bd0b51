"""Register a run's checkpoint or bundle in the MLflow Model Registry.

The registered version points at the logged artifact itself (``<run artifact
URI>/checkpoints/best.pt`` or ``.../bundle``). It is not an MLflow ``pyfunc`` model:
medseg checkpoints describe themselves and medseg loads them, so wrapping them in an
MLmodel would add a second, weaker description. This works the same against a local
sqlite store and a tracking server (whose registry requires the source to lie inside
the run's artifact root, as it does here).
"""

from __future__ import annotations

from typing import Any

REGISTERED_MODEL_TAG = "medseg.registered_model"


def _code(err: BaseException) -> str:
    return str(getattr(err, "error_code", "") or "")


def ensure_registered_model(client: Any, name: str) -> None:
    """Create registered model ``name`` unless it exists (safe against a concurrent create).

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as err:
        if _code(err) != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if _code(err) != "RESOURCE_ALREADY_EXISTS":  # another run created it meanwhile
            raise


def register_artifact(
    client: Any, run_id: str, name: str, artifact_path: str, description: str | None = None
) -> str:
    """Create a new version of model ``name`` whose source is a logged artifact of a run.

    Args:
        client: an ``mlflow.MlflowClient`` whose registry URI is set.
        run_id: the run that logged the artifact.
        name: the registered model name (created if missing).
        artifact_path: the logged file or folder, e.g. ``"checkpoints/best.pt"``.
        description: the version's description.

    Returns:
        The new version number, as a string.

    Raises:
        FileNotFoundError: the run has no artifact ``artifact_path``.
        mlflow.exceptions.MlflowException: the registry refused (e.g. a bad name).
    """
    clean = artifact_path.strip("/")
    parent = clean.rpartition("/")[0] or None
    if not any(info.path == clean for info in client.list_artifacts(run_id, parent)):
        raise FileNotFoundError(f"artifact {clean!r} was not logged to run {run_id}")
    ensure_registered_model(client, name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{clean}"
    version = client.create_model_version(
        name, source, run_id=run_id, description=description, await_creation_for=60
    )
    return str(version.version)

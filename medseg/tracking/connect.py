"""Choose the MLflow store, check that it answers, and get a client and an experiment.

The default store is embedded: an sqlite database ``<runs_dir>/mlflow.db`` with
artifacts in ``<runs_dir>/mlartifacts``, so tracking works with no server. A team
server is named by an ``http(s)://`` URI; it is checked with two short HTTP requests
(``/health`` and one API call) *before* training starts, so a wrong address or a stuck
server fails in seconds rather than hours in.
MLflow itself is imported lazily (about 2 s), so ``medseg --help`` stays fast.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.timeouts import apply_http_defaults

DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
_PASS_THROUGH_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def resolve_tracking_uri(uri: str | None, runs_dir: str | os.PathLike[str] = "runs") -> str:
    """Turn the ``--tracking-uri`` value into a full MLflow tracking URI.

    Args:
        uri: ``None`` or ``""`` for the embedded store; an ``http(s)://`` server; any
            URI MLflow understands (``sqlite:///``, ``postgresql://``, ``file:``); or a
            bare path to an ``.db`` file, taken as sqlite.
        runs_dir: the folder of the embedded store (created if missing).

    Returns:
        ``sqlite:///<abs runs_dir>/mlflow.db`` for ``None``; else the URI, with a
        trailing ``/`` removed from server addresses.

    Raises:
        MedsegError: the URI has an unknown scheme or is a bare path that is not ``.db``.
    """
    if not uri:
        runs = Path(runs_dir).absolute()
        runs.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(runs / DEFAULT_DB_NAME).as_posix()}"
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    if scheme.split("+")[0] in _PASS_THROUGH_SCHEMES:
        return uri
    if (not scheme or len(scheme) == 1) and uri.endswith(".db"):  # one letter: a Windows drive
        return f"sqlite:///{Path(uri).absolute().as_posix()}"
    raise MedsegError(
        f"tracking URI {uri!r} is not understood: use http(s)://host:port for a server, "
        "sqlite:///path/mlflow.db or a path ending in .db for a local store"
    )


def is_server_uri(uri: str) -> bool:
    """``True`` for ``http(s)://`` tracking URIs (a tracking server), else ``False``."""
    return urllib.parse.urlparse(uri).scheme.lower() in ("http", "https")


def local_artifact_root(uri: str) -> Path | None:
    """Where a local sqlite store keeps artifacts: ``mlartifacts`` beside the database.

    Args:
        uri: a tracking URI.

    Returns:
        The folder for ``sqlite:///`` URIs; ``None`` for every other store (a server
        decides itself, and for ``file:`` stores MLflow keeps them in the store).
    """
    if not uri.startswith("sqlite:///"):
        return None
    db_path = uri[len("sqlite:///") :].split("?", 1)[0]
    if db_path in ("", ":memory:"):
        return None
    return Path(db_path).parent / ARTIFACTS_DIR_NAME


def _auth_headers() -> dict[str, str]:
    """The same credentials MLflow's REST client would send (env variables)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}
    return {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return ssl._create_unverified_context()  # the user asked for it, as MLflow allows
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _get(url: str, timeout_s: float) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": "medseg", **_auth_headers()})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_ssl_context()) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when the tracking store cannot be used.

    For ``http(s)`` URIs this sends ``GET <uri>/health`` and then one API call,
    ``GET <uri>/api/2.0/mlflow/experiments/search?max_results=1``, each with
    ``timeout_s``: a server that answers ``/health`` but whose API is stuck (a hung
    worker, a locked database) would otherwise pass and stall the first real call. If
    ``/health`` is not 200 (a proxy may not route it) the API call decides alone. For
    ``sqlite`` URIs it checks that the database folder can be created. Other stores are
    checked when the client first connects.

    Args:
        uri: a resolved tracking URI (see :func:`resolve_tracking_uri`).
        timeout_s: the socket timeout of each request, in seconds.

    Raises:
        MedsegError: "MLflow tracking server at URI is not reachable: <reason>. Start
            it, pass --tracking-uri, or use --tracking-fallback local".
    """
    if not is_server_uri(uri):
        root = local_artifact_root(uri)
        if root is not None:
            try:
                root.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise MedsegError(f"MLflow store {uri} cannot be created: {err}") from err
        return
    hint = "Start it, pass --tracking-uri, or use --tracking-fallback local"
    health = None
    try:
        health = _get(f"{uri}/health", timeout_s)
        status = _get(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        if health == 200:
            raise MedsegError(f"MLflow tracking server at {uri} answers /health but its API did not answer "
                              f"({reason}); it may be stuck or overloaded. {hint}") from err
        raise MedsegError(f"MLflow tracking server at {uri} is not reachable: {reason}. {hint}") from err
    if status in (401, 403):
        raise MedsegError(
            f"MLflow tracking server at {uri} refused the credentials (HTTP {status}). "
            "Set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )
    if status != 200:
        raise MedsegError(f"MLflow tracking server at {uri} is not reachable: HTTP {status}. {hint}")


def server_answers(uri: str, timeout_s: float) -> bool:
    """Whether :func:`check_tracking_server` passes within ``timeout_s`` per request (a liveness probe)."""
    try:
        check_tracking_server(uri, timeout_s)
    except MedsegError:
        return False
    return True


def make_client(uri: str) -> Any:
    """An ``mlflow.MlflowClient`` for ``uri`` whose model registry is the same store.

    ``MLFLOW_REGISTRY_URI`` overrides the registry, as in MLflow itself. For a server, MLflow's
    HTTP timeout and retries are bounded first, unless the user set them
    (:func:`medseg.tracking.timeouts.apply_http_defaults`).

    Args:
        uri: a resolved tracking URI.

    Returns:
        The client.
    """
    # Progress bars of artifact downloads would garble training logs; users can re-enable them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if is_server_uri(uri):
        apply_http_defaults()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def _error_code(err: BaseException) -> str:
    return str(getattr(err, "error_code", "") or "")


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """Return the id of experiment ``name``, creating it if missing.

    In a local sqlite store the experiment's artifacts go to
    ``<db folder>/mlartifacts/<name>`` (MLflow's default would be ``./mlruns`` in
    whatever folder the process started from).

    Args:
        client: an ``MlflowClient``.
        name: the experiment name.
        uri: the client's tracking URI.

    Returns:
        The experiment id.

    Raises:
        MedsegError: the experiment was deleted, or the store refused to create it.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise MedsegError(
                f"MLflow experiment {name!r} is deleted in {uri}; restore it (mlflow experiments "
                f"restore --experiment-id {experiment.experiment_id}) or pick another name"
            )
        return str(experiment.experiment_id)
    location = None
    root = local_artifact_root(uri)
    if root is not None:
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "experiment"
        if folder != name:  # keep distinct names distinct after cleaning
            folder += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        location = (root / folder).absolute().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as err:
        if _error_code(err) == "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
            return str(client.get_experiment_by_name(name).experiment_id)
        raise MedsegError(f"cannot create MLflow experiment {name!r} in {uri}: {err}") from err


def current_user() -> str:
    """The login name for MLflow's ``mlflow.user`` tag (``"unknown"`` without one)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def get_run_or_fail(client: Any, run_id: str, uri: str) -> Any:
    """``client.get_run`` with a one-line :class:`MedsegError` for a run that does not exist.

    Args:
        client: an ``MlflowClient``.
        run_id: the run id.
        uri: the store, for the message.

    Returns:
        The ``mlflow.entities.Run``.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if _error_code(err) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise MedsegError(f"MLflow run {run_id} does not exist at {uri}") from err
        raise


def where_to_look(uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How a person opens a run: its page on a tracking server, or the ``mlflow ui`` command for a store.

    Args:
        uri: the full tracking URI the run uses (:func:`resolve_tracking_uri`).
        experiment_id: the run's experiment, for a server page.
        run_id: the run, for a server page.

    Returns:
        ``http://host:port/#/experiments/E/runs/R`` for a server; otherwise
        ``mlflow ui --backend-store-uri URI (then http://127.0.0.1:5000)``.
    """
    if urllib.parse.urlparse(uri).scheme.lower() in ("http", "https"):
        if experiment_id and run_id:
            return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}"
        return uri
    return f"mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)"

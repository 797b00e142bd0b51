"""Models named by an MLflow URI: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``.

``medseg infer`` and ``medseg export`` take such a URI where they take a bundle folder. The
tracking server is untrusted (stock MLflow has no authentication), so only data comes from it:
the checkpoint (read with ``weights_only=True``: weights and the network spec) and, from the
run's logged output bundle, the plain-JSON inference settings and metadata, reduced to the
values medseg reads as data. No config is executed.

What is downloaded lands in a cache folder named by the checkpoint's sha256,
``$MEDSEG_HOME/cache/models/<sha256>/`` laid out as a bundle (``models/model.pt``,
``configs/inference.json``, ``configs/metadata.json``), so that the same weights are stored
once, whatever URI named them, and a changed artifact on the server gives another folder.
A registered ensemble (``medseg export --format ensemble --register``) is downloaded whole:
each member as such a layout under ``members/``, with the checked member list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.manifest import sha256_file

_URI = re.compile(r"^(models|runs):/")
_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-zA-Z]+)/(?P<path>.+)$")
# The inference settings and metadata medseg reads as data; everything else of a downloaded config is dropped.
_SETTINGS = ("roi_size", "sw_batch_size", "sw_overlap", "network_spec", "label_convention")


def is_model_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names a model in MLflow rather than a folder."""
    return bool(_URI.match(str(text)))


def _locate(client: Any, uri: str) -> tuple[str, str]:
    """The run and the artifact path behind ``uri``."""
    from mlflow.exceptions import MlflowException

    runs = _RUNS.match(uri)
    if runs:
        return runs["run"], runs["path"].strip("/")
    models = _MODELS.match(uri)
    if not models:
        raise MedsegError(f"{uri}: not a model URI; use models:/NAME/VERSION, models:/NAME@ALIAS or "
                          "runs:/RUN_ID/PATH")
    try:
        if models["version"]:
            version = client.get_model_version(models["name"], models["version"])
        else:
            version = client.get_model_version_by_alias(models["name"], models["alias"])
        base = client.get_run(version.run_id).info.artifact_uri.rstrip("/")
    except MlflowException as err:
        raise MedsegError(f"{uri}: not found in the model registry ({str(err).splitlines()[0]})") from err
    if not version.run_id or not str(version.source).startswith(base + "/"):
        raise MedsegError(f"{uri}: its source {version.source} is not an artifact of its run; medseg reads "
                          "registered models that medseg train --register logged")
    return version.run_id, str(version.source)[len(base) + 1:]


def _plain_json(path: Path, keep: tuple[str, ...]) -> dict[str, Any]:
    """The ``keep`` entries of a JSON file that hold plain values (no ``$``/``@``/``%`` strings, no components)."""
    from medseg.engine.trust import code_in_value

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    plain = {}
    for key in keep:
        value = data.get(key)
        if value is not None and code_in_value(value) is None and not _has_reference(value):
            plain[key] = value
    return plain


def _has_reference(value: Any) -> bool:
    """Whether a config value holds an ``@id`` reference (meaningless outside its config)."""
    if isinstance(value, str):
        return value.startswith("@")
    if isinstance(value, dict):
        return any(_has_reference(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_reference(v) for v in value)
    return False


def fetch_model(uri: str, tracking_uri: str | None = None) -> Path:
    """Download the model ``uri`` names into the cache and return the folder (a bundle layout).

    Args:
        uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN_ID/PATH`` (a medseg
            checkpoint file, or an output bundle folder holding ``models/model.pt``).
        tracking_uri: the MLflow server (default ``$MLFLOW_TRACKING_URI``, else the local store).

    Returns:
        ``$MEDSEG_HOME/cache/models/<sha256 of the checkpoint>``.

    Raises:
        MedsegError: the server, the model or the artifact cannot be found, or it holds no
            checkpoint.
    """
    from mlflow.exceptions import MlflowException

    from medseg.engine.trust import medseg_home
    from medseg.inference.ensemble import bundle_members
    from medseg.tracking import check_tracking_server, resolve_tracking_uri
    from medseg.tracking.connect import make_client

    resolved = resolve_tracking_uri(tracking_uri)
    check_tracking_server(resolved)
    client = make_client(resolved)
    run_id, path = _locate(client, uri)
    cache = medseg_home() / "cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        try:
            local = Path(client.download_artifacts(run_id, path, str(staging / "artifact")))
        except (MlflowException, OSError) as err:
            raise MedsegError(f"{uri}: cannot download {path!r} of run {run_id} "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
        members = bundle_members(local) if local.is_dir() else None
        if members is not None:
            return _cache_ensemble(members, staging, cache, uri)
        checkpoint = local / "models" / "model.pt" if local.is_dir() else local
        if local.is_dir() and not checkpoint.is_file():  # a bundle logged without its weights (they are in
            try:                                         # checkpoints/, once)
                checkpoint = Path(client.download_artifacts(run_id, "checkpoints/model.pt", str(staging / "weights")))
            except (MlflowException, OSError):
                pass
        if not checkpoint.is_file():
            raise MedsegError(f"{uri}: artifact {path!r} of run {run_id} is neither a checkpoint file nor an output "
                              "bundle with models/model.pt")
        configs = local / "configs" if local.is_dir() else None
        sources = {}
        for name in ("inference.json", "metadata.json"):
            source = configs / name if configs is not None and (configs / name).is_file() else None
            if source is None:  # a checkpoint registered alone: the settings of the run's logged bundle
                try:
                    source = Path(client.download_artifacts(run_id, f"bundle/configs/{name}", str(staging)))
                except (MlflowException, OSError):
                    source = None
            sources[name] = source
        bundle = _plain_bundle(checkpoint, sources, staging / "bundle")
        return _into_cache(bundle, cache / sha256_file(bundle / "models" / "model.pt"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plain_bundle(checkpoint: Path, configs: dict[str, Path | None], bundle: Path) -> Path:
    """A bundle layout at ``bundle``: the checkpoint, and the plain settings and metadata of ``configs``."""
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    shutil.move(str(checkpoint), bundle / "models" / "model.pt")
    for name, keep in (("inference.json", _SETTINGS), ("metadata.json", ("network_data_format",))):
        source = configs.get(name)
        plain = _plain_json(source, keep) if source is not None else {}
        if plain:
            (bundle / "configs" / name).write_text(json.dumps(plain, indent=2) + "\n")
    return bundle


def _into_cache(bundle: Path, target: Path) -> Path:
    if not target.exists():
        try:
            os.replace(bundle, target)
        except OSError:
            if not target.is_dir():  # not a concurrent download of the same weights
                raise
    return target


def _cache_ensemble(members: list[Path], staging: Path, cache: Path, uri: str) -> Path:
    """An ensemble bundle's download as a cached bundle: each member's checkpoint and plain settings, the list.

    ``members`` are the downloaded bundle's member folders, as
    :func:`~medseg.inference.ensemble.bundle_members` checked them; the downloaded
    ``configs/inference.json`` is not kept (it is a config that runs code), only the list, as plain data. The cache folder is named by the sha256 of the members' sha256s, in order.
    """
    from medseg.inference.ensemble import MEMBERS_ID

    bundle = staging / "ensemble"
    names = []
    for k, member in enumerate(members):
        name = f"members/member_{k}"
        configs = {n: member / "configs" / n if (member / "configs" / n).is_file() else None
                   for n in ("inference.json", "metadata.json")}
        _plain_bundle(member / "models" / "model.pt", configs, bundle / name)
        names.append(name)
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(json.dumps({MEMBERS_ID: names}, indent=2) + "\n")
    digests = [sha256_file(bundle / n / "models" / "model.pt") for n in names]
    if len(digests) < 2:
        raise MedsegError(f"{uri}: an ensemble artifact without members")
    return _into_cache(bundle, cache / hashlib.sha256(" ".join(digests).encode()).hexdigest())


def model_source(bundle: str | os.PathLike[str], tracking_uri: str | None = None) -> Path:
    """``bundle`` as a folder: itself, or the cached download of the model a URI names."""
    return fetch_model(str(bundle), tracking_uri) if is_model_uri(bundle) else Path(bundle)

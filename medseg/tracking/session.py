"""One MLflow run of a medseg training: config, provenance, metrics, artifacts, registry.

:func:`medseg.tracking.opening.open_tracking` checks the store *before* training (fail fast, or fall back to
the local store with ``fallback="local"``), then the engine's small handlers call the
:class:`TrackingSession` methods. What runs at start (``start_run``, ``log_config``,
``log_provenance``) raises :class:`MedsegError` on failure; what runs during and after
training (metrics, artifacts, registration, ``end_run``) only logs a warning and
records the problem in ``session.errors``, so that a tracking hiccup never throws away
hours of training (``strict=True`` raises instead, for tests). After
``MAX_CONSECUTIVE_STORE_FAILURES`` store failures in a row the session stops calling
the store until ``end_run`` (counted in ``session.skipped``): MLflow's client retries
each request for minutes, which would otherwise stall every epoch of a run whose
server went away.

We do not use MONAI's ``MLFlowHandler``: it logs through MLflow's global fluent state,
which makes two stores in one process (tests, a fallback) fragile, and it has no
provenance, dataset manifest, PHI scrubbing, registry or fail-fast check. An explicit
``MlflowClient`` per session has none of these problems.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from medseg.errors import InvalidValueError, MedsegError
from medseg.tracking.connect import current_user, get_run_or_fail
from medseg.tracking.manifest import build_manifest
from medseg.tracking.null import NullTracker
from medseg.tracking.params import (
    flatten_config,
    log_params_batched,
    mlflow_limits,
    sanitize_key,
    truncate_value,
)
from medseg.tracking.phi import scrub_phi
from medseg.tracking.provenance import provenance_tags
from medseg.tracking.registry import REGISTERED_MODEL_TAG, register_artifact
from medseg.tracking.upload import (  # noqa: F401 - CONFIG_ARTIFACT, MANIFEST_ARTIFACT are part of this API
    CONFIG_ARTIFACT,
    MANIFEST_ARTIFACT,
    scrubbed_view,
    upload_text,
)

__all__ = ["NullTracker", "TrackingSession", "REPRODUCTION_OF_TAG"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
DIFF_ARTIFACT = "provenance/git_diff.patch"
ENVIRONMENT_ARTIFACT = "provenance/environment.json"
REPRODUCTION_OF_TAG = "medseg.reproduction_of"
MAX_CONSECUTIVE_STORE_FAILURES = 3


class TrackingSession:
    """Logs one run at a time to one MLflow store. Build it with :func:`medseg.tracking.opening.open_tracking`.

    Args:
        client: an ``mlflow.MlflowClient``.
        uri: its tracking URI.
        experiment: the experiment name.
        experiment_id: the experiment's id.
        fallback_from: the unreachable server URI when this is a local fallback.
        strict: raise :class:`MedsegError` on every logging failure instead of warning.
    """

    enabled = True

    def __init__(
        self,
        client: Any,
        uri: str,
        experiment: str,
        experiment_id: str,
        fallback_from: str | None = None,
        strict: bool = False,
    ) -> None:
        self.client = client
        self.uri = uri
        self.experiment = experiment
        self.experiment_id = experiment_id
        self.fallback_from = fallback_from
        self.strict = strict
        self.run_id: str | None = None
        self.errors: list[str] = []
        self.skipped = 0
        self._store_failures = 0
        self._resumed = False

    # -- helpers ---------------------------------------------------------------------
    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("TrackingSession: no active run; call start_run() first")
        return self.run_id

    def _best_effort(self, what: str, action: Callable[[], T], force: bool = False) -> T | None:
        if self._store_failures >= MAX_CONSECUTIVE_STORE_FAILURES and not force:
            self.skipped += 1  # the store is down: MLflow's retries would stall each epoch for minutes
            return None
        try:
            result = action()
        except Exception as err:  # any store, network or file error must not end training
            first_line = str(err).splitlines()[0] if str(err) else ""
            message = f"MLflow {what} failed: {type(err).__name__}: {first_line}"
            if self.strict:
                raise MedsegError(message) from err
            logger.warning("%s (training continues)", message)
            self.errors.append(message)
            if not isinstance(err, FileNotFoundError):  # a missing local file says nothing about the store
                self._store_failures += 1
                if self._store_failures == MAX_CONSECUTIVE_STORE_FAILURES:
                    logger.warning(
                        "MLflow store %s failed %d times in a row; skipping logging until end_run",
                        self.uri,
                        MAX_CONSECUTIVE_STORE_FAILURES,
                    )
            return None
        self._store_failures = 0
        return result

    def _at_start(self, what: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except MedsegError:
            raise
        except Exception as err:  # at start, failing fast is the point
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MedsegError(f"MLflow {what} failed at {self.uri}: {first_line}") from err

    def _set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        limit = mlflow_limits()["max_tag_value_length"]
        entities = [
            RunTag(sanitize_key(str(k)), truncate_value(str(v), limit)) for k, v in scrub_phi(tags).items()
        ]
        size = mlflow_limits()["max_params_per_batch"]
        for i in range(0, len(entities), size):
            self.client.log_batch(self._require_run(), tags=entities[i : i + size])

    def _log_text(self, text: str, artifact_file: str) -> None:
        upload_text(self.client, self._require_run(), text, artifact_file, resumed=self._resumed)

    # -- start -----------------------------------------------------------------------
    def start_run(
        self,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        resume_run_id: str | None = None,
    ) -> str:
        """Create a run, or reopen ``resume_run_id`` when resuming a training.

        Args:
            run_name: the run's display name (MLflow picks one when ``None``).
            tags: extra tags, e.g. ``{REPRODUCTION_OF_TAG: original_id}``; PHI is hashed.
            resume_run_id: the run to continue; its status goes back to RUNNING.

        Returns:
            The run id.

        Raises:
            MedsegError: the run to resume does not exist, or the store fails.
        """
        if self.run_id is not None:
            raise RuntimeError(f"TrackingSession: run {self.run_id} is still active; call end_run() first")
        base: dict[str, Any] = {
            "mlflow.user": current_user(),
            "mlflow.source.name": "medseg",
            "mlflow.source.type": "LOCAL",
        }
        if self.fallback_from:
            base["medseg.tracking_fallback_from"] = self.fallback_from
        base.update(tags or {})
        if resume_run_id:
            client = self.client
            run = self._at_start("finding the run", lambda: get_run_or_fail(client, resume_run_id, self.uri))
            self._at_start("reopening the run", lambda: client.update_run(resume_run_id, status="RUNNING"))
            self.run_id, self._resumed = resume_run_id, True
            count = int(run.data.tags.get("medseg.resume_count", "0")) + 1
            base = {k: v for k, v in base.items() if not k.startswith("mlflow.")}
            base["medseg.resume_count"] = count
        else:
            names = {"run_name": run_name} if run_name else {}
            create = self.client.create_run
            run = self._at_start("creating a run", lambda: create(self.experiment_id, **names))
            self.run_id, self._resumed = run.info.run_id, False
        self._at_start("setting run tags", lambda: self._set_tags(base))
        logger.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)
        return self.run_id

    def log_config(self, resolved_config: Mapping[str, Any]) -> dict[str, str]:
        """Log the flattened config as params and the whole config as ``config/resolved.json``.

        Patient identifiers are hashed first (:func:`scrub_phi`). MLflow params cannot
        change once logged: when resuming, params with a new value are skipped with a
        warning (tag ``medseg.params_changed_on_resume``); the artifact is replaced by
        the new config, which is the one the run finishes with.

        Args:
            resolved_config: the fully resolved bundle config.

        Returns:
            The params as logged (flattened, truncated).
        """
        run_id = self._require_run()
        config = scrub_phi(resolved_config)
        params = flatten_config(config)
        if self._resumed:
            existing = self._at_start("reading params", lambda: self.client.get_run(run_id).data.params)
            changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
            params = {k: v for k, v in params.items() if k not in existing}
            if changed:
                logger.warning("config changed on resume; MLflow keeps the old %s", ", ".join(changed))
                tag = {"medseg.params_changed_on_resume": ",".join(changed)}
                self._at_start("tagging", lambda: self._set_tags(tag))
        self._at_start("logging params", lambda: log_params_batched(self.client, run_id, params))
        text = json.dumps(config, indent=2, default=str) + "\n"
        self._at_start("logging the config artifact", lambda: self._log_text(text, CONFIG_ARTIFACT))
        return params

    def log_provenance(
        self,
        repo_path: str | os.PathLike[str],
        seed: int | None,
        device: Any,
        dataset_root: str | os.PathLike[str],
        dataset_files: list[str | os.PathLike[str]] | None = None,
    ) -> dict[str, Any]:
        """Tag the run with its code, versions, device, seed and dataset; log the manifest.

        Tags: ``medseg.git_commit``, ``medseg.git_dirty``, ``medseg.git_branch`` (and
        MLflow's ``mlflow.source.git.commit``), ``medseg.version.<package>``,
        ``medseg.device``, ``medseg.seed``, ``medseg.dataset_hash``,
        ``medseg.dataset_files``, ``medseg.dataset_bytes``. Artifacts:
        ``dataset/manifest.json``, ``provenance/environment.json`` and, when the
        checkout is dirty, ``provenance/git_diff.patch``.

        Args:
            repo_path: a folder inside the code's git checkout.
            seed: the random seed (``None`` is logged as ``"none"``).
            device: the training device (``"cuda:0"``, ``torch.device``...).
            dataset_root: the dataset folder.
            dataset_files: only these files of it (see :func:`build_manifest`).

        Returns:
            The dataset manifest.
        """
        prov = provenance_tags(repo_path, seed, device)
        manifest = build_manifest(dataset_root, dataset_files)
        tags = {
            **prov["tags"],
            "medseg.dataset_hash": manifest["dataset_hash"],
            "medseg.dataset_files": manifest["count"],
            "medseg.dataset_bytes": manifest["total_size"],
        }
        self._at_start("setting provenance tags", lambda: self._set_tags(tags))
        environment = json.dumps(prov["environment"], indent=2) + "\n"
        self._at_start("logging provenance", lambda: self._log_text(environment, ENVIRONMENT_ARTIFACT))
        if prov["diff"] is not None:
            self._at_start("logging the git diff", lambda: self._log_text(prov["diff"], DIFF_ARTIFACT))
        text = json.dumps(manifest, indent=1) + "\n"
        self._at_start("logging the dataset manifest", lambda: self._log_text(text, MANIFEST_ARTIFACT))
        return manifest

    # -- during and after training (best effort) ---------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one value per metric at ``step`` (the epoch), e.g. loss, Dice per region.

        Args:
            metrics: ``{name: number}``; tensors and numpy scalars are converted with
                ``float``. Names are sanitized for MLflow (``val_dice/TC`` stays).
            step: the epoch (or iteration) number.
        """
        from mlflow.entities import Metric

        run_id = self._require_run()
        stamp = int(time.time() * 1000)

        def log() -> None:
            entities = [Metric(sanitize_key(str(k)), float(v), stamp, int(step)) for k, v in metrics.items()]
            size = mlflow_limits()["max_metrics_per_batch"]
            for i in range(0, len(entities), size):
                self.client.log_batch(run_id, metrics=entities[i : i + size])

        self._best_effort(f"logging metrics at step {step}", log)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents (e.g. the output bundle), to the run, identifiers scrubbed.

        What is uploaded is :func:`scrubbed_view` of ``path``: every JSON file goes through
        :func:`scrub_phi`, as params and ``config/resolved.json`` do, and hidden files (the
        output folder's lock) stay behind.

        Args:
            path: the local file or folder.
            artifact_path: the folder inside the run's artifacts (``None``: the top).
        """
        run_id = self._require_run()

        def log() -> None:
            local = Path(path)
            if not local.exists():
                raise FileNotFoundError(f"{local} does not exist")
            with tempfile.TemporaryDirectory(prefix="medseg-upload-") as tmp:
                staged = scrubbed_view(local, Path(tmp))
                if local.is_dir():
                    self.client.log_artifacts(run_id, str(staged), artifact_path)
                else:
                    self.client.log_artifact(run_id, str(staged), artifact_path)

        self._best_effort(f"uploading {path}", log)

    def log_figure_png(self, path: str | os.PathLike[str], artifact_path: str = "figures") -> None:
        """Upload a PNG (training curves, validation overlays) under ``figures/``.

        Args:
            path: the PNG written by :mod:`medseg.tracking.plots`.
            artifact_path: the artifact folder.
        """
        self.log_artifact(path, artifact_path)

    def register_model(
        self, name: str, artifact_path: str = "checkpoints", description: str | None = None
    ) -> str | None:
        """Register a logged artifact as a new version of model ``name`` in the registry.

        See :func:`medseg.tracking.registry.register_artifact`; the run gets the tag
        ``medseg.registered_model=<name>/<version>``.

        Args:
            name: the registered model name.
            artifact_path: the logged file or folder, e.g. ``"checkpoints/best.pt"``.
            description: the version's description.

        Returns:
            The new version number as a string, or ``None`` if registration failed.
        """
        run_id = self._require_run()

        def register() -> str:
            version = register_artifact(self.client, run_id, name, artifact_path, description)
            self._set_tags({REGISTERED_MODEL_TAG: f"{name}/{version}"})
            return version

        return self._best_effort(f"registering model {name!r}", register)

    def end_run(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with a final status.

        Args:
            status: ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``.
            reason: why it failed; logged as tag ``medseg.failure_reason``.

        Raises:
            ValueError: an unknown status.
        """
        if status not in RUN_STATUSES:
            raise InvalidValueError(f"end_run status must be one of {RUN_STATUSES}, got {status!r}")
        if self.run_id is None:
            return
        tags: dict[str, Any] = {}
        if reason:
            tags["medseg.failure_reason"] = reason
        if self.errors:
            tags["medseg.tracking_errors"] = f"{len(self.errors)}: {self.errors[0]}"
        if self.skipped:
            tags["medseg.tracking_skipped_calls"] = self.skipped
        if tags:
            self._best_effort("tagging the run's end", lambda: self._set_tags(tags), force=True)
        run_id = self.run_id
        end = self.client.set_terminated
        self._best_effort(f"ending run {run_id}", lambda: end(run_id, status), force=True)
        self.run_id = None

    def __enter__(self) -> TrackingSession:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.run_id is None:
            return
        if exc is None:
            self.end_run("FINISHED")
        else:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.end_run(status, reason=f"{type(exc).__name__}: {exc}")

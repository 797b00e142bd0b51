"""One MLflow run of a medseg training: config, provenance, metrics, artifacts, registry.

:func:`medseg.tracking.opening.open_tracking` checks the store *before* training (fail fast, or fall back to
the local store with ``fallback="local"``), then the engine's small handlers call the
:class:`TrackingSession` methods. What runs at start (``start_run``, ``log_config``,
``log_provenance``) must succeed: it raises :class:`MedsegError` on failure, and on a
server that does not answer within :func:`~medseg.tracking.timeouts.start_timeout_s`.
What runs during and after training (metrics, artifacts, registration, the run's end)
is handed to a background thread (:mod:`medseg.tracking.worker`) and training goes on at
once; a failure only logs a warning and is recorded in ``session.errors``, so a tracking
hiccup never throws away hours of training (``strict=True`` writes at once and raises
instead, for tests). For a server, those records are journaled first in the local spool
``<runs_dir>/spool/<run_id>`` (:mod:`medseg.tracking.spool`): if the server stalls or goes
away, ``end_run`` waits a bounded time, leaves the rest there and says to run ``medseg
tracking sync RUN`` (:mod:`medseg.tracking.sync`), which completes the run on the server.

We do not use MONAI's ``MLFlowHandler``: it logs through MLflow's global fluent state,
which makes two stores in one process (tests, a fallback) fragile, and it has no
provenance, dataset manifest, PHI scrubbing, registry or fail-fast check. An explicit
``MlflowClient`` per session has none of these problems.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from medseg.errors import InvalidValueError, MedsegError
from medseg.tracking.connect import current_user, get_run_or_fail, is_server_uri
from medseg.tracking.manifest import build_manifest
from medseg.tracking.null import NullTracker
from medseg.tracking.outbox import Outbox
from medseg.tracking.dataset_input import log_dataset_input
from medseg.tracking.params import config_settings, flatten_config, log_params_batched
from medseg.tracking.phi import scrub_phi
from medseg.tracking.provenance import provenance_tags
from medseg.tracking.records import apply_record, end_record, metrics_record, register_record, tags_record
from medseg.tracking.timeouts import ServerTimeout, call_with_deadline, flush_timeout_s, start_timeout_s
from medseg.tracking.upload import (
    CONFIG_ARTIFACT,
    MANIFEST_ARTIFACT,
    upload_text,
)

__all__ = ["REPRODUCTION_OF_TAG", "NullTracker", "TrackingSession"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
DIFF_ARTIFACT = "provenance/git_diff.patch"
ENVIRONMENT_ARTIFACT = "provenance/environment.json"
REPRODUCTION_OF_TAG = "medseg.reproduction_of"
SERVER_HINT = "Start it, pass --tracking-uri, or use --tracking-fallback local"


class TrackingSession:
    """Logs one run at a time to one MLflow store. Build it with :func:`medseg.tracking.opening.open_tracking`.

    Args:
        client: an ``mlflow.MlflowClient``.
        uri: its tracking URI.
        experiment: the experiment name.
        experiment_id: the experiment's id.
        fallback_from: the unreachable server URI when this is a local fallback.
        strict: write every record at once and raise :class:`MedsegError` on every
            logging failure instead of warning (no background thread, no spool).
        spool_dir: where records for a server wait until it confirms them
            (``<runs_dir>/spool``); ``None``: no spool (local stores).
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
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.client = client
        self.uri = uri
        self.experiment = experiment
        self.experiment_id = experiment_id
        self.fallback_from = fallback_from
        self.strict = strict
        self.spool_dir = Path(spool_dir).absolute() if spool_dir is not None else None
        self.run_id: str | None = None
        self.errors: list[str] = []
        self.spooled = 0  # records the last end_run left in the spool, for `medseg tracking sync`
        self._resumed = False
        self._outbox: Outbox | None = None

    # -- helpers ---------------------------------------------------------------------
    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("TrackingSession: no active run; call start_run() first")
        return self.run_id

    def _at_start(self, what: str, action: Callable[[], T]) -> T:
        try:
            if is_server_uri(self.uri):
                return call_with_deadline(action, start_timeout_s(), what)
            return action()
        except ServerTimeout as err:
            raise MedsegError(f"MLflow tracking server at {self.uri}: {err}; it may be stuck or overloaded. "
                              f"{SERVER_HINT}") from None
        except MedsegError:
            raise
        except Exception as err:  # at start, failing fast is the point
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MedsegError(f"MLflow {what} failed at {self.uri}: {first_line}") from err

    def _set_tags(self, tags: Mapping[str, Any]) -> None:
        apply_record(self.client, self._require_run(), tags_record(tags))

    def _log_text(self, text: str, artifact_file: str) -> None:
        upload_text(self.client, self._require_run(), text, artifact_file, resumed=self._resumed)

    def _record_error(self, message: str) -> None:
        logger.warning("%s (training continues)", message)
        self.errors.append(message)

    def _box(self) -> Outbox:
        """The active run's outbox, made when the run id is known (so a failed start can still end the run)."""
        run_id = self._require_run()
        if self._outbox is None:
            self._outbox = Outbox(lambda: self.client, self.uri, run_id, self.spool_dir, self._record_error,
                                  self.strict)
        return self._outbox

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
        self._box()
        self._at_start("setting run tags", lambda: self._set_tags(base))
        logger.debug("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, self.uri)
        return self.run_id

    def log_config(self, resolved_config: Mapping[str, Any]) -> dict[str, str]:
        """Log the config's settings as params and the whole config as ``config/resolved.json``.

        The params are the plain top-level settings (:func:`~medseg.tracking.params.config_settings`:
        no imports, expressions, references or components), nested values flattened with dots
        (``network_spec.kwargs.features``).

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
        params = flatten_config(config_settings(config))
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
        ``medseg.dataset_files``, ``medseg.dataset_bytes``; the dataset as the run's MLflow
        dataset input (:func:`~medseg.tracking.dataset_input.log_dataset_input`). Artifacts:
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
        if not self._resumed:
            self._at_start("logging the dataset input",
                           lambda: log_dataset_input(self.client, self._require_run(), dataset_root, manifest))
        return manifest

    # -- during and after training (background, best effort) ---------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one value per metric at ``step`` (the epoch), e.g. loss, Dice per region.

        Returns at once: the values are written by the background thread.

        Args:
            metrics: ``{name: number}``; tensors and numpy scalars are converted with
                ``float``. Names are sanitized for MLflow (``val_dice/TC`` stays).
            step: the epoch (or iteration) number.
        """
        box = self._box()
        try:
            record = metrics_record(metrics, step)
        except (TypeError, ValueError) as err:
            message = f"MLflow logging metrics at step {step} failed: {type(err).__name__}: {err}"
            if self.strict:
                raise MedsegError(message) from err
            self._record_error(message)
            return
        box.send(record)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None,
                     exclude: tuple[str, ...] = ()) -> None:
        """Upload a file, or a folder's contents (e.g. the output bundle), to the run, identifiers scrubbed.

        What is uploaded is :func:`~medseg.tracking.upload.scrubbed_view` of ``path``, taken now: every JSON file goes
        through :func:`scrub_phi`, as params and ``config/resolved.json`` do, and hidden files
        (the output folder's lock) stay behind. The upload itself happens in the background.

        Args:
            path: the local file or folder.
            artifact_path: the folder inside the run's artifacts (``None``: the top).
            exclude: for a folder, top-level entries left out (``("models",)``).
        """
        box, local = self._box(), Path(path)
        try:
            if not local.exists():
                raise FileNotFoundError(f"{local} does not exist")
            record = box.stage(local, artifact_path, exclude)
        except Exception as err:  # a missing or unreadable file must not end training
            first_line = str(err).splitlines()[0] if str(err) else ""
            message = f"MLflow uploading {path} failed: {type(err).__name__}: {first_line}"
            if self.strict:
                raise MedsegError(message) from err
            self._record_error(message)
            return
        box.send(record)

    def log_figure_png(self, path: str | os.PathLike[str], artifact_path: str = "figures") -> None:
        """Upload a PNG written by :mod:`medseg.tracking.plots` (curves, overlays) under ``artifact_path``."""
        self.log_artifact(path, artifact_path)

    def register_model(
        self, name: str, artifact_path: str = "checkpoints", description: str | None = None
    ) -> str | None:
        """Register a logged artifact as a new version of model ``name`` in the registry.

        See :func:`medseg.tracking.registry.register_artifact`; the run gets the tag
        ``medseg.registered_model=<name>/<version>``. Waits for the artifacts queued before
        it, at most :func:`~medseg.tracking.timeouts.flush_timeout_s`; a registration the
        server has not confirmed by then stays queued (and spooled, for ``sync``).

        Args:
            name: the registered model name.
            artifact_path: the logged file or folder, e.g. ``"checkpoints/best.pt"``.
            description: the version's description.

        Returns:
            The new version number as a string, or ``None`` if registration failed or waits.
        """
        box = self._box()
        version = box.send_and_wait(register_record(name, artifact_path, description), flush_timeout_s())
        if version is None and box.writer is not None and box.writer.pending:
            logger.warning("MLflow registering model %r: no answer from %s yet; it stays queued", name, self.uri)
        return version

    def end_run(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with a final status, after the queued records (a bounded wait).

        What the server has not taken within :func:`~medseg.tracking.timeouts.flush_timeout_s`
        (less when it is found not answering) stays in the spool; a warning gives the
        ``medseg tracking sync`` command, and ``self.spooled`` counts the records.

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
        run_id = self.run_id
        try:
            box = self._box()
            if tags:
                box.send(tags_record(tags))
            box.send(end_record(status))
        finally:
            self.run_id = None
            self._close_outbox(run_id)

    def _close_outbox(self, run_id: str) -> None:
        outbox, self._outbox = self._outbox, None
        self.spooled = outbox.close(flush_timeout_s()) if outbox is not None else 0
        if self.spooled and outbox is not None and outbox.spool is not None:
            message = (f"MLflow tracking server at {self.uri} has not taken {self.spooled} record(s) of run "
                       f"{run_id}; they are kept in {outbox.spool.folder}. Send them when it answers again: "
                       f"medseg tracking sync {run_id}")
            logger.warning("%s", message)
            self.errors.append(message)

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

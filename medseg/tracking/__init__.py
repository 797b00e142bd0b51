"""Experiment tracking with MLflow: provenance, dataset manifests, metrics, registry.

Nothing here imports MLflow, torch or matplotlib at import time; they load on first use.
See ``docs/tracking.md`` for what a run logs, and for what happens when the server stalls
(bounded waits, a background writer, the local spool and ``medseg tracking sync``).
"""

from __future__ import annotations

from medseg.tracking.connect import check_tracking_server, resolve_tracking_uri
from medseg.tracking.manifest import (
    ManifestDiff,
    build_manifest,
    compare_manifest,
    read_manifest,
    verify_dataset,
    write_manifest,
)
from medseg.tracking.null import NullTracker
from medseg.tracking.opening import open_tracking
from medseg.tracking.params import flatten_config, log_params_batched
from medseg.tracking.phi import scrub_phi
from medseg.tracking.provenance import device_description, git_diff, git_info, package_versions
from medseg.tracking.reproduce import fetch_run_for_reproduction
from medseg.tracking.session import REPRODUCTION_OF_TAG, TrackingSession
from medseg.tracking.sync import SyncReport, sync_run

__all__ = [
    "REPRODUCTION_OF_TAG",
    "ManifestDiff",
    "NullTracker",
    "SyncReport",
    "TrackingSession",
    "build_manifest",
    "check_tracking_server",
    "compare_manifest",
    "device_description",
    "fetch_run_for_reproduction",
    "flatten_config",
    "git_diff",
    "git_info",
    "log_params_batched",
    "open_tracking",
    "package_versions",
    "read_manifest",
    "resolve_tracking_uri",
    "scrub_phi",
    "sync_run",
    "verify_dataset",
    "write_manifest",
]

"""A tracker for untracked runs: the :class:`TrackingSession` interface doing nothing.

The engine's handlers call the same methods whether tracking is on or off, so no
handler needs an ``if tracking:`` branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class NullTracker:
    """Stands in for :class:`TrackingSession` in untracked runs: every method does nothing."""

    enabled = False

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.errors: list[str] = []

    def start_run(
        self,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        """Do nothing."""

    def log_config(self, resolved_config: Mapping[str, Any]) -> dict[str, str]:
        """Do nothing; return no params."""
        return {}

    def log_provenance(
        self, repo_path: Any, seed: Any, device: Any, dataset_root: Any, dataset_files: Any = None
    ) -> dict[str, Any]:
        """Do nothing; return an empty dict (no manifest is built)."""
        return {}

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Do nothing."""

    def log_artifact(self, path: Any, artifact_path: str | None = None, exclude: tuple[str, ...] = ()) -> None:
        """Do nothing."""

    def log_figure_png(self, path: Any, artifact_path: str = "figures") -> None:
        """Do nothing."""

    def register_model(
        self, name: str, artifact_path: str = "checkpoints", description: str | None = None
    ) -> None:
        """Do nothing."""

    def end_run(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Do nothing."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

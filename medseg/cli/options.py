"""Command-line options that several subcommands share, defined once."""

from __future__ import annotations

import argparse
import os

BUNDLE_OR_MODEL_HELP = ("models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH (weights, spec and plain "
                        "settings only)")


def add_tracking_uri(parser: argparse.ArgumentParser, purpose: str = "MLflow tracking URI") -> None:
    """``--tracking-uri``, defaulting to MLflow's own ``$MLFLOW_TRACKING_URI`` (containers set it to their store)."""
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or None,
                        help=f"{purpose} (default: $MLFLOW_TRACKING_URI, else the sqlite store under runs/)")

"""``medseg tracking sync RUN``: send what a run kept locally while its tracking server was away."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tracking`` command group to the CLI."""
    tracking = subparsers.add_parser("tracking", help="MLflow tracking: send runs kept locally to the server")
    sub = tracking.add_subparsers(dest="tracking_command", metavar="ACTION", required=True)

    sync = sub.add_parser(
        "sync", help="write the records a run kept in runs/spool (server stalled or away) to the tracking server")
    sync.add_argument("run_id", metavar="RUN", help="the MLflow run id (printed by `medseg train`)")
    sync.add_argument("--tracking-uri", default=None,
                      help="server to write to (default: the one the run was started on)")
    sync.add_argument("--runs-dir", type=Path, default=Path("runs"),
                      help="the folder that holds spool/ (default: runs, as for training)")
    sync.set_defaults(func=run_sync)


def run_sync(args: argparse.Namespace) -> int:
    """Send the run's spooled records and print what was written."""
    from medseg.tracking.sync import sync_run

    report = sync_run(args.run_id, tracking_uri=args.tracking_uri, runs_dir=args.runs_dir)
    print(report.format())
    return 0

"""``medseg demo``: the main job on embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the CLI."""
    demo = subparsers.add_parser("demo", help="synthetic data -> train -> infer -> evaluate, on the CPU")
    demo.add_argument("--workdir", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    demo.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store runs/mlflow.db)")
    demo.add_argument("--resume", action="store_true",
                      help="continue the newest interrupted training run under WORKDIR/run (after Ctrl-C or SIGTERM)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where everything is."""
    from medseg.demo import run_demo

    result = run_demo(args.workdir, tracking_uri=args.tracking_uri, resume=args.resume)
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    dice = ", ".join(f"{k} {v:.3f}" for k, v in result.mean_dice.items())
    print()
    print(f"held-out mean Dice: {dice}")
    print(f"time: {total:.0f} s ({steps})")
    print(f"masks:        {result.predictions}")
    print(f"evaluation:   {result.metrics_csv} (+ summary.json, boxplot.png, montage.png)")
    print(f"run bundle:   {result.run_dir} (figures/ has the training curves and validation overlays)")
    print(f"MLflow run:   {result.run_id}")
    from medseg.tracking.connect import resolve_tracking_uri, where_to_look

    print(f"open it with: {where_to_look(resolve_tracking_uri(args.tracking_uri))}")
    return 0

"""``medseg demo``: the main job on embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the CLI."""
    demo = subparsers.add_parser("demo", help="synthetic data -> train -> infer -> evaluate, on the CPU")
    demo.add_argument("--workdir", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    demo.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store runs/mlflow.db)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where everything is."""
    from medseg.demo import run_demo

    result = run_demo(args.workdir, tracking_uri=args.tracking_uri)
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
    print("open it with: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db   (then http://127.0.0.1:5000)")
    return 0

"""``medseg plan``: fingerprint a 3D dataset and plan its training, as nnU-Net does."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.progress import progress_printer


def add_gpu_memory(parser: argparse.ArgumentParser) -> None:
    """The ``--gpu-memory`` option of ``medseg plan`` and ``medseg train --plan auto``."""
    parser.add_argument("--gpu-memory", type=float, default=8.0, metavar="GiB",
                        help="GPU memory the patch and batch size are planned for (default 8, nnU-Net's); with a "
                             "GPU present the plan is checked by one measured training step")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the CLI."""
    plan = subparsers.add_parser(
        "plan", help="fingerprint a 3D dataset and write fingerprint.json and plan.json (spacing, patch, batch, "
                     "normalisation, network) for bundles/generic_3d --plan")
    plan.add_argument("data", type=Path, help="dataset folder (nnU-Net/MSD layout or BraTS case folders)")
    plan.add_argument("--out", type=Path, default=None,
                      help="folder for fingerprint.json and plan.json (default plans/<dataset folder name>)")
    add_gpu_memory(plan)
    plan.add_argument("--workers", type=int, default=None, help="reader processes (default: every core)")
    plan.add_argument("--overwrite", action="store_true", help="replace fingerprint.json and plan.json in --out")
    plan.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Plan and print the plan as a table."""
    from medseg.planning import format_plan, plan_dataset

    out = args.out if args.out is not None else Path("plans") / Path(args.data).resolve().name
    result = plan_dataset(args.data, out, gpu_memory_gib=args.gpu_memory, workers=args.workers,
                          overwrite=args.overwrite, progress=progress_printer("fingerprint"))
    print(format_plan(result.plan))
    print(f"wrote {result.fingerprint_path} and {result.plan_path}")
    print(f"train from it: medseg train bundles/generic_3d --data {args.data} --plan {result.plan_path}")
    return 0

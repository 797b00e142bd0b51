"""``medseg evaluate``: score a folder of predictions against the truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.cli.progress import progress_printer
from medseg.errors import InvalidValueError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command to the CLI."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions against the truth (BraTS, ISIC or generic labels)",
        description="Write a CSV with one row per truth case, a summary JSON, a box plot and a "
                    "worst/best-case montage. Exit status 1 if any case could not be evaluated.",
    )
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predictions")
    parser.add_argument("--truth", required=True, type=Path, metavar="DIR",
                        help="truth dataset (BraTS, MSD, ISIC 2018, nnU-Net) or a flat folder of masks")
    parser.add_argument("--task", required=True, choices=["brats", "isic", "labels"],
                        help="brats: Dice/HD95 of WT, TC, ET; isic: (thresholded) Jaccard, Dice, precision, "
                             "recall, specificity; labels: per-class Dice/HD95")
    parser.add_argument("--out", required=True, type=Path, metavar="CSV",
                        help="per-case CSV to write; summary.json, boxplot.png and montage.png go beside it")
    parser.add_argument("--convention", default=None,
                        help="label convention of truth and predictions (brats2021, brats2023, msd_brain); "
                             "default: the discovered dataset's, or brats2021 for a flat folder")
    parser.add_argument("--classes", type=int, nargs="+", metavar="VALUE", default=None,
                        help="labels task: the label values to score "
                             "(default: dataset.json's, else all found)")
    parser.add_argument("--montage-cases", type=int, default=3, metavar="N",
                        help="worst and best cases shown in the montage, N of each "
                             "(default 3; 0: no montage)")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print the summary table, and return 1 if any case failed."""
    from medseg.evaluation.runner import evaluate

    if args.montage_cases < 0:
        raise InvalidValueError(f"--montage-cases must be >= 0, got {args.montage_cases}")
    result = evaluate(
        args.pred, args.truth, args.task, args.out,
        convention=args.convention, classes=args.classes, montage_cases=args.montage_cases,
        progress=progress_printer(f"evaluate {args.task}"),
    )
    print(result.format_table())
    for path in result.unmatched_predictions:
        print(f"warning: {path}: prediction without a truth case (ignored)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0 if result.ok else 1

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
        help="score predictions against the truth (BraTS, BraTS lesion-wise, ISIC or generic labels)",
        description="Write a CSV with one row per truth case, a summary JSON, a box plot and a "
                    "worst/best-case montage (brats-lesionwise: a lesions CSV and a lesion volume/Dice "
                    "scatter instead of the montage). Exit status 1 if any case could not be evaluated.",
    )
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predictions")
    parser.add_argument("--truth", required=True, type=Path, metavar="DIR",
                        help="truth dataset (BraTS, MSD, ISIC 2018, nnU-Net) or a flat folder of masks")
    parser.add_argument("--task", required=True, choices=["brats", "brats-lesionwise", "isic", "labels"],
                        help="brats: Dice/HD95 of WT, TC, ET (and RC for BraTS 2024+ labels); brats-lesionwise: "
                             "the BraTS lesion-wise scores of --rules; isic: (thresholded) Jaccard, Dice, "
                             "precision, recall, specificity; labels: per-class Dice/HD95")
    parser.add_argument("--out", required=True, type=Path, metavar="CSV",
                        help="per-case CSV to write; summary.json, boxplot.png and montage.png go beside it")
    parser.add_argument("--convention", "--labels", dest="convention", default=None,
                        help="label convention of truth and predictions (brats2021, brats2023, brats2024, "
                             "msd_brain); default: the discovered dataset's (BraTS 2023 naming with a resection "
                             "cavity, 4, and ET, 3, in the truth: brats2024), or for a flat folder brats2021 "
                             "(brats-lesionwise: brats2023)")
    parser.add_argument("--rules", default=None, choices=["brats2023", "brats2025"],
                        help="brats-lesionwise: brats2023, the published 2023 rules (lesions merged by "
                             "dilation), computed by medseg; brats2025, the official brats-evaluation package "
                             "of 2024-2025 (pip install 'medseg[brats]')")
    parser.add_argument("--challenge", default="GLI", choices=["GLI", "SSA", "PED", "MEN", "MET"],
                        help="brats-lesionwise: the challenge whose parameters (2023: dilation and volume "
                             "threshold) or official config (2025) apply (default GLI)")
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
    if args.task == "brats-lesionwise" and args.rules is None:
        raise InvalidValueError("--task brats-lesionwise needs --rules brats2023 or brats2025")
    result = evaluate(
        args.pred, args.truth, args.task, args.out,
        convention=args.convention, classes=args.classes, montage_cases=args.montage_cases,
        progress=progress_printer(f"evaluate {args.task}"), rules=args.rules, challenge=args.challenge,
    )
    print(result.format_table())
    for path in result.unmatched_predictions:
        print(f"warning: {path}: prediction without a truth case (ignored)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0 if result.ok else 1

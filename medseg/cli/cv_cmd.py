"""``medseg cv``: k-fold cross-validation of a bundle, tracked as one MLflow parent run with a child per fold."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.options import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cv`` to the CLI."""
    cv = subparsers.add_parser(
        "cv", help="cross-validate a bundle: every fold trained into CV_DIR/fold_K with its out-of-fold masks, "
                   "scored together; one MLflow parent run, a child run per fold; run again to resume")
    cv.add_argument("bundle", type=Path, metavar="BUNDLE|select",
                    help="bundle folder, e.g. bundles/generic_3d; or 'select' followed by finished CV_DIRs: compare "
                         "each configuration and every ensemble of them on the out-of-fold cases, write selection.json")
    cv.add_argument("cv_dirs", type=Path, nargs="*", metavar="CV_DIR", help="with select: the cross-validations")
    cv.add_argument("--data", type=Path, help="dataset folder (required to train)")
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    cv.add_argument("--output", type=Path, help="cross-validation folder, new or one to resume "
                                                "(default runs/cv/<bundle>/<time>-<random>)")
    cv.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                    help="override a config id in every fold, e.g. --set max_epochs=100")
    cv.add_argument("--preset", choices=["cpu-tryout"], help="as for medseg train")
    cv.add_argument("--save-prob", action="store_true",
                    help="also keep the out-of-fold probability maps (fold_K/oof/<case>_prob.nii.gz)")
    add_tracking_uri(cv)
    cv.add_argument("--tracking-fallback", choices=["none", "local"],
                    help="'local': use the local store if the server is unreachable (default: fail fast)")
    cv.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    cv.add_argument("--trust-bundle", action="store_true", help="as for medseg train")
    cv.add_argument("--devices", nargs="+", metavar="DEVICE",
                    help="train folds side by side, one per device at a time, each as its own 'medseg train' "
                         "process that sees that device alone: GPU indices or cuda:N (--devices 0 1, or 0,1), or "
                         "cpu (--devices cpu cpu: two CPU processes); a fold's output goes to CV_DIR/logs/fold_K.log. "
                         "Default: one fold after another in this process. A resumed cv may use other devices")
    cv.set_defaults(func=run_cv_command)


def run_cv_command(args: argparse.Namespace) -> int:
    """Cross-validate and print the summary (or, for ``select``, compare cross-validations)."""
    from medseg.engine.cv import run_cv
    from medseg.engine.runner import parse_set
    from medseg.errors import MedsegError

    if str(args.bundle) == "select":
        return _select(args)
    if args.cv_dirs:
        raise MedsegError(f"unexpected arguments {[str(p) for p in args.cv_dirs]}: medseg cv takes one BUNDLE")
    if args.data is None:
        raise MedsegError("medseg cv BUNDLE needs --data DIR")

    result = run_cv(args.bundle, args.data, folds=args.folds, output=args.output, overrides=parse_set(args.overrides),
                    tracking_uri=args.tracking_uri, tracking_fallback=args.tracking_fallback,
                    tracking=not args.no_tracking, trust_bundle=args.trust_bundle, preset=args.preset,
                    save_prob=args.save_prob, devices=args.devices)
    summary = result.summary
    print(f"{summary['folds']}-fold cross-validation of {args.bundle.name}: {summary['cases']} out-of-fold cases")
    names = [n for n in summary["overall"] if n.startswith(("dice", "hd95"))]
    width = max(map(len, names), default=6)
    print(f"  {'metric':<{width}}  {'mean':>8}  {'median':>8}  {'std':>8}  " +
          "  ".join(f"fold {k:<3}" for k in range(summary["folds"])))
    for name in names:
        stats = summary["overall"][name]
        folds = [summary["per_fold"][str(k)][name]["mean"] for k in range(summary["folds"])]
        cells = [_cell(stats["mean"]), _cell(stats["median"]), _cell(stats["std"])]
        print(f"  {name:<{width}}  " + "  ".join(f"{c:>8}" for c in cells) + "  " +
              "  ".join(f"{_cell(v):>8}" for v in folds))
    post = summary.get("postprocessing") or {}
    for rule in post.get("report", []):
        what = f"{rule['rule']} {rule['target']}" + (f" (threshold {rule['threshold']} voxels)" if "threshold" in rule
                                                     else "")
        print(f"  post-processing {what}: out-of-fold Dice {rule['dice_before']:.4f} -> {rule['dice_after']:.4f}, "
              f"{'kept' if rule['kept'] else 'not kept'}")
    print(f"  recorded in every fold's model: {post.get('spec') or 'none'}")
    print(f"folder: {result.cv_dir}")
    print(f"MLflow parent run: {result.parent_run_id or 'untracked'}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from medseg.errors import MedsegError
    from medseg.evaluation.selection import select_configuration

    if not args.cv_dirs:
        raise MedsegError("medseg cv select needs one or more finished CV_DIRs")
    record = select_configuration(args.cv_dirs)
    for candidate in sorted(record["candidates"], key=lambda c: -c["mean_dice"]):
        names = " + ".join(Path(m).name for m in candidate["members"])
        regions = ", ".join(f"{k.removeprefix('dice_')} {v:.4f}" for k, v in candidate["dice"].items())
        print(f"  {candidate['mean_dice']:.4f}  {names}  ({regions})")
    best = " + ".join(record["best"]["members"])
    print(f"best on {record['cases']} out-of-fold cases: {best}; written to {args.cv_dirs[0] / 'selection.json'}")
    print(f"use it: medseg infer {' '.join(record['best']['members'])} --input ... --output ...")
    return 0


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

"""``medseg data synth|check|list``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg.cli.progress import progress_printer
from medseg.data.conventions import BRATS_LABEL_CONVENTIONS
from medseg.errors import InvalidValueError, MedsegError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the CLI."""
    data = subparsers.add_parser("data", help="synthesise, check and list datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = sub.add_parser("synth", help="write a deterministic synthetic dataset")
    synth.add_argument("kind", choices=["brats", "isic", "ct"],
                       help="BraTS-like MRI, ISIC-like dermoscopy or CT-like abdomen (organ and lesions, "
                            "nnU-Net v2 layout)")
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    synth.add_argument("--shape", type=int, nargs="+", metavar="N",
                       help="BraTS: X Y Z (default 240 240 155); CT: X Y Z (default 96 96 48); "
                            "ISIC: WIDTH HEIGHT (default: varied sizes)")
    synth.add_argument("--spacing", type=float, nargs=3, action="append", metavar=("SX", "SY", "SZ"),
                       help="BraTS and CT: voxel size in mm (0 < S <= 20); each case is drawn at 1 mm on --shape "
                            "and resampled to it over the same extent. Repeat it for mixed spacings: case i "
                            "takes spacing number i %% (number given). Default: 1 mm, as without it")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--format", default="brats2021",
                       choices=["brats2021", "brats2023", "brats2024", "msd", "nnunet"],
                       help="BraTS layout to write (default brats2021; brats2024: the 2023 naming with a "
                            "resection cavity, label 4, in every other case; ignored for isic and ct, which "
                            "is always written in the nnU-Net v2 layout)")
    synth.add_argument("--overwrite", action="store_true",
                       help="write into a folder that already holds files (cases of the same names are replaced)")
    synth.set_defaults(func=run_synth)

    check = sub.add_parser("check", help="check every case of a dataset; exit 1 if anything is wrong")
    check.add_argument("dir", type=Path, help="dataset folder")
    check.add_argument("--workers", type=int, default=2, help="reader threads (default 2)")
    check.add_argument("--affine-tol", type=float, default=1e-3, help="affine tolerance in mm (default 1e-3)")
    check.add_argument("--labels", default=None, choices=list(BRATS_LABEL_CONVENTIONS),
                       help="BraTS case folders: the label convention (default: from the naming, and "
                            "brats2024 for 2023-named data whose labels hold the resection cavity, 4, and ET, 3)")
    check.set_defaults(func=run_check)

    listing = sub.add_parser("list", help="discover a dataset and write a MONAI datalist JSON")
    listing.add_argument("dir", type=Path, help="dataset folder")
    listing.add_argument("--out", required=True, type=Path, help="datalist JSON to write")
    listing.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    listing.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    listing.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    listing.add_argument("--labels", default=None, choices=list(BRATS_LABEL_CONVENTIONS),
                         help="BraTS case folders: the label convention to record (default: from the naming; "
                              "'data list' reads no labels, so BraTS 2024+ data need --labels brats2024)")
    listing.set_defaults(func=run_list)


def run_synth(args: argparse.Namespace) -> int:
    """Write a synthetic dataset."""
    from medseg.data.synth.isic import write_isic_dataset
    from medseg.data.synth.writers import write_brats_dataset, write_ct_dataset

    if args.out.exists() and not args.out.is_dir():
        raise MedsegError(f"{args.out}: --out is a file; it must be a folder")
    held = sorted(args.out.iterdir()) if args.out.is_dir() else []
    if held and not args.overwrite:
        raise MedsegError(f"{args.out}: --out already holds {len(held)} file(s) or folder(s) (e.g. {held[0].name}); "
                          "synthetic cases would replace cases of the same names. Choose a new folder, or pass "
                          "--overwrite")
    if args.spacing and args.kind == "isic":
        raise InvalidValueError("--spacing applies to brats and ct volumes, not to isic images")
    progress = progress_printer(f"synth {args.kind}")
    if args.kind in ("brats", "ct"):
        shape = tuple(args.shape) if args.shape else ((240, 240, 155) if args.kind == "brats" else (96, 96, 48))
        if len(shape) != 3:
            raise InvalidValueError(f"--shape for {args.kind} needs 3 sizes X Y Z, got {len(shape)}: {shape}")
        if args.kind == "brats":
            paths = write_brats_dataset(args.out, args.cases, shape, args.seed, args.format, progress,
                                        spacings=args.spacing)
        else:
            paths = write_ct_dataset(args.out, args.cases, shape, args.seed, progress, spacings=args.spacing)
    else:
        if args.shape and len(args.shape) != 2:
            raise InvalidValueError(f"--shape for isic needs 2 sizes WIDTH HEIGHT, got {len(args.shape)}: {args.shape}")
        paths = write_isic_dataset(args.out, args.cases, tuple(args.shape) if args.shape else None, args.seed, progress)
    print(f"wrote {len(paths)} {args.kind} cases to {args.out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Check a dataset and print a table of every problem."""
    from medseg.data.checks import check_dataset

    report = check_dataset(args.dir, workers=args.workers, affine_tol=args.affine_tol,
                           progress=progress_printer("check"), labels=args.labels)
    print(report.format_table())
    return 0 if report.ok else 1


def run_list(args: argparse.Namespace) -> int:
    """Discover a dataset and write its datalist."""
    from medseg.data.datalist import write_datalist
    from medseg.data.discovery import discover

    out, data_dir = args.out.resolve(), args.dir.resolve()
    if out.parent == data_dir and out.name == "dataset.json":
        raise MedsegError(f"{args.out}: is the dataset's own dataset.json; write the datalist elsewhere")
    if args.out.exists() and not args.overwrite:
        raise MedsegError(f"{args.out}: already exists; pass --overwrite to replace it, or choose another --out")
    if args.out.is_dir():
        raise MedsegError(f"{args.out}: is a folder; --out must name a JSON file")
    dataset = discover(args.dir, args.labels)
    path = write_datalist(dataset, args.out, folds=args.folds, seed=args.seed)
    labelled = sum(c.has_label for c in dataset.cases)
    print(f"{dataset.layout}: {len(dataset.cases)} cases ({labelled} labelled, "
          f"{len(dataset.cases) - labelled} unlabelled) -> {path}")
    for problem in dataset.problems:
        print(f"warning: {problem.path}: {problem.rule} ({problem.detail})", file=sys.stderr)
    return 0

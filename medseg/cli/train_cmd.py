"""``medseg train`` and ``medseg reproduce``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.cli.options import add_tracking_uri
from medseg.cli.plan_cmd import add_gpu_memory


def _tracking_args(parser: argparse.ArgumentParser) -> None:
    add_tracking_uri(parser)
    parser.add_argument("--tracking-fallback", choices=["none", "local"],
                        help="'local': use the local store if the server is unreachable (default: fail fast)")


class _HelpWithIds(argparse.Action):
    """``medseg train BUNDLE --help``: the usual help, then the bundle's ids and their defaults."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help; after a BUNDLE, also the ids --set takes and their defaults")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.print_help()
        bundle = getattr(namespace, "bundle", None)
        if bundle is not None:
            print(format_ids(bundle))
        parser.exit()


def format_ids(bundle: Path) -> str:
    """The ``--set`` ids of ``bundle`` with their defaults, one per line (or why they cannot be listed)."""
    from medseg.engine.runner import settable_ids
    from medseg.errors import MedsegError

    try:
        ids = settable_ids(bundle)
    except MedsegError as err:
        return f"\n{err}"
    width = max(map(len, ids), default=0)
    lines = [f"\n--set ids of {bundle} (default values; nested: --set 'network_spec#kwargs#dropout=0.1'):"]
    lines += [f"  {key:<{width}}  {json.dumps(value)}" for key, value in ids.items()]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``reproduce`` to the CLI."""
    train = subparsers.add_parser("train", help="train a MONAI bundle, tracked in MLflow", add_help=False)
    train.add_argument("-h", "--help", action=_HelpWithIds)
    train.add_argument("bundle", type=Path, help="bundle folder, e.g. bundles/brats_attention_unet3d")
    train.add_argument("--data", type=Path, help="dataset folder (the config's dataset_dir)")
    train.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                       help="override a config id, e.g. --set max_epochs=2 --set roi_size=[64,64,64]")
    train.add_argument("--preset", choices=["cpu-tryout"],
                       help="cpu-tryout: merge the bundle's configs/cpu_tryout.json (small patches, a narrow network, "
                            "no workers or caching, 2 epochs): a first run on a laptop in minutes")
    train.add_argument("--plan", metavar="auto|PLAN.json",
                       help="train from a plan (bundles/generic_3d): 'auto' plans from --data first (as medseg plan), "
                            "or give the plan.json medseg plan wrote; --set still overrides any planned id")
    add_gpu_memory(train)
    train.add_argument("--fold", type=int, metavar="K",
                       help="validate on fold K of the datalist's folds (medseg data list --folds N; N is the "
                            "num_folds id), then write the fold's out-of-fold predictions into OUTPUT/oof/")
    train.add_argument("--save-prob", action="store_true",
                       help="with --fold: also write the out-of-fold probability maps (<case>_prob.nii.gz)")
    train.add_argument("--output", type=Path, help="output bundle folder, new or empty (default runs/<bundle>/<time>-<random>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run from its output folder")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier medseg output bundle in --output (otherwise it must be new or empty)")
    _tracking_args(train)
    train.add_argument("--register", metavar="NAME", help="register the best model in the MLflow Model Registry")
    train.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    train.add_argument("--trust-bundle", action="store_true",
                       help="run a bundle that is neither installed with medseg nor an output bundle medseg signed "
                            "with your key (its config can run any Python)")
    train.set_defaults(func=run_train)

    repro = subparsers.add_parser(
        "reproduce", help="retrain an MLflow run: the installed bundle it names, with its recorded values, on data "
                          "that match its manifest")
    repro.add_argument("run_id", help="the MLflow run id to reproduce")
    repro.add_argument("--data", type=Path, help="dataset folder (default: the run's dataset_dir)")
    repro.add_argument("--output", type=Path, help="output folder of the reproduction (new or empty)")
    repro.add_argument("--trust-bundle", action="store_true",
                       help="trust the tracking server: accept recorded values that run code, and artifacts "
                            "with no recorded sha256")
    repro.add_argument("--strict", action="store_true",
                       help="refuse when the installed code differs from the run's (git commit, uncommitted changes, "
                            "package versions); by default the differences are reported")
    _tracking_args(repro)
    repro.set_defaults(func=run_reproduce)


def run_train(args: argparse.Namespace) -> int:
    """Train and print where the results are."""
    from medseg.engine.runner import parse_set, run_training

    result = run_training(
        args.bundle, data=args.data, overrides=parse_set(args.overrides), output=args.output, resume=args.resume,
        tracking_uri=args.tracking_uri, tracking_fallback=args.tracking_fallback, register=args.register,
        tracking=False if args.no_tracking else None, trust_bundle=args.trust_bundle, overwrite=args.overwrite,
        preset=args.preset, plan=args.plan, gpu_memory_gib=args.gpu_memory, fold=args.fold,
        save_prob=args.save_prob,
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if k.startswith("val_"))
    print(f"output bundle: {result.output_dir}")
    print(f"MLflow run: {result.run_id or 'untracked'}")
    print(f"final validation: {metrics or 'none'}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """Reproduce a run and print both runs' final metrics side by side."""
    from medseg.engine.reproduce import format_comparison, reproduce_run

    report = reproduce_run(args.run_id, tracking_uri=args.tracking_uri, data=args.data, output=args.output,
                           tracking_fallback=args.tracking_fallback, trust_bundle=args.trust_bundle,
                           strict=args.strict)
    print(format_comparison(report))
    return 0 if report.dataset_ok else 1

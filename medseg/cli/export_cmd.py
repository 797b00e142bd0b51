"""``medseg export BUNDLE --format torchscript|onnx``: export a bundle's network and check parity.

``medseg export A B ... --format ensemble --out DIR [--register NAME]``: write several trained
bundles (or a ``medseg cv`` folder's folds) as one ensemble bundle, and register it in MLflow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg.cli.options import BUNDLE_OR_MODEL_HELP, add_tracking_uri
from medseg.errors import MedsegError

INT8_CALIBRATION_BATCHES = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a bundle's network to TorchScript or ONNX and check parity with PyTorch; or several "
             "bundles as one ensemble bundle",
        description="Export the network of a MONAI bundle, built from its checkpoint's own spec (models/model.pt "
        "or --checkpoint; the bundle's configs are not executed), and check that the export matches PyTorch "
        "within 1e-4 (fp32). Existing files are not replaced without --overwrite. With --format ensemble: "
        "write several trained bundles (or a medseg cv folder's folds) as one MONAI bundle at --out that "
        "medseg infer and python -m monai.bundle run use as the ensemble of its members; --register NAME "
        "logs it to MLflow and registers it as one version of NAME.",
    )
    parser.add_argument("bundles", metavar="BUNDLE", nargs="+",
                        help="the bundle folder, or a model in MLflow (give --out): " + BUNDLE_OR_MODEL_HELP +
                             "; with --format ensemble: the members (bundles, models in MLflow, cv folders)")
    add_tracking_uri(parser, "MLflow server of a models:/ or runs:/ BUNDLE, and of --register")
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx", "ensemble"),
                        help="the export format")
    parser.add_argument("--register", metavar="NAME",
                        help="with --format ensemble: log the ensemble bundle to a new MLflow run and register it as "
                             "one version of model NAME (use it as models:/NAME/VERSION)")
    parser.add_argument("--tracking-fallback", choices=["none", "local"],
                        help="with --register: 'local' uses the local store if the server is unreachable")
    parser.add_argument("--checkpoint", type=Path, help="weights to export (default: BUNDLE/models/model.pt)")
    parser.add_argument(
        "--out", type=Path, help="output file (default: BUNDLE/models/model.ts or model.onnx)"
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export file (the checkpoint itself is never replaced)")
    parser.add_argument("--trust-bundle", action="store_true",
                        help="allow evaluating configs/inference.json's network_def when neither the checkpoint nor "
                             "the config holds a plain network spec (the config can run any Python)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write an INT8 ONNX model (ONNX Runtime static quantization) beside the fp32 one, "
        "calibrated on --calibration-data",
    )
    parser.add_argument(
        "--calibration-data", type=Path, nargs="+", metavar="PATH",
        help="with --int8: images to calibrate on, of the kinds 'medseg infer' reads (NIfTI, BraTS, MSD or DICOM "
             "folders; 2D: images or folders of them), preprocessed as inference does; up to 16 cases are used",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, print the parity figure, and return 0 if parity holds, 1 if not."""
    if args.format == "ensemble":
        return _ensemble(args)
    if args.register:
        raise MedsegError("--register is for --format ensemble (medseg train --register registers one model)")
    if len(args.bundles) > 1:
        raise MedsegError(f"--format {args.format} exports one BUNDLE, got {len(args.bundles)}")
    args.bundle = args.bundles[0]
    # Imported here so that `medseg --help` and the other subcommands start without torch/ONNX.
    from medseg.export import export_bundle, export_target, int8_report, quantize_onnx_int8
    from medseg.export.calibration import calibration_batches

    if args.int8 and args.format != "onnx":
        raise MedsegError("--int8 needs --format onnx")
    if args.int8 and not args.calibration_data:
        raise MedsegError("--int8 needs --calibration-data PATH: images like those the model will see (activation "
                          "ranges calibrated on anything else quantize it wrongly)")
    if args.calibration_data and not args.int8:
        raise MedsegError("--calibration-data is used with --int8 only")
    from medseg.inference.sources import is_model_uri, model_source

    if is_model_uri(args.bundle) and args.out is None:
        raise MedsegError(f"{args.bundle}: a model from MLflow needs --out (the download cache is not an output place)")
    args.bundle = model_source(args.bundle, args.tracking_uri)
    export_target(args.bundle, args.format, args.out, args.checkpoint, args.overwrite,
                  extra=(".int8.onnx",) if args.int8 else ())  # before any work: refuse to replace files
    result = export_bundle(args.bundle, args.format, checkpoint=args.checkpoint, out=args.out,
                           trust=args.trust_bundle, overwrite=args.overwrite)
    weights = result.weights if result.weights is not None else "none (initial weights)"
    print(f"exported {result.format}: {result.path}")
    print(f"weights: {weights}; example input {result.input_shape}")
    if result.fixed_shape:
        print(f"note: this network's export only runs at input shape {result.input_shape}")
    verdict = "ok" if result.passed else "FAILED"
    print(f"parity max abs diff: {result.max_abs_diff:.3g} (tolerance {result.atol:g}) {verdict}")
    if not result.passed:
        return 1
    if args.int8:
        batches = calibration_batches(args.bundle, args.calibration_data, result.input_shape,
                                      checkpoint=args.checkpoint, limit=INT8_CALIBRATION_BATCHES)
        int8_path = result.path.with_name(result.path.stem + ".int8.onnx")
        quantize_onnx_int8(result.path, int8_path, batches)
        report = int8_report(result.path, int8_path, batches[:4], repeats=5)
        print(
            f"int8: {int8_path} ({report['int8_bytes']:,} bytes vs {report['fp32_bytes']:,}; "
            f"{report['int8_ms']:.1f} ms vs {report['fp32_ms']:.1f} ms; "
            f"Dice of int8 vs fp32 masks on {len(batches[:4])} of the {len(batches)} calibration images "
            f"{report['dice_int8_vs_fp32']:.4f})"
        )
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    """Write the ensemble bundle (and register it); print what it holds."""
    from medseg.export.ensemble import export_ensemble, register_ensemble
    from medseg.inference.sources import model_source

    unused = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--overwrite", args.overwrite),
                                       ("--int8", args.int8), ("--trust-bundle", args.trust_bundle)) if value]
    if unused:
        raise MedsegError(f"{', '.join(unused)}: not used by --format ensemble (members keep their own checkpoints)")
    if args.out is None:
        raise MedsegError("--format ensemble needs --out DIR (a new folder)")
    if args.out.exists():  # before any member is read or downloaded
        raise MedsegError(f"{args.out}: already exists; medseg export writes a new ensemble folder")
    members = [model_source(str(b), args.tracking_uri) for b in args.bundles]
    out = export_ensemble(members, args.out)
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_ensemble"]
    print(f"exported an ensemble of {len(meta['members'])} members: {out}")
    for member in meta["members"]:
        print(f"  {member['folder']}: {member['source']} ({member['network']}, sha256 {member['sha256'][:12]})")
    print(f"post-processing: {meta['postprocessing'] or 'none'}")
    print(f"use it: medseg infer {out} --input ... --output ...  or  python -m monai.bundle run --config_file "
          f"{out / 'configs' / 'inference.json'} --dataset_dir ... --output_dir ...")
    if args.register:
        run_id, version = register_ensemble(out, args.register, args.tracking_uri, args.tracking_fallback)
        where = f"models:/{args.register}/{version}" if version else f"{args.register} (registration still queued)"
        print(f"registered as {where} (MLflow run {run_id})")
        if version is None:
            return 1
    return 0

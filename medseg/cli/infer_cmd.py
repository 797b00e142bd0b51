"""``medseg infer BUNDLE --input PATH [PATH ...] --output DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli.options import BUNDLE_OR_MODEL_HELP, add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``infer`` to the CLI."""
    infer = subparsers.add_parser(
        "infer", help="segment NIfTI, BraTS, MSD or DICOM inputs (3D) or images (2D) with a trained output bundle",
        description="Segment every case of the inputs; outputs keep each input's original geometry "
                    "(2D: each mask has its image's width and height). "
                    "The bundle's configs are read as plain JSON and never executed.")
    infer.add_argument("bundle", metavar="BUNDLE",
                       help="output bundle folder written by 'medseg train', or a model in MLflow: "
                            + BUNDLE_OR_MODEL_HELP)
    add_tracking_uri(infer, "MLflow server of a models:/ or runs:/ BUNDLE")
    infer.add_argument("--input", "-i", dest="inputs", type=Path, nargs="+", required=True, metavar="PATH",
                       help="NIfTI files, BraTS case folders, MSD/nnU-Net dataset folders or DICOM series folders; "
                            "for a 2D model: image files, ISIC dataset folders or folders of images")
    infer.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                       help="output folder (not inside an input folder); <case>.nii.gz per case "
                            "(2D: <case>.png mask and <case>_overlay.png)")
    infer.add_argument("--checkpoint", type=Path, metavar="FILE", help="use this checkpoint, not BUNDLE/models/model.pt")
    infer.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where windows run (default auto: CUDA if available); AMP is used on CUDA")
    infer.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size (default: bundle)")
    infer.add_argument("--overlap", type=float, metavar="F", help="window overlap in [0, 1) (default: bundle)")
    infer.add_argument("--sw-batch", type=int, metavar="N", help="windows per forward pass (default: bundle)")
    infer.add_argument("--tta", action="store_true",
                       help="average over the mirrorings of the spatial axes (8 in 3D, 4 in 2D)")
    infer.add_argument("--multiscale", action="store_true",
                       help="2D models: average the predictions at 0.75, 1.0 and 1.25 times the training size")
    infer.add_argument("--save-prob", action="store_true",
                       help="also write <case>_prob.nii.gz and <case>_uncertainty.nii.gz")
    infer.add_argument("--uncertainty", choices=["entropy", "variance"], default="entropy",
                       help="uncertainty map: normalised predictive entropy (default) or the variance "
                            "across TTA passes (needs --tta)")
    infer.add_argument("--labels", metavar="CONVENTION",
                       help="3D: write every mask in this label convention's values (brats2021, brats2023, "
                            "msd_brain, ...); default: each input's own, from its layout (a BraTS 2021 or 2023 "
                            "folder, an MSD dataset.json), else the model's")
    infer.add_argument("--dicom-seg", action="store_true", help="also write <case>_seg.dcm (DICOM-SEG) for DICOM inputs")
    infer.add_argument("--overwrite", action="store_true", help="re-segment cases whose outputs exist, replacing each case's whole set of outputs "
                            "(its older files that this run does not write are removed)")
    infer.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    infer.add_argument("--serial", action="store_true",
                       help="3D: read, segment and write one case after another (default: the next case is read "
                            "and the previous one written while the network runs)")
    infer.add_argument("--readers", type=int, metavar="N",
                       help="3D: cases read at once ahead of the network (default: 1 on the CPU, "
                            "min(4, CPU cores) on CUDA)")
    infer.set_defaults(func=run_infer)


def run_infer(args: argparse.Namespace) -> int:
    """Segment the inputs and print the summary; exit status 1 if any case failed."""
    from medseg.errors import MedsegError
    from medseg.inference.batch import check_output_dir, run_inference
    from medseg.inference.model import load_inference_model
    from medseg.inference.options import InferenceOptions
    from medseg.inference.postprocess import unknown_convention
    from medseg.inference.sources import model_source

    check_output_dir(args.output, args.inputs)  # before loading the model: fail fast on a refused folder
    if args.labels is not None and unknown_convention(args.labels):  # before the model is read
        raise MedsegError(f"--labels {args.labels}: {unknown_convention(args.labels)}")
    bundle = model_source(args.bundle, args.tracking_uri)
    model = load_inference_model(bundle, checkpoint=args.checkpoint, roi_size=args.roi,
                                 sw_batch_size=args.sw_batch, overlap=args.overlap)
    options = InferenceOptions(device=args.device, tta=args.tta, save_prob=args.save_prob,
                               uncertainty=args.uncertainty, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
                               progress=not args.no_progress, multiscale=args.multiscale,
                               pipelined=not args.serial, readers=args.readers, labels=args.labels)
    report = run_inference(model, args.inputs, args.output, options)
    print(report.format_summary())
    return 0 if report.ok else 1

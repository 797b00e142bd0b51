"""``medseg infer BUNDLE --input PATH [PATH ...] --output DIR``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.cli.options import BUNDLE_OR_MODEL_HELP, add_tracking_uri

if TYPE_CHECKING:
    from medseg.inference.batch import BatchReport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``infer`` to the CLI."""
    infer = subparsers.add_parser(
        "infer", help="segment NIfTI, BraTS, MSD or DICOM inputs (3D) or images (2D) with a trained output bundle",
        description="Segment every case of the inputs; outputs keep each input's original geometry "
                    "(2D: each mask has its image's width and height). "
                    "The bundle's configs are read as plain JSON and never executed.")
    infer.add_argument("bundles", metavar="BUNDLE", nargs="+",
                       help="output bundle folder written by 'medseg train', or a model in MLflow: "
                            + BUNDLE_OR_MODEL_HELP + "; several bundles (or a 'medseg cv' folder, for its folds) "
                            "are an ensemble: their probabilities, each mapped back to the input's grid, are averaged")
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
    infer.add_argument("--no-postprocessing", action="store_true",
                       help="write the masks without the post-processing the model records (chosen by medseg cv on "
                            "its out-of-fold predictions: largest component, the BraTS ET threshold)")
    infer.add_argument("--dicom-seg", action="store_true", help="also write <case>_seg.dcm (DICOM-SEG) for DICOM inputs")
    infer.add_argument("--overwrite", action="store_true", help="re-segment cases whose outputs exist, replacing each case's whole set of outputs "
                            "(its older files that this run does not write are removed)")
    infer.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    infer.add_argument("--serial", action="store_true",
                       help="3D: read, segment and write one case after another (default: the next case is read "
                            "and the previous one written while the network runs)")
    infer.add_argument("--num-parts", type=int, metavar="N",
                       help="segment one of N disjoint shares of the cases (with --part-id); under torchrun, "
                            "default: one share per rank, each on its own GPU, with one merged summary")
    infer.add_argument("--part-id", type=int, metavar="K", default=None,
                       help="which share, 0 to N-1 (default: the torchrun rank, else 0)")
    infer.add_argument("--readers", type=int, metavar="N",
                       help="3D: cases read at once ahead of the network (default: 1 on the CPU, "
                            "min(4, CPU cores) on CUDA)")
    infer.add_argument("--device-stages", choices=["auto", "on", "off"], default="auto",
                       help="3D: reorient, resample and normalise each case, map its probabilities back to its "
                            "grid and make its labels on the network's device, so the reading threads only read "
                            "(default auto: on when the network runs on CUDA)")
    infer.set_defaults(func=run_infer)


def run_infer(args: argparse.Namespace) -> int:
    """Segment the inputs and print the summary; exit status 1 if any case failed."""
    from medseg.errors import MedsegError
    from medseg.inference.batch import check_output_dir, run_inference
    from medseg.inference.options import InferenceOptions
    from medseg.inference.postprocess import unknown_convention
    from medseg.inference.shard import torchrun_part

    check_output_dir(args.output, args.inputs)  # before loading the model: fail fast on a refused folder
    ranks = torchrun_part() if args.num_parts is None else None
    num_parts, part_id = (ranks[0], ranks[1]) if ranks else (args.num_parts or 1, args.part_id or 0)
    if args.part_id is not None and args.num_parts is None and ranks is None:
        raise MedsegError("--part-id needs --num-parts")
    device = args.device
    if ranks is not None:
        device = _rank_device(args.device, ranks[2])
    if args.labels is not None and unknown_convention(args.labels):  # before the model is read
        raise MedsegError(f"--labels {args.labels}: {unknown_convention(args.labels)}")
    model = _model(args)
    options = InferenceOptions(device=device, tta=args.tta, save_prob=args.save_prob,
                               uncertainty=args.uncertainty, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
                               progress=not args.no_progress, multiscale=args.multiscale,
                               pipelined=not args.serial, readers=args.readers, labels=args.labels,
                               num_parts=num_parts, part_id=part_id,
                               device_stages={"auto": None, "on": True, "off": False}[args.device_stages])
    report = run_inference(model, args.inputs, args.output, options)
    if ranks is not None:
        merged, ok = _gather(report)
        if merged is None:  # not rank 0: rank 0 prints the merged summary
            return 0 if ok else 1
        report = merged
    print(report.format_summary())
    return 0 if report.ok else 1


def _model(args: argparse.Namespace) -> Any:
    """The model of BUNDLE: one output bundle (or MLflow model), or the ensemble of several (or of a cv folder)."""
    from medseg.errors import MedsegError
    from medseg.inference.ensemble import check_members, ensemble_members
    from medseg.inference.model import load_inference_model
    from medseg.inference.sources import model_source

    members = ensemble_members([model_source(str(b), args.tracking_uri) for b in args.bundles])
    if len(members) == 1:
        model = load_inference_model(members[0], checkpoint=args.checkpoint, roi_size=args.roi,
                                     sw_batch_size=args.sw_batch, overlap=args.overlap)
        if args.no_postprocessing and getattr(model, "postprocessing", None) is not None:
            model = dataclasses.replace(model, postprocessing=None)
        return model
    if args.checkpoint is not None or args.roi is not None:
        raise MedsegError("--checkpoint and --roi name one model; an ensemble's members keep their own")
    loaded = [load_inference_model(m, sw_batch_size=args.sw_batch, overlap=args.overlap) for m in members]
    if args.no_postprocessing:
        loaded = [dataclasses.replace(m, postprocessing=None) for m in loaded]
    return check_members(loaded, [str(m) for m in members])


def _rank_device(device: str, local_rank: int) -> str:
    """Under torchrun, each rank's network on its own GPU (``cuda:LOCAL_RANK``) when there are GPUs."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return "cuda"
    return "cpu" if device == "auto" else device


def _gather(report: BatchReport) -> tuple[BatchReport | None, bool]:
    """Every rank's report merged at rank 0 (``None`` elsewhere), and whether every rank's cases succeeded.

    The reports travel over a gloo group (CPU objects), whatever device the networks ran on.
    """
    import torch.distributed as dist

    from medseg.inference.batch import BatchReport

    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo")
    try:
        reports: list = [None] * dist.get_world_size()
        dist.all_gather_object(reports, report)
        ok = all(r.ok for r in reports)
        return (BatchReport.merged(reports) if dist.get_rank() == 0 else None), ok
    finally:
        if created:
            dist.destroy_process_group()

"""Does nnU-Net's default 3D augmentation beat the light one? ``medseg demo``'s training with each, held-out Dice.

The demo's recipe (``bundles/brats_attention_unet3d/configs/demo.json``: 16 synthetic 64x64x48
BraTS-like training cases, 100 epochs of attention_unet3d at 32^3, 3 held-out cases written with
another seed) is trained twice, at the same epoch budget and training seed: once with
``augmentation="light"`` (flips, intensity scale and shift: the pipeline before presets existed)
and once with nnU-Net v2's default 3D augmentation (``medseg.transforms.augment3d.NNUNET``),
set through the bundle's ``augmentation`` id as ``--set augmentation=...`` would. Each model is
then run on the held-out cases and scored (Dice of WT, TC and ET) by the library functions
``medseg demo`` uses: ``run_training``, ``load_inference_model`` + ``run_inference`` and
``evaluate``. The result (both arms, settings, device, versions, wall times) goes to ``--out``
with a markdown table beside it.

One seed on a few synthetic cases says little about real BraTS: stronger augmentation usually
needs more epochs to pay off, so compare at a budget that matters to you (``--epochs``) and over
several ``--seed`` values before drawing conclusions.

    python benchmarks/augmentation_ab.py --work /tmp/augmentation_ab \
        --out benchmarks/results/augmentation_ab.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from common import Timer, environment, markdown_table, write_results

from medseg.demo import DEMO_BUNDLE, demo_settings
from medseg.errors import MedsegError
from medseg.transforms.augment3d import NNUNET, augmentation_spec

REGIONS = ("WT", "TC", "ET")


def parse_args() -> argparse.Namespace:
    """Command-line arguments; the defaults are ``medseg demo``'s CPU settings read from the bundle."""
    from medseg.engine.data import locate_bundle

    bundle = Path(locate_bundle(DEMO_BUNDLE))
    demo = demo_settings(bundle)
    data, train = demo["data"], demo["train"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for data, runs and predictions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/augmentation_ab.json"))
    parser.add_argument("--bundle", type=Path, default=bundle, help="bundle to train (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=train["max_epochs"], help="epoch budget of both arms")
    parser.add_argument("--seed", type=int, default=train.get("seed", 0), help="training seed of both arms")
    parser.add_argument("--train-cases", type=int, default=data["train_cases"])
    parser.add_argument("--test-cases", type=int, default=data["test_cases"])
    parser.add_argument("--shape", type=int, nargs=3, default=data["shape"], help="synthetic case size X Y Z")
    parser.add_argument("--data-seed", type=int, default=data["seed"], help="seed of the training cases")
    parser.add_argument("--test-seed", type=int, default=data["test_seed"], help="seed of the held-out cases")
    parser.add_argument("--roi", type=int, nargs=3, default=train["roi_size"], help="training patch size")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="inference device")
    args = parser.parse_args()
    args.demo = demo
    return args


def check_bundle_uses_augmentation(bundle: Path) -> None:
    """Refuse a bundle whose training pipeline ignores the ``augmentation`` id (both arms would be the same)."""
    config = json.loads((bundle / "configs" / "train.json").read_text())
    preprocessing = str(config.get("train", {}).get("preprocessing", ""))
    if "augmentation" not in config or "@augmentation" not in preprocessing:
        raise MedsegError(f"{bundle}/configs/train.json: train#preprocessing does not pass "
                          "augmentation=@augmentation to train_transforms, so this A/B would train the same "
                          "pipeline twice")


def run_arm(name: str, augmentation: Any, args: argparse.Namespace, train_dir: Path, test_dir: Path) -> dict:
    """Train one arm, infer on the held-out cases, evaluate; return its scores and times."""
    from medseg.engine.outputs import unique_run_name
    from medseg.engine.runner import run_training
    from medseg.evaluation import evaluate
    from medseg.inference.batch import InferenceOptions, run_inference
    from medseg.inference.model import load_inference_model

    overrides = {**args.demo["train"], "max_epochs": args.epochs, "seed": args.seed, "roi_size": list(args.roi),
                 "warmup_epochs": min(args.demo["train"].get("warmup_epochs", 0), args.epochs),
                 "augmentation": augmentation, "run_name": f"augmentation_ab_{name}"}
    run_dir = args.work / "runs" / f"{name}-{unique_run_name()}"
    seconds = {}
    with Timer() as t:
        result = run_training(args.bundle, data=train_dir, overrides=overrides, output=run_dir, tracking=False)
    seconds["train"] = t.seconds
    infer = args.demo["infer"]
    predictions = args.work / "predictions" / name
    with Timer() as t:
        model = load_inference_model(run_dir, roi_size=infer["roi_size"], sw_batch_size=infer["sw_batch_size"],
                                     overlap=infer["overlap"])
        report = run_inference(model, [test_dir], predictions,
                               InferenceOptions(device=args.device, overwrite=True, progress=False))
        if not report.ok:
            raise MedsegError(f"{name}: inference failed: {report.format_summary()}")
    seconds["infer"] = t.seconds
    with Timer() as t:
        evaluation = evaluate(predictions, test_dir, "brats", args.work / "evaluation" / name / "metrics.csv")
    seconds["evaluate"] = t.seconds
    dice = {region: float(evaluation.summary[f"dice_{region}"]["mean"]) for region in REGIONS}
    return {"augmentation": augmentation_spec(augmentation), "dice": dice,
            "mean_dice": sum(dice.values()) / len(dice), "best_val_metric": result.best_metric,
            "final_metrics": result.final_metrics, "run_dir": str(run_dir), "seconds": seconds}


def main() -> None:
    """Write the data, run both arms, write the result JSON and table."""
    from medseg.data.synth.writers import write_brats_dataset

    args = parse_args()
    args.work = args.work.resolve()
    check_bundle_uses_augmentation(args.bundle)
    env = environment()
    start = time.perf_counter()
    train_dir, test_dir = args.work / "data" / "train", args.work / "data" / "test"
    shape = tuple(args.shape)
    with Timer() as data_time:
        write_brats_dataset(train_dir, args.train_cases, shape, seed=args.data_seed)
        write_brats_dataset(test_dir, args.test_cases, shape, seed=args.test_seed)
    runs = {}
    for name, augmentation in (("light", "light"), ("nnunet", copy.deepcopy(NNUNET))):
        runs[name] = run_arm(name, augmentation, args, train_dir, test_dir)
        print(name, {k: round(v, 4) for k, v in runs[name]["dice"].items()},
              {k: round(v) for k, v in runs[name]["seconds"].items()}, flush=True)
    result = {
        "benchmark": "augmentation_ab",
        "environment": env,
        "settings": {"bundle": str(args.bundle), "epochs": args.epochs, "seed": args.seed,
                     "train_cases": args.train_cases, "test_cases": args.test_cases, "shape": list(shape),
                     "data_seed": args.data_seed, "test_seed": args.test_seed, "roi_size": list(args.roi),
                     "inference_device": args.device, "demo_train_overrides": args.demo["train"],
                     "demo_infer": args.demo["infer"]},
        "runs": runs,
        "data_seconds": data_time.seconds,
        "wall_seconds": time.perf_counter() - start,
    }
    rows = [[name, *(f"{r['dice'][k]:.4f}" for k in REGIONS), f"{r['mean_dice']:.4f}", f"{r['seconds']['train']:.0f}"]
            for name, r in runs.items()]
    table = markdown_table(["augmentation", *(f"Dice {k}" for k in REGIONS), "mean", "train s"], rows)
    write_results(args.out, result, f"{args.epochs} epochs, seed {args.seed}, {env['device']}\n\n{table}")


if __name__ == "__main__":
    main()

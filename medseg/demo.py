"""``medseg demo``: the whole pipeline on synthetic data, on the CPU, in a few minutes.

1. generate a small synthetic BraTS-like training set and separate held-out test cases;
2. train ``bundles/brats_attention_unet3d`` briefly (settings in its ``configs/demo.json``);
3. infer on the held-out cases;
4. evaluate them with the BraTS conventions;
5. everything is logged to the local MLflow store;
6. print where the masks, plots and run are, and how to open ``mlflow ui``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError

DEMO_BUNDLE = "brats_attention_unet3d"


@dataclass
class DemoResult:
    """Where the demo put things and how well it did.

    Attributes:
        workdir: the demo folder.
        run_dir: the output bundle of the training run.
        run_id: the MLflow run id.
        predictions: the folder of predicted masks.
        metrics_csv: the per-case evaluation table.
        mean_dice: mean Dice per region over the held-out cases (``{"WT": ..., "TC": ..., "ET": ...}``).
        seconds: wall time of each step.
    """

    workdir: Path
    run_dir: Path
    run_id: str | None
    predictions: Path
    metrics_csv: Path
    mean_dice: dict[str, float]
    seconds: dict[str, float]


def demo_settings(bundle: Path) -> dict:
    """Read ``configs/demo.json`` of the demo bundle."""
    path = bundle / "configs" / "demo.json"
    if not path.is_file():
        raise MedsegError(f"{path}: the demo settings are missing")
    return json.loads(path.read_text())


def interrupted_run(workdir: str | Path) -> Path:
    """The newest training run under ``workdir/run`` that has a checkpoint but did not finish.

    Raises:
        MedsegError: there is none.
    """
    runs = Path(workdir) / "run"
    candidates = []
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        meta = folder / "configs" / "metadata.json"
        finished = meta.is_file() and "medseg_training" in json.loads(meta.read_text())
        if not finished and (folder / "models").is_dir() and any((folder / "models").glob("last*.pt")):
            candidates.append(folder)
    if not candidates:
        raise MedsegError(f"{runs}: no interrupted demo run to resume (run medseg demo without --resume)")
    return candidates[-1]


def run_demo(workdir: str | Path = "demo_output", bundle: str | Path | None = None, tracking_uri: str | None = None,
             log: callable = print, resume: bool = False) -> DemoResult:
    """Run the demo pipeline end to end.

    Args:
        workdir: folder for the data, run, predictions and evaluation (replaced pieces are
            regenerated; an existing training run is not reused).
        bundle: the bundle to train; default ``bundles/brats_attention_unet3d``.
        tracking_uri: MLflow URI; default the local store ``runs/mlflow.db``.
        log: where progress lines go.
        resume: continue the newest interrupted training run under ``workdir/run``
            (:func:`interrupted_run`) instead of starting a new one.

    Returns:
        The :class:`DemoResult`.
    """
    from medseg.data.synth.writers import write_brats_dataset
    from medseg.engine.data import locate_bundle
    from medseg.engine.outputs import unique_run_name
    from medseg.engine.runner import run_training
    from medseg.evaluation import evaluate
    from medseg.inference import InferenceOptions, run_inference
    from medseg.inference.model import load_inference_model

    workdir = Path(workdir).resolve()
    resume_dir = interrupted_run(workdir) if resume else None
    bundle = Path(bundle) if bundle else Path(locate_bundle(DEMO_BUNDLE))
    settings = demo_settings(bundle)
    data, seconds = settings["data"], {}
    shape = tuple(data["shape"])

    start = time.perf_counter()
    train_dir, test_dir = workdir / "data" / "train", workdir / "data" / "test"
    log(f"[1/4] writing {data['train_cases']} training and {data['test_cases']} held-out synthetic cases {shape}")
    write_brats_dataset(train_dir, data["train_cases"], shape, seed=data["seed"])
    write_brats_dataset(test_dir, data["test_cases"], shape, seed=data["test_seed"])
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    if resume_dir is not None:
        run_dir = resume_dir
        log(f"[2/4] resuming the interrupted training run {run_dir}")
        result = run_training(bundle, data=train_dir, resume=run_dir, tracking_uri=tracking_uri)
    else:
        run_dir = workdir / "run" / unique_run_name()
        log(f"[2/4] training {bundle.name} for {settings['train']['max_epochs']} epochs on the CPU -> {run_dir}")
        result = run_training(bundle, data=train_dir, overrides=dict(settings["train"]), output=run_dir,
                              tracking_uri=tracking_uri)
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    predictions = workdir / "predictions"
    log(f"[3/4] inferring on the {data['test_cases']} held-out cases -> {predictions}")
    infer = settings["infer"]
    model = load_inference_model(run_dir, roi_size=infer["roi_size"], sw_batch_size=infer["sw_batch_size"],
                                 overlap=infer["overlap"])
    report = run_inference(model, [test_dir], predictions, InferenceOptions(device="cpu", overwrite=True,
                                                                           progress=False))
    if not report.ok:
        raise MedsegError(f"demo inference failed: {report.format_summary()}")
    seconds["infer"] = time.perf_counter() - start

    start = time.perf_counter()
    metrics_csv = workdir / "evaluation" / "metrics.csv"
    log(f"[4/4] evaluating against the held-out truth -> {metrics_csv.parent}")
    evaluation = evaluate(predictions, test_dir, "brats", metrics_csv)
    seconds["evaluate"] = time.perf_counter() - start
    mean_dice = {region: float(evaluation.summary[f"dice_{region}"]["mean"]) for region in ("WT", "TC", "ET")}
    if result.run_id:  # the held-out numbers belong to the run whose model they score
        from medseg.tracking.heldout import log_heldout_metrics

        heldout = {f"{m}_{r}": float(evaluation.summary[f"{m}_{r}"]["mean"]) for m in ("dice", "hd95")
                   for r in ("WT", "TC", "ET") if f"{m}_{r}" in evaluation.summary}
        log_heldout_metrics(result.run_id, heldout, tracking_uri)
    return DemoResult(workdir=workdir, run_dir=run_dir, run_id=result.run_id, predictions=predictions,
                      metrics_csv=metrics_csv, mean_dice=mean_dice, seconds=seconds)

"""One fold against the 5-fold ensemble of a ``medseg cv``: held-out Dice per region, with and without post-processing.

Everything runs through the real CLI (``python -m medseg ...`` in subprocesses, ``--no-tracking``,
``OMP_NUM_THREADS`` pinned), in ``--work``:

1. Data: ``medseg data synth brats`` writes ``--train-cases`` synthetic BraTS-like cases of
   ``--shape`` (BraTS 2021 layout: labels necrosis 1, edema 2, enhancing 4, so WT = {1, 2, 4},
   TC = {1, 4}, ET = {4}; some cases have no enhancing tumour) with ``--data-seed``, and
   ``--test-cases`` held-out cases with ``--test-seed``.
2. ``medseg cv bundles/brats_segresnet --folds 5 --preset cpu-tryout --set max_epochs=E`` trains
   the five folds (SegResNet, 8 initial filters, validation every epoch on the fold's own cases,
   best model kept) and chooses the post-processing on the out-of-fold masks (largest connected
   component per region, the ET small-volume threshold; a rule is kept only if it raises the
   out-of-fold Dice), recorded in every fold's model. Beside the preset, every fold trains with
   the recipe of ``medseg demo`` (``bundles/brats_attention_unet3d/configs/demo.json``):
   learning rate 0.003, 32^3 patches, batch 2, 70 % of patches centred on the tumour, and the
   preprocessed cases cached (``--train-set``; give it no values for the bare preset). At the
   preset's own 1e-4, 64^3, batch 1 and no cache, an epoch of 12 cases costs about 30 s on one
   core here against 1.3 s, and a SegResNet reached a held-out Dice of about 0.01 in 7 minutes
   (``planned_vs_fixed.py``), too little for post-processing or ensembling to mean anything.
3. Held-out inference, ``medseg infer ... --input HELDOUT --no-progress``, four arms: each fold
   alone (``CV/fold_K``, an output bundle) and the ensemble (``CV``: a cv folder stands for its
   folds, their probabilities averaged on each case's grid), each with the recorded
   post-processing (the default) and with ``--no-postprocessing``.
4. Scoring: ``medseg evaluate --task brats`` scores each arm's masks against the held-out
   labels (the dataset's own convention, BraTS 2021): Dice of WT, TC and ET per case (1 when
   a region is in neither mask nor truth, 0 when in one only), then the mean over the cases;
   the mean of the three regions is the headline. A single fold is reported both as fold 0
   alone and as the mean (min, max) over the five folds' held-out means.

The JSON holds the environment, the settings, the wall time of the cv and of every inference,
the cv's out-of-fold Dice and its post-processing report (each rule, its out-of-fold Dice before
and after, kept or not), and per arm the held-out Dice per region (mean and per case).

A benchmark, not a test: nothing here asserts a winner. One training seed on a few small
synthetic cases and minutes of training per fold; the absolute Dice says little about real BraTS
models. On a 2-core CPU, single-threaded, the whole run takes 25-30 minutes (27 in the recorded
run, 23 of them the cv, with other work on the host)::

    OMP_NUM_THREADS=1 python benchmarks/cv_ensemble.py --work /tmp/cv_ensemble \\
        --out benchmarks/results/cv_ensemble_cpu.json

``--smoke`` checks the plumbing in about 3 minutes (5 + 2 cases of 48x48x32, 2 folds, 1 epoch;
the figures mean nothing; the default ``--out`` is then under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from common import environment, markdown_table, read_brats_evaluation, run_medseg, write_results

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "brats_segresnet"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cv_ensemble_cpu.json"
REGIONS = ("WT", "TC", "ET")
#: ``--set`` values of every fold beside ``--preset cpu-tryout``: ``medseg demo``'s CPU recipe.
TRAIN_SET = ["learning_rate=0.003", "roi_size=[32,32,32]", "batch_size=2", "pos_fraction=0.7", "cache_rate=1.0"]


def parse_args() -> argparse.Namespace:
    """Command-line arguments; ``--smoke`` replaces the sizes by tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (its data, cv, predictions, "
                        "evaluation and logs folders are replaced)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; with --smoke "
                        "WORK/cv_ensemble_smoke.json)")
    parser.add_argument("--train-cases", type=int, default=15)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48), help="synthetic case size X Y Z")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the training cases")
    parser.add_argument("--test-seed", type=int, default=1, help="seed of the held-out cases")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=70, help="max_epochs of every fold")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every fold")
    parser.add_argument("--train-set", nargs="*", default=TRAIN_SET, metavar="KEY=VALUE",
                        help=f"--set values of every fold beside the preset (default: {' '.join(TRAIN_SET)})")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every subprocess")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 folds, 1 epoch (about 3 minutes): "
                        "checks the plumbing, the figures mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.train_cases, args.test_cases, args.shape, args.folds, args.epochs = 5, 2, (48, 48, 32), 2, 1
    args.work = args.work.resolve()
    if args.out is None:
        args.out = args.work / "cv_ensemble_smoke.json" if args.smoke else DEFAULT_OUT
    return args


def medseg(args: argparse.Namespace, cli: list[str], log: Path) -> float:
    """Run ``python -m medseg CLI...`` (stdout and stderr to ``log``) with ``--threads`` threads; its wall seconds."""
    return run_medseg(cli, log, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                                        MKL_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1"))


def score(args: argparse.Namespace, name: str, pred: Path, test_dir: Path) -> dict[str, Any]:
    """``medseg evaluate --task brats`` of one arm's masks: Dice per region, mean over cases and per case."""
    csv_path = args.work / "evaluation" / name / "metrics.csv"
    cli = ["evaluate", "--pred", str(pred), "--truth", str(test_dir), "--task", "brats", "--out", str(csv_path),
           "--montage-cases", "0"]
    seconds = medseg(args, cli, args.work / "logs" / f"evaluate_{name}.log")
    return {**read_brats_evaluation(csv_path, args.test_cases, name), "evaluate_s": seconds}


def truth_cases(test_dir: Path) -> dict[str, dict[str, int]]:
    """Voxels of each region in each held-out label (some cases have no enhancing tumour)."""
    out = {}
    for seg in sorted(test_dir.glob("*/*_seg.nii.gz")):
        label = np.asanyarray(nib.load(seg).dataobj)
        out[seg.parent.name] = {"WT": int((label > 0).sum()), "TC": int(np.isin(label, (1, 4)).sum()),
                                "ET": int((label == 4).sum())}
    return out


def changed_voxels(post: Path, raw: Path) -> dict[str, int]:
    """Voxels whose label the post-processing changed, per case (mask with it against mask without)."""
    return {path.name.removesuffix(".nii.gz"): int((np.asanyarray(nib.load(path).dataobj)
                                                    != np.asanyarray(nib.load(raw / path.name).dataobj)).sum())
            for path in sorted(post.glob("*.nii.gz"))}


def fold_stats(arms: dict[str, Any], folds: int, post: str) -> dict[str, Any]:
    """Mean, min and max over the single folds of their held-out mean Dice, per region and overall."""
    singles = [arms[f"fold_{f}_{post}"] for f in range(folds)]
    values = {**{r: [a["dice"][r] for a in singles] for r in REGIONS}, "mean": [a["mean_dice"] for a in singles]}
    return {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))} for k, v in values.items()}


def _f(value: float) -> str:
    return f"{value:.3f}"


def tables(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The markdown: the arms table, each fold alone, and the cv's post-processing report."""
    env, arms, cv = result["environment"], result["arms"], result["cv"]
    posts = (("post", "recorded (default)"), ("raw", "--no-postprocessing"))
    rows = []
    for post, label in posts:
        fold0, ens = arms[f"fold_0_{post}"], arms[f"ensemble_{post}"]
        stats = result["single_fold_stats"][post]
        rows.append(["fold 0 alone", label, *(_f(fold0["dice"][r]) for r in REGIONS), f"**{_f(fold0['mean_dice'])}**"])
        rows.append([f"single fold, mean (min-max) of {args.folds}", label,
                     *(f"{_f(stats[k]['mean'])} ({_f(stats[k]['min'])}-{_f(stats[k]['max'])})" for k in REGIONS),
                     f"**{_f(stats['mean']['mean'])}** ({_f(stats['mean']['min'])}-{_f(stats['mean']['max'])})"])
        rows.append([f"{args.folds}-fold ensemble", label, *(_f(ens["dice"][r]) for r in REGIONS),
                     f"**{_f(ens['mean_dice'])}**"])
    per_fold = [[name.replace("_", " "), *(_f(arms[f"{name}_{p}"]["mean_dice"]) for p, _ in posts),
                 sum(arms[f"{name}_post"]["voxels_changed_by_postprocessing"].values()),
                 *(f"{arms[f'{name}_{p}']['infer_s']:.0f}" for p, _ in posts)]
                for name in [*(f"fold_{k}" for k in range(args.folds)), "ensemble"]]
    report = [[r["rule"], r["target"], r.get("threshold", ""), _f(r["dice_before"]), _f(r["dice_after"]),
               "kept" if r["kept"] else "not kept"] for r in cv["postprocessing"].get("report", [])]
    s = result["settings"]
    title = (f"{'SMOKE (plumbing only, figures mean nothing): ' if args.smoke else ''}held-out Dice (BraTS regions, "
             f"per case then mean over {s['test_cases']} cases) of a {args.folds}-fold `medseg cv` of brats_segresnet "
             f"(cpu-tryout + {' '.join(s['train_set']) or 'nothing'}, {args.epochs} epochs, seed {args.seed}) on "
             f"{s['train_cases']} synthetic {'x'.join(map(str, s['shape']))} cases; {env['device']} "
             f"({env['cpu_model']}, OMP_NUM_THREADS={args.threads}), commit {env['git_commit']}, cv "
             f"{result['timings']['cv_s'] / 60:.1f} min, wall {result['wall_seconds'] / 60:.0f} min. One training seed "
             "on a few synthetic cases: nothing here asserts a winner.")
    oof = ", ".join(f"{r} {_f(cv['oof_dice'][r])}" for r in REGIONS)
    return (title + "\n\n" + markdown_table(["arm", "post-processing", "Dice WT", "Dice TC", "Dice ET", "mean"], rows)
            + "\n\nEach model's held-out mean Dice (mean of the three regions), the voxels whose label the "
            "post-processing changed (all held-out cases together) and the inference seconds:\n\n"
            + markdown_table(["model", "mean, recorded post-processing", "mean, --no-postprocessing",
                              "voxels changed by post-processing", "infer s", "infer s (no post)"], per_fold)
            + f"\n\nPost-processing chosen by `medseg cv` on the {cv['postprocessing'].get('cases')} out-of-fold cases "
            f"(out-of-fold Dice before post-processing: {oof}); recorded: `{json.dumps(cv['postprocessing'].get('spec'))}`. "
            "The rules are tried in turn (largest component per region, outer first, then the ET threshold), each on "
            "the masks the rules kept before it leave, so a rule's 'before' can differ from the raw out-of-fold Dice."
            "\n\n" + markdown_table(["rule", "region", "threshold (voxels)", "OOF Dice before", "OOF Dice after",
                                     "choice"], report))


def main() -> None:
    """Data, cross-validation, the inference arms, their scores; write the JSON and the tables."""
    args = parse_args()
    work = args.work
    for folder in ("data", "cv", "predictions", "evaluation", "logs"):
        shutil.rmtree(work / folder, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    start = time.perf_counter()
    timings: dict[str, Any] = {}
    train_dir, test_dir, cv_dir = work / "data" / "train", work / "data" / "test", work / "cv"
    timings["data_s"] = sum(
        medseg(args, ["data", "synth", "brats", "--cases", str(cases), "--shape", *map(str, args.shape),
                      "--seed", str(seed), "--out", str(folder)], work / "logs" / f"synth_{folder.name}.log")
        for folder, cases, seed in ((train_dir, args.train_cases, args.data_seed),
                                    (test_dir, args.test_cases, args.test_seed)))
    sets = [x for kv in [f"max_epochs={args.epochs}", f"seed={args.seed}", *args.train_set] for x in ("--set", kv)]
    cv_command = ["cv", str(BUNDLE), "--data", str(train_dir), "--folds", str(args.folds), "--output", str(cv_dir),
                  "--preset", "cpu-tryout", "--no-tracking", *sets]
    timings["cv_s"] = medseg(args, cv_command, work / "logs" / "cv.log")
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    post = summary.get("postprocessing") or {}
    for rule in post.get("report", []):
        print(f"  post-processing {rule['rule']} {rule['target']}: OOF Dice {rule['dice_before']:.4f} -> "
              f"{rule['dice_after']:.4f}, {'kept' if rule['kept'] else 'not kept'}", flush=True)
    cv = {"command": "medseg " + " ".join(cv_command), "postprocessing": post,
          "oof_dice": {r: summary["overall"][f"dice_{r}"]["mean"] for r in REGIONS},
          "oof_dice_per_fold": {k: {r: v[f"dice_{r}"]["mean"] for r in REGIONS} for k, v in summary["per_fold"].items()},
          "oof_cases": summary["cases"], "convention": summary.get("convention")}
    models = {**{f"fold_{k}": cv_dir / f"fold_{k}" for k in range(args.folds)}, "ensemble": cv_dir}
    arms: dict[str, Any] = {}
    for model, source in models.items():
        for mode, extra in (("post", []), ("raw", ["--no-postprocessing"])):
            name, pred = f"{model}_{mode}", work / "predictions" / f"{model}_{mode}"
            cli = ["infer", str(source), "--input", str(test_dir), "--output", str(pred), "--no-progress", *extra]
            seconds = medseg(args, cli, work / "logs" / f"infer_{name}.log")
            arms[name] = {"command": "medseg " + " ".join(cli), "infer_s": seconds, **score(args, name, pred, test_dir)}
            if mode == "raw":
                changed = changed_voxels(work / "predictions" / f"{model}_post", pred)
                arms[f"{model}_post"]["voxels_changed_by_postprocessing"] = changed
            print(f"{name}: {({r: round(v, 4) for r, v in arms[name]['dice'].items()})} mean "
                  f"{arms[name]['mean_dice']:.4f}, infer {seconds:.0f} s", flush=True)
    timings["infer_s"] = {name: arm["infer_s"] for name, arm in arms.items()}
    timings["evaluate_s"] = sum(arm["evaluate_s"] for arm in arms.values())
    result = {
        "benchmark": "cv_ensemble", "smoke": args.smoke, "environment": env,
        "settings": {"bundle": str(BUNDLE.relative_to(REPO)), "preset": "cpu-tryout", "train_set": args.train_set,
                     "folds": args.folds, "max_epochs": args.epochs, "seed": args.seed,
                     "train_cases": args.train_cases, "test_cases": args.test_cases, "shape": list(args.shape),
                     "data_seed": args.data_seed, "test_seed": args.test_seed, "omp_num_threads": args.threads,
                     "label_convention": cv["convention"],
                     "heldout_dice": "medseg evaluate --task brats: per case (1 if the region is in neither mask nor "
                                     "truth, 0 if in one only), then the mean over the held-out cases; mean_dice: the "
                                     "mean of WT, TC and ET"},
        "heldout_truth_voxels": truth_cases(test_dir),
        "timings": timings, "cv": cv, "arms": arms,
        "single_fold_stats": {mode: fold_stats(arms, args.folds, mode) for mode in ("post", "raw")},
        "git_commit_at_end": environment()["git_commit"],  # others commit to this tree: did it change meanwhile?
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(args.out, result, tables(args, result))


if __name__ == "__main__":
    main()

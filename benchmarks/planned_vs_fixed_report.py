"""``planned_vs_fixed.py``'s report: the markdown table of every dataset and arm, and of the means per spacing."""

from __future__ import annotations

import argparse
from typing import Any

from common import markdown_table


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def arm_row(name: str, arm: str, r: dict[str, Any], plan: dict[str, Any]) -> list[Any]:
    """One markdown row."""
    s = r["settings"]
    if arm == "fixed":
        recipe = (f"native spacing, {'x'.join(map(str, s['roi_size']))} patch, batch {s['batch_size']}, "
                  f"SegResNet init {s['network']['kwargs']['init_filters']}, non-zero z-score")
    else:
        strides = " ".join("".join(map(str, st)) for st in plan["strides"])
        recipe = (f"{'x'.join(f'{z:g}' for z in s['pixdim'])} mm, {'x'.join(map(str, s['roi_size']))} patch, "
                  f"batch {s['batch_size']}, DynUNet {s['network']['kwargs']['filters']} strides {strides}, "
                  f"{'/'.join(sorted(set(plan['normalization'])))}")
    h = r["heldout"]
    per_class = ", ".join(f"{k} {fmt(v)}" for k, v in h["dice"].items())
    return [name, arm, recipe, f"{s['parameters'] / 1e6:.2f}M", r["epochs"], f"{r['train_wall_s']:.0f}",
            fmt(r["best_val_mean_dice"]), per_class, f"**{fmt(h['mean_dice'])}**",
            ", ".join(f"{k} {fmt(v)}" for k, v in h["pooled_dice"].items()), f"{r['infer_s']:.0f}"]


def tables(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The markdown: a title, one row per dataset and arm, then the held-out mean Dice per spacing."""
    env, datasets = result["environment"], result["datasets"]
    header = ["dataset", "arm", "recipe", "params", "epochs", "train s", "best val Dice", "held-out Dice",
              "held-out mean", "pooled Dice", "infer s"]
    rows = [arm_row(name, arm, r, d["plan"]) for name, d in datasets.items() for arm, r in d["arms"].items()]
    spacing_rows = [[name, arm, k, v["cases"], fmt(v["mean_dice"])] for name, d in datasets.items()
                    for arm, r in d["arms"].items() for k, v in r["heldout"]["mean_dice_by_spacing"].items()]
    title = (f"{'SMOKE (plumbing only, figures mean nothing): ' if args.smoke else ''}training budget "
             f"{args.budget:.0f} s per arm and dataset, {args.train_cases} training / {args.test_cases} held-out "
             f"cases, seed {args.seed}, --gpu-memory {args.gpu_memory}, width / {args.width_divisor}, "
             f"{env['device']} ({env['cpu_model']}, OMP_NUM_THREADS={args.threads}), commit {env['git_commit']}, "
             f"wall {result['wall_seconds'] / 60:.0f} min")
    return (title + "\n\n" + markdown_table(header, rows) + "\n\nHeld-out mean Dice by the spacing of the case:\n\n"
            + markdown_table(["dataset", "arm", "spacing (mm)", "cases", "mean Dice"], spacing_rows))

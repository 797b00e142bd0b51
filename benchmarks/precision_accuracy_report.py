"""Reporting of ``precision_accuracy.py``: the markdown tables of part A and part B."""

from __future__ import annotations

import argparse
from typing import Any

from common import markdown_table
from precision_accuracy_seeds import REGIONS, VERDICT_RULE


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _spread_cell(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def tables(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The markdown: part A's summary and runs, part B's arms."""
    env, s = result["environment"], result["settings"]
    parts = [(f"{'SMOKE (plumbing only, figures mean nothing): ' if args.smoke else ''}issue #19 item 3 on "
              f"{env['device']} ({env['cpu_model']}), commit {env['git_commit']}, torch {env['torch']}, MONAI "
              f"{env['monai']}; {s['cases']} training and {s['heldout']} held-out synthetic BraTS cases of "
              f"{'x'.join(map(str, s['shape']))}, patch {'x'.join(map(str, s['crop']))}; wall "
              f"{result['wall_seconds'] / 60:.1f} min.")]
    a = result.get("part_a")
    if a:
        parts.append(f"**Part A** ({a['bundle']}, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}): "
                     "held-out Dice, mean ± sample std (min-max) over the seeds; verdict rule: "
                     f"{VERDICT_RULE} -> **{a['verdict']['overall']}**.")
        rows = [[arm, ", ".join(sorted({r["trains_in"] for r in a["runs"] if r["arm"] == arm})),
                 *(_spread_cell(st[k]) for k in ("mean", *REGIONS)), f"{st['train_s']['mean']:.0f}"]
                for arm, st in a["stats"].items()]
        parts.append(markdown_table(["arm", "trains in", "mean Dice", "WT", "TC", "ET", "train s (mean)"], rows))
        v = a["verdict"]
        parts.append(markdown_table(["", "new - old", "allowed drop", "within spread"],
                                    [[k, f"{v[k]['new_minus_old']:+.3f}", f"{v[k]['allowed_drop']:.3f}",
                                      "yes" if v[k]["within"] else "no"] for k in ("mean", *REGIONS)]))
        parts.append(markdown_table(["arm", "seed", "mean Dice", "WT", "TC", "ET", "best val (fold 0)", "train s",
                                     "infer s"],
                                    [[r["arm"], r["seed"], _f(r["mean_dice"]), *(_f(r["dice"][k]) for k in REGIONS),
                                      _f(r["best_val_metric"]), f"{r['train_s']:.0f}", f"{r['infer_s']:.0f}"]
                                     for r in a["runs"]]))
    b = result.get("part_b")
    if b:
        ratio = b["stock_over_medseg"]
        parts.append(f"**Part B**: training clock (data set-up included, validation excluded) to a held-out WT Dice "
                     f">= {b['threshold']} (SegResNet in both, seed {b['seed']}, validation every {b['val_every']} "
                     f"steps, cap {b['max_seconds']:.0f} s); stock / medseg: "
                     f"{'n/a (not reached by both)' if ratio is None else f'{ratio:.2f}x'}.")
        rows = [[name, m["recipe"]["autocast"], m["recipe"]["loader"],
                 f"{m['seconds_to_threshold']:.1f}" if m["reached"] else f"not reached in {m['clock_at_end_s']:.0f} s",
                 m["steps"], m["epochs_completed"], _f(m["best_wt_dice"]), f"{m['setup_s']:.1f}"]
                for name, m in b["arms"].items()]
        parts.append(markdown_table(["recipe", "autocast", "loader", "s to threshold", "steps", "epochs",
                                     "best WT Dice", "data set-up s"], rows))
    return "\n\n".join(parts)


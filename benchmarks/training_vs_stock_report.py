"""``training_vs_stock.py``'s results: the JSON and the markdown table, rewritten after every arm."""

from __future__ import annotations

import argparse

import torch
from common import markdown_table, write_results


def rows(runs: dict, stock: str) -> list[list[str]]:
    rows = []
    for name, r in runs.items():
        for kind, m in r.items():
            rows.append([
                name, kind, m["amp_dtype"], f"{m['cases_per_second']:.3f}", f"{100 * m['compute_fraction']:.1f} %",
                f"{sum(m['wait_seconds']) / len(m['wait_seconds']):.3f}",
                f"{sum(m['compute_seconds']) / len(m['compute_seconds']):.3f}",
                f"{m['cache_build_seconds']:.1f}",
                "" if m["compile_seconds"] is None else f"{m['compile_seconds']:.0f}",
                f"{m['cases_per_second'] / r[stock]['cases_per_second']:.2f}x" if stock in r else "",
            ])
    return rows


def write_report(args: argparse.Namespace, env: dict, crop: tuple[int, ...], defaults: dict, runs: dict, stock: str,
           device: torch.device) -> None:
    result = {
        "benchmark": "training_vs_stock",
        "cases": args.cases,
        "shape": list(args.shape),
        "crop": list(crop),
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "medseg_defaults": defaults,
        "note": args.note,
        "environment": env,
        "runs": runs,
        "speedup_vs_stock": {
            n: r["medseg"]["cases_per_second"] / r[stock]["cases_per_second"]
            for n, r in runs.items() if "medseg" in r and stock in r
        },
    }
    busy = "device busy" if device.type == "cuda" else "forward/backward"
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); torch {env['torch']}, MONAI "
        f"{env['monai']}; crop {'x'.join(map(str, crop))}, batch 1, {args.cases} cases, {args.steps} measured steps "
        f"after {args.warmup} warm-up, {args.workers} workers; load average {env['loadavg_at_start'][0]:.1f} at start. "
        f"'vs stock' is against {stock}."
    )
    table = markdown_table(
        ["network", "pipeline", "autocast", "cases/s", f"{busy} share", "wait/step s", "compute/step s",
         "cache build s", "compile s", "vs stock"],
        rows(runs, stock),
    )
    write_results(args.out, result, header + "\n\n" + table)

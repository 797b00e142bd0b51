"""Inference on the CPU, in one process: medseg vs stock MONAI per case, and the floor of this network.

``inference_vs_stock.py`` times two fresh processes, so its figures include Python start-up
and ``import monai`` (about 10 s on 2 cores, paid alike by both). This script times only the
work on the cases, both pipelines in **one process**, on the same cases and weights, taking
turns:

* **stock**: the stock config (``benchmarks/stock/brats_mri_segmentation_inference.json``,
  the model-zoo brats_mri_segmentation inference) parsed with ``monai.bundle.ConfigParser``;
  timed: ``evaluator.run()`` (it loads the weights, reads, preprocesses, runs the window,
  inverts and writes every case);
* **medseg**: timed: ``load_inference_model`` then ``run_inference`` (the same steps).

It also measures the floor under any pipeline that runs this network on this machine: the
network's multiply-adds (``torch.utils.flop_counter``) at the rate of a large float32 matrix
product (``torch.mm``, the best this CPU sustains), plus the I/O floor of
``inference_vs_stock.io_floor``; and the bare network in both memory layouts.

Run from the repository root::

    python benchmarks/inference_in_process.py --data DATA --weights WEIGHTS --cases 1 --repeats 3 \\
        --out benchmarks/results/inference_in_process_cpu.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import (
    SEGRESNET_KWARGS,
    Timer,
    case_arguments,
    environment,
    markdown_table,
    write_brats_cases,
    write_results,
)
from inference_vs_stock import STOCK_CONFIG, compare, io_floor
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from medseg.inference import InferenceOptions, load_inference_model, run_inference
from medseg.networks import build_network
from medseg.utils.device import resolve_device
from medseg.utils.fastgzip import use_zlib_gzip


def run_stock(data: Path, out: Path, weights: Path) -> float:
    """Seconds of the stock evaluator's ``run()`` over every case of ``data`` (outputs in ``out``)."""
    parser = ConfigParser()
    parser.read_config(str(STOCK_CONFIG))
    parser.update({"dataset_dir": str(data), "output_dir": str(out), "ckpt_path": str(weights)})
    evaluator = parser.get_parsed_content("evaluator")
    use_zlib_gzip()  # stock reads .gz with Python's gzip (medseg's run_inference installs its fast decoder)
    with Timer() as timer:
        evaluator.run()
    return timer.seconds


def run_medseg(data: Path, out: Path, bundle: Path, device: str, pipelined: bool = True,
               device_stages: bool | None = None) -> tuple[float, list[float]]:
    """Seconds of ``load_inference_model`` + ``run_inference`` over ``data``, and each case's seconds.

    ``device_stages``: ``--device-stages`` (``None``: auto, on for CUDA).
    """
    options = InferenceOptions(device=device, overwrite=True, progress=False, pipelined=pipelined,
                               device_stages=device_stages)
    with Timer() as timer:
        model = load_inference_model(bundle)
        report = run_inference(model, [data], out, options)
    if not report.ok:
        raise RuntimeError(report.format_summary())
    return timer.seconds, [o.seconds for o in report.outcomes]


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """The best float32 GFLOP/s of an ``n``x``n`` matrix product on this machine (all torch threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def op_seconds(network: torch.nn.Module, x: torch.Tensor, top: int = 8) -> dict[str, float]:
    """Seconds of the ``top`` operators of one forward pass (``torch.profiler``, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        network(x)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    return {"total": total, **{e.key: e.self_cpu_time_total / 1e6 for e in ops[:top]}}


def network_floor(shape: tuple[int, ...], repeats: int) -> dict:
    """The SegResNet's GFLOPs on ``(1, 4, *shape)``, the matmul rate, its eager forward in both layouts,
    and where the channels_last forward spends its time, operator by operator."""
    network = build_network("segresnet", **SEGRESNET_KWARGS).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network.to("meta")(torch.empty(1, 4, *shape, device="meta"))
    gflop = counter.get_total_flops() / 1e9
    rate = matmul_gflops()
    network = build_network("segresnet", **SEGRESNET_KWARGS).eval()
    x = torch.randn(1, 4, *shape)
    forward: dict[str, list[float]] = {"contiguous": [], "channels_last_3d": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for layout, seconds in forward.items():
                fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
                net, inp = network.to(memory_format=fmt), x.contiguous(memory_format=fmt)
                with Timer() as timer:
                    net(inp)
                seconds.append(timer.seconds)
    cl = network.to(memory_format=torch.channels_last_3d)
    profile_cl = op_seconds(cl, x.contiguous(memory_format=torch.channels_last_3d))
    return {
        "input": [1, 4, *shape],
        "gflop": gflop,
        "matmul_gflops": rate,
        "seconds_at_matmul_rate": gflop / rate,
        "forward_seconds": forward,
        "channels_last_3d_operator_seconds": profile_cl,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command-line arguments ``argv`` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pipeline, taking turns")
    parser.add_argument("--device", default="auto",
                        help="medseg's device: auto (CUDA when there is one, as the stock config picks), cpu or cuda")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (a .md table is written beside it)")
    parser.add_argument("--serial-too", action="store_true",
                        help="also time medseg with --serial (no read-ahead or write-behind), for folders")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the CPU network floor (matmul rate, eager layouts, profile); default: on the CPU")
    args = parser.parse_args(argv)
    env = environment()
    on_cuda = resolve_device(args.device).type == "cuda"
    with_floor = (not on_cuda) if args.floor is None else args.floor
    folders = write_brats_cases(args.data, max(args.cases, 1), args.shape)[: args.cases]
    bundle, weights = args.weights / "bundle", args.weights / "segresnet_state_dict.pt"
    names = ("medseg", "stock") + (("medseg_serial",) if args.serial_too else ()) + \
        (("medseg_host_stages",) if on_cuda else ())
    timings: dict[str, list[float]] = {"io_floor": [], **{name: [] for name in names}}
    medseg_cases: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        for folder in folders:
            (data / folder.name).symlink_to(folder.resolve())
        cases = sorted(data.iterdir())
        for repeat in range(args.repeats):
            timings["io_floor"].append(io_floor(cases, work / f"floor{repeat}"))
            for name in names if repeat % 2 == 0 else names[::-1]:
                out = work / f"{name}{repeat}"
                if name == "medseg":
                    seconds, per_case = run_medseg(data, out, bundle, args.device)
                    medseg_cases.append(per_case)
                elif name == "medseg_serial":
                    seconds, _ = run_medseg(data, out, bundle, args.device, pipelined=False)
                elif name == "medseg_host_stages":
                    seconds, _ = run_medseg(data, out, bundle, args.device, device_stages=False)
                else:
                    seconds = run_stock(data, out, weights)
                timings[name].append(seconds)
                print(f"{name} repeat {repeat}: {seconds:.1f} s", flush=True)
        rows = compare(cases, work / "medseg0", work / "stock0")
        shutil.rmtree(work, ignore_errors=True)
    padded = tuple(-(-s // r) * r for s, r in zip(args.shape, (240, 240, 160)))  # the one 240x240x160 window
    floor = network_floor(padded, repeats=2) if with_floor else None
    best = {k: min(v) for k, v in timings.items()}
    per_case = {k: v / args.cases for k, v in best.items()}
    floor_per_case = floor["seconds_at_matmul_rate"] + per_case["io_floor"] if floor else per_case["io_floor"]
    regions = ("TC", "WT", "ET")
    result = {
        "benchmark": "inference_in_process",
        "cases": args.cases,
        "shape": list(args.shape),
        "repeats": args.repeats,
        "environment": env,
        "seconds": timings,
        "best_seconds": best,
        "medseg_seconds_per_case": medseg_cases,
        "speedup_vs_stock": best["stock"] / best["medseg"],
        "network": floor,
        "floor_seconds_per_case": floor_per_case,
        "floor_includes_network": floor is not None,
        "stock_over_floor": per_case["stock"] / floor_per_case,
        "medseg_over_floor": per_case["medseg"] / floor_per_case,
        "dice": rows,
        "max_abs_dice_gap_vs_truth": max(
            abs(r["dice_medseg_vs_truth"][k] - r["dice_stock_vs_truth"][k]) for r in rows for k in regions),
        "min_dice_medseg_vs_stock": min(r["dice_medseg_vs_stock"][k] for r in rows for k in regions),
        "loadavg_at_end": list(os.getloadavg()),
        "time_utc_end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lines = [["I/O floor (read inputs, write masks)", f"{per_case['io_floor']:.2f}", "-"]]
    if floor:
        fwd = {k: min(v) for k, v in floor["forward_seconds"].items()}
        ops = floor["channels_last_3d_operator_seconds"]
        conv = ops.get("aten::mkldnn_convolution", float("nan"))
        lines += [
            [f"network at the matmul rate ({floor['gflop']:.0f} GFLOP at {floor['matmul_gflops']:.0f} GFLOP/s)",
             f"{floor['seconds_at_matmul_rate']:.2f}", "-"],
            ["floor: the two above", f"{floor_per_case:.2f}", f"{per_case['stock'] / floor_per_case:.2f}x"],
            ["network alone, eager, contiguous (stock's layout)", f"{fwd['contiguous']:.2f}", "-"],
            ["network alone, eager, channels_last_3d (medseg's CPU layout)", f"{fwd['channels_last_3d']:.2f}", "-"],
            [f"of which convolutions ({floor['gflop'] / conv:.0f} GFLOP/s), profiled", f"{conv:.2f}", "-"],
            ["of which everything else (GroupNorm, upsampling, adds, ReLU), profiled",
             f"{ops['total'] - conv:.2f}", "-"],
        ]
    labels = {"medseg_serial": "medseg `--serial` (no read-ahead / write-behind)",
              "medseg_host_stages": "medseg `--device-stages off` (pre- and post-processing on the host)"}
    lines += [
        ["stock MONAI (`evaluator.run()`)", f"{per_case['stock']:.2f}", "1.00x"],
        ["medseg (`load_inference_model` + `run_inference`)", f"{per_case['medseg']:.2f}",
         f"{best['stock'] / best['medseg']:.2f}x"],
    ] + [[labels[name], f"{per_case[name]:.2f}", f"{best['stock'] / best[name]:.2f}x"]
         for name in names if name in labels]
    table = markdown_table(["what", f"seconds per case (best of {args.repeats})", "vs stock"], lines)
    dice_table = markdown_table(
        ["case", "TC / WT / ET Dice medseg vs stock", "medseg vs truth", "stock vs truth"],
        [[r["case"], *(" / ".join(f"{r[key][k]:.4f}" for k in regions)
                       for key in ("dice_medseg_vs_stock", "dice_medseg_vs_truth", "dice_stock_vs_truth"))]
         for r in rows],
    )
    header = (f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores, torch threads "
              f"{env['torch_threads']}); one process; load average {env['loadavg_at_start'][0]:.1f} at start, "
              f"{result['loadavg_at_end'][0]:.1f} at end.")
    write_results(args.out, result, header + "\n\n" + table + "\n\n" + dice_table)


if __name__ == "__main__":
    main()

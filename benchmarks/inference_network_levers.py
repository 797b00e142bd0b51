"""The network's share of one case on a GPU, lever by lever: precision, memory layout, cuDNN autotuning, torch.compile.

One BraTS-size case is read and preprocessed by ``medseg infer``'s own stages
(:func:`medseg.inference.preprocess.prepare_case`) and put on the device; then the sliding
window that ``medseg infer`` runs (MONAI's ``SlidingWindowInferer`` with the bundle's window,
overlap 0.5, Gaussian blending, the sigmoid) is timed with one choice changed at a time:

* **precision**: fp32 (TF32 convolutions, PyTorch's default), bf16 autocast (medseg's CUDA
  default, :func:`medseg.utils.device.autocast_dtype`), fp16 autocast;
* **channels_last_3d**: the network's weights and each window in the channels-last layout;
* **cudnn.benchmark**: cuDNN tries its algorithms for each new shape (the stock config turns it on);
* **sw_batch_size**: windows per forward pass (with the bundles' 240x240x160 window a BraTS
  case is one window, so this matters only for smaller windows: ``--roi``);
* **torch.compile** (``--compile``): inductor, the compilation timed apart (paid once per process).

Each row: the median seconds of ``--repeats`` calls after one warm-up call (the device drained
after each), and the Dice of its thresholded masks against the fp32 row's, per output channel
(a lever that changes the masks says so here).

Run from the repository root::

    python benchmarks/inference_network_levers.py --data DATA --weights WEIGHTS --compile \\
        --out benchmarks/results/inference_network_levers_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import case_arguments, dice, environment, markdown_table, write_brats_cases, write_results
from monai.inferers import SlidingWindowInferer

from medseg.inference import load_inference_model
from medseg.inference.inputs import expand_inputs
from medseg.inference.preprocess import prepare_case
from medseg.utils.device import autocast_dtype, resolve_device

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def arms(default_precision: str, with_compile: bool, sw_batch: int, compile_only: bool = False) -> dict[str, dict]:
    """The rows: medseg's default, then one lever changed at a time.

    ``compile_only`` keeps the default, fp32 (the masks' reference) and torch.compile, for a run
    that measures compilation alone after the other levers were measured.
    """
    base = {"precision": default_precision, "channels_last": False, "cudnn_benchmark": False,
            "sw_batch_size": sw_batch, "compile": False}
    rows = {"medseg default": base}
    for precision in _DTYPES:
        if precision != default_precision and not (compile_only and precision != "fp32"):
            rows[precision] = {**base, "precision": precision}
    if not compile_only:
        rows["channels_last_3d"] = {**base, "channels_last": True}
        rows["cudnn.benchmark"] = {**base, "cudnn_benchmark": True}
        rows[f"sw_batch_size {2 * sw_batch}"] = {**base, "sw_batch_size": 2 * sw_batch}
    if with_compile or compile_only:
        rows["torch.compile"] = {**base, "compile": True}
    return rows


def runner(network: torch.nn.Module, arm: dict, roi: tuple[int, ...], device: torch.device
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The sliding window over ``network`` with ``arm``'s choices: image ``(1, C, ...)`` -> probabilities."""
    layout = torch.channels_last_3d if arm["channels_last"] else torch.contiguous_format
    net = network.to(memory_format=layout)
    forward = torch.compile(net) if arm["compile"] else net
    dtype = _DTYPES[arm["precision"]]
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=arm["sw_batch_size"], overlap=0.5, mode="gaussian")

    def window(batch: torch.Tensor) -> torch.Tensor:
        if arm["channels_last"]:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        return forward(batch).float()

    @torch.inference_mode()
    def run(image: torch.Tensor) -> torch.Tensor:
        cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with cast:
            return torch.sigmoid(inferer(image, window))

    return run


def timed(run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, repeats: int,
          device: torch.device) -> tuple[float, list[float], torch.Tensor]:
    """Seconds of the first call (warm-up, compilation), of each later call, and the last output."""
    def once() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = run(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out

    first, out = once()
    seconds = []
    for _ in range(repeats):
        s, out = once()
        seconds.append(s)
    return first, seconds, out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command-line arguments ``argv`` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--roi", type=int, nargs=3, help="the window (default: the bundle's)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (a minute or more to compile)")
    parser.add_argument("--compile-only", action="store_true",
                        help="only the default, fp32 and torch.compile rows (the other levers measured already)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    env = environment()
    device = resolve_device(args.device)
    folder = write_brats_cases(args.data, 1, args.shape)[0]
    model = load_inference_model(args.weights / "bundle")
    case = expand_inputs([folder], model)[0]
    image = prepare_case(case, model).image.as_tensor()[None].to(device)
    roi = tuple(args.roi) if args.roi else tuple(model.roi_size)
    default = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[autocast_dtype(device)]
    rows, reference = {}, None
    # fp32 first: every row's masks are compared with its masks; compilation last.
    plan = arms(default, args.compile, int(model.sw_batch_size), args.compile_only)
    first_name = "medseg default" if default == "fp32" else "fp32"
    order = [first_name] + sorted((n for n in plan if n != first_name), key=lambda n: plan[n]["compile"])
    for name in order:
        arm = plan[name]
        if device.type != "cuda" and (arm["precision"] != "fp32" or arm["cudnn_benchmark"]):
            continue  # autocast and cuDNN are CUDA levers
        torch.backends.cudnn.benchmark = arm["cudnn_benchmark"]
        network = model.network.to(device).eval()
        first, seconds, out = timed(runner(network, arm, roi, device), image, args.repeats, device)
        masks = (out[0] > 0.5).cpu().numpy()
        reference = masks if reference is None else reference
        agreement = [dice(masks[k], reference[k]) for k in range(masks.shape[0])]
        rows[name] = {"arm": arm, "first_call_seconds": first, "seconds": seconds,
                      "median_seconds": statistics.median(seconds), "dice_vs_fp32": agreement}
        print(f"{name}: {rows[name]['median_seconds']:.4f} s (first call {first:.2f} s), Dice vs fp32 "
              f"{[round(a, 4) for a in agreement]}", flush=True)
        model.network.to(memory_format=torch.contiguous_format)
        _write(args, env, roi, image, device, rows, echo=False)  # a run stopped short keeps its rows
    torch.backends.cudnn.benchmark = False
    _write(args, env, roi, image, device, rows)


def _write(args: argparse.Namespace, env: dict, roi: tuple[int, ...], image: torch.Tensor, device: torch.device,
           rows: dict[str, dict], echo: bool = True) -> None:
    """The JSON and table of the rows measured so far (ratios against medseg's default once it is measured)."""
    base = rows.get("medseg default", {}).get("median_seconds")
    result = {"benchmark": "inference_network_levers", "shape": list(args.shape), "roi": list(roi),
              "input": list(image.shape), "device": str(device), "environment": env, "rows": rows}
    header = (f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); torch {env['torch']}, MONAI "
              f"{env['monai']}; one {'x'.join(map(str, args.shape))} case, window {'x'.join(map(str, roi))}, overlap "
              f"0.5; median of {args.repeats} calls after a warm-up call; Dice of the thresholded masks against fp32.")
    table = markdown_table(
        ["lever", "network seconds", "vs medseg default", "first call s", "Dice vs fp32 (per channel)"],
        [[name, f"{r['median_seconds']:.4f}", f"{base / r['median_seconds']:.2f}x" if base else "-",
          f"{r['first_call_seconds']:.2f}", " / ".join(f"{a:.4f}" for a in r["dice_vs_fp32"])]
         for name, r in rows.items()])
    write_results(args.out, result, header + "\n\n" + table, echo)


if __name__ == "__main__":
    main()

"""What each CPU lever buys on one real-size BraTS case, stage by stage, with its effect on the masks.

Uses medseg's library calls on one 240x240x155 case and the shared SegResNet weights
(``benchmarks/reference_weights.py``), and times:

* reading the four ``.nii.gz`` modalities: one after the other vs four threads (zlib
  releases the GIL while it inflates);
* ``prepare_case`` (load + MONAI preprocessing);
* the sliding-window prediction on the whole volume (medseg's default, as stock MONAI) vs on
  the non-zero box (``nonzero_box.NonzeroBoxPredictor``, not in the library), with the Dice of the
  two masks and of each against the truth;
* the network alone on one window of ``--net-size`` voxels: eager fp32 (NCDHW), eager
  channels_last_3d, and ONNX Runtime (fp32, all threads);
* ``restore_geometry`` + labels, and writing the mask with gzip level 1 (nibabel's default),
  6 and 9;
* faster gzip: inflating the four modalities and deflating the mask (level 1) with the
  standard library's zlib, ``isal`` and ``zlib-ng`` (each only if installed);
* the reading stage of folder inference (``prepare_case``: decode + MONAI preprocessing) over
  ``--reader-cases`` cases, with 1 and 2 reader threads (``medseg infer --readers``);
* with ``--compile``: ``torch.compile`` (inductor, weights frozen) of the channels_last
  network on the same window, its compile time and its forward pass.

Run from the repository root::

    python benchmarks/cpu_levers.py --data DATA --weights WEIGHTS --out benchmarks/results/cpu_levers_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import (
    Timer,
    case_arguments,
    environment,
    markdown_table,
    region_dice,
    write_brats_cases,
    write_results,
)
from nonzero_box import NonzeroBoxPredictor

from medseg.inference import InferenceModel, expand_inputs, load_inference_model
from medseg.inference.postprocess import probabilities_to_labels
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import prepare_case, restore_geometry

MODALITIES = ("t1", "t1ce", "t2", "flair")


def _read(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def time_reading(case: Path) -> dict[str, float]:
    """Seconds to decode the four modalities sequentially and with four threads."""
    files = [case / f"{case.name}_{m}.nii.gz" for m in MODALITIES]
    with Timer() as sequential:
        for f in files:
            _read(f)
    with Timer() as threaded, ThreadPoolExecutor(4) as pool:
        list(pool.map(_read, files))
    return {"sequential": sequential.seconds, "threads4": threaded.seconds}


def time_network(network: torch.nn.Module, size: int) -> dict[str, float]:
    """Seconds of one forward pass on a ``(1, 4, size, size, size)`` window: eager, channels_last_3d, ONNX Runtime."""
    x = torch.randn(1, 4, size, size, size, generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}
    # A predictor on the CPU converts its network to channels_last in place: start from NCDHW.
    network = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(network).to(
        memory_format=torch.channels_last_3d
    )  # outside inference mode: export needs it
    with torch.inference_mode():
        network(x[..., :32, :32, :32])  # warm-up (oneDNN primitive creation)
        with Timer() as t:
            reference = network(x)
        out["eager_fp32"] = t.seconds
        cl(x[..., :32, :32, :32].contiguous(memory_format=torch.channels_last_3d))
        with Timer() as t:
            other = cl(x.contiguous(memory_format=torch.channels_last_3d))
        out["channels_last_3d"] = t.seconds
        out["channels_last_3d_max_abs_diff"] = float((other - reference).abs().max())
    try:
        import onnxruntime

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.onnx"
            torch.onnx.export(
                network,
                (x[..., :32, :32, :32],),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {2: "X", 3: "Y", 4: "Z"}, "y": {2: "X", 3: "Y", 4: "Z"}},
                dynamo=False,
            )
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            session.run(None, {"x": x[..., :32, :32, :32].numpy()})
            with Timer() as t:
                (y,) = session.run(None, {"x": x.numpy()})
            out["onnxruntime"] = t.seconds
            out["onnxruntime_max_abs_diff"] = float(np.abs(y - reference.numpy()).max())
    except Exception as err:  # noqa: BLE001 - an exporter or runtime failure is a result too
        out["onnxruntime_error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return out


def time_compile(network: torch.nn.Module, size: int) -> dict[str, float]:
    """Seconds to compile the channels_last network with inductor (weights frozen) and of its forward pass."""
    import torch._inductor.config as inductor_config

    x = torch.randn(1, 4, size, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last_3d)
    cl = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
    inductor_config.freezing = True
    with torch.inference_mode():
        reference = cl(x)
        with Timer() as eager:
            cl(x)
        compiled = torch.compile(cl)
        with Timer() as first:
            compiled(x)
        with Timer() as warm:
            y = compiled(x)
    return {"eager_channels_last_3d": eager.seconds, "compile_and_first_call": first.seconds,
            "compiled": warm.seconds, "max_abs_diff": float((y - reference).abs().max())}


def time_gzip_backends(case: Path, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Best of 3: inflate the four modality files, and deflate the mask's bytes at level 1, per gzip library."""
    import gzip
    import importlib

    raw = [(case / f"{case.name}_{m}.nii.gz").read_bytes() for m in MODALITIES]
    mask = np.ascontiguousarray(labels).tobytes()
    backends = {"zlib (stdlib gzip)": gzip}
    for name, module in (("isal", "isal.igzip"), ("zlib-ng", "zlib_ng.gzip_ng")):
        try:
            backends[name] = importlib.import_module(module)
        except ImportError:
            continue
    out = {}
    for name, module in backends.items():
        inflate = deflate = float("inf")
        for _ in range(3):
            with Timer() as t:
                inflated = [module.decompress(blob) for blob in raw]
            inflate = min(inflate, t.seconds)
            with Timer() as t:
                packed = module.compress(mask, compresslevel=1)
            deflate = min(deflate, t.seconds)
        if inflated != [gzip.decompress(blob) for blob in raw] or gzip.decompress(packed) != mask:
            raise RuntimeError(f"{name} does not round-trip the same bytes as zlib")
        out[name] = {"inflate_4_modalities_seconds": inflate, "deflate_mask_level1_seconds": deflate,
                     "mask_bytes": len(packed)}
    return out


def time_readers(folders: list[Path], model: InferenceModel, threads: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """Seconds per case of ``prepare_case`` over ``folders`` with each number of reader threads (best of 2)."""
    cases = [expand_inputs([folder], model)[0] for folder in folders]
    prepare_case(cases[0], model)  # warm-up
    out = {}
    for n in threads:
        best = float("inf")
        for _ in range(2):
            with Timer() as t, ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda case: prepare_case(case, model), cases))
            best = min(best, t.seconds)
        out[f"threads{n}"] = best / len(cases)
    return out


def time_gzip(labels: np.ndarray, affine: np.ndarray, folder: Path) -> dict[str, dict[str, float]]:
    """Seconds and bytes of writing the mask at gzip levels 1, 6 and 9."""
    out = {}
    default = nib.openers.Opener.default_compresslevel
    try:
        for level in (1, 6, 9):
            nib.openers.Opener.default_compresslevel = level
            path = folder / f"mask{level}.nii.gz"
            with Timer() as t:
                nib.save(nib.Nifti1Image(labels, affine), str(path))
            out[f"level{level}"] = {"seconds": t.seconds, "bytes": path.stat().st_size}
    finally:
        nib.openers.Opener.default_compresslevel = default
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--case", type=int, default=0, help="which case")
    parser.add_argument("--net-size", type=int, default=128, help="window edge for the network-only timings")
    parser.add_argument("--roi", type=int, nargs=3, help="window (default: the bundle's 240 240 160)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--reader-cases", type=int, default=4, help="cases for the reader-thread timing")
    args = parser.parse_args()
    env = environment()
    case_dir = write_brats_cases(args.data, args.case + 1, args.shape)[args.case]
    model = load_inference_model(args.weights / "bundle", roi_size=args.roi)
    (case,) = expand_inputs([case_dir], model)
    truth = _read(case_dir / f"{case_dir.name}_seg.nii.gz")
    result: dict = {
        "benchmark": "cpu_levers",
        "case": case_dir.name,
        "shape": list(args.shape),
        "roi": list(model.roi_size),
        "environment": env,
        "reading": time_reading(case_dir),
    }
    with Timer() as t:
        prepared = prepare_case(case, model)
    result["prepare_case_seconds"] = t.seconds
    labels = {}
    predictions = {}
    for name, predictor_class in (("whole_volume", SlidingWindowPredictor), ("nonzero_box", NonzeroBoxPredictor)):
        predictor = predictor_class(
            model.network,
            model.roi_size,
            model.sw_batch_size,
            model.overlap,
            activation=model.activation,
            device="cpu",
        )
        with Timer() as t:
            prediction = predictor.predict(prepared.image)
        predictions[name] = {
            "seconds": t.seconds,
            "box": [[s.start, s.stop] for s in prediction.box] if getattr(prediction, "box", None) else None,
        }
        with Timer() as t:
            restored = restore_geometry(prediction.mean, prepared)
            labels[name] = probabilities_to_labels(restored, model)
        predictions[name]["restore_and_label_seconds"] = t.seconds
        predictions[name]["dice_vs_truth"] = region_dice(labels[name], truth)
    result["predict"] = predictions
    result["dice_box_vs_whole"] = region_dice(labels["nonzero_box"], labels["whole_volume"])
    result["voxels_differing_box_vs_whole"] = int((labels["nonzero_box"] != labels["whole_volume"]).sum())
    result["network_window"] = {"size": args.net_size, **time_network(model.network, args.net_size)}
    with tempfile.TemporaryDirectory() as tmp:
        result["write_mask"] = time_gzip(
            labels["nonzero_box"], nib.load(str(case.images[0])).affine, Path(tmp)
        )
        result["gzip_backends"] = time_gzip_backends(case_dir, labels["nonzero_box"])
    reader_folders = write_brats_cases(args.data, args.reader_cases, args.shape)
    result["prepare_seconds_per_case"] = time_readers(reader_folders, model)
    if args.compile:
        result["network_window"]["torch_compile"] = time_compile(model.network, args.net_size)
    result["loadavg_at_end"] = list(os.getloadavg())
    p, n, w, r = predictions, result["network_window"], result["write_mask"], result["reading"]
    rows = [
        [
            "read 4 modalities (.nii.gz)",
            f"sequential {r['sequential']:.2f} s",
            f"4 threads {r['threads4']:.2f} s",
            f"{r['sequential'] / r['threads4']:.2f}x",
            "identical arrays",
        ],
        [
            "sliding window, roi " + "x".join(map(str, model.roi_size)),
            f"whole volume {p['whole_volume']['seconds']:.1f} s",
            f"non-zero box {p['nonzero_box']['seconds']:.1f} s",
            f"{p['whole_volume']['seconds'] / p['nonzero_box']['seconds']:.2f}x",
            "Dice box vs whole TC/WT/ET "
            + " / ".join(f"{result['dice_box_vs_whole'][k]:.4f}" for k in ("TC", "WT", "ET")),
        ],
        [
            f"network, one {args.net_size}^3 window",
            f"eager {n['eager_fp32']:.2f} s",
            f"channels_last_3d {n['channels_last_3d']:.2f} s",
            f"{n['eager_fp32'] / n['channels_last_3d']:.2f}x",
            f"max abs diff {n['channels_last_3d_max_abs_diff']:.1e}",
        ],
    ]
    if "onnxruntime" in n:
        rows.append(
            [
                f"network, one {args.net_size}^3 window",
                f"eager {n['eager_fp32']:.2f} s",
                f"ONNX Runtime {n['onnxruntime']:.2f} s",
                f"{n['eager_fp32'] / n['onnxruntime']:.2f}x",
                f"max abs diff {n['onnxruntime_max_abs_diff']:.1e}",
            ]
        )
    rows.append(
        [
            "write uint8 mask (.nii.gz)",
            f"gzip 6: {w['level6']['seconds']:.2f} s, {w['level6']['bytes']} B",
            f"gzip 1 (nibabel default): {w['level1']['seconds']:.2f} s, {w['level1']['bytes']} B",
            f"{w['level6']['seconds'] / w['level1']['seconds']:.2f}x",
            "identical voxels",
        ]
    )
    if "torch_compile" in n:
        c = n["torch_compile"]
        rows.append([
            f"network, one {args.net_size}^3 window",
            f"eager channels_last_3d {c['eager_channels_last_3d']:.2f} s",
            f"torch.compile {c['compiled']:.2f} s (compiling: {c['compile_and_first_call']:.0f} s)",
            f"{c['eager_channels_last_3d'] / c['compiled']:.2f}x",
            f"max abs diff {c['max_abs_diff']:.1e}",
        ])
    rd = result["prepare_seconds_per_case"]
    rows.append([
        f"read + preprocess, {args.reader_cases} cases (`prepare_case`)",
        f"1 reader {rd['threads1']:.2f} s/case",
        f"2 readers {rd['threads2']:.2f} s/case",
        f"{rd['threads1'] / rd['threads2']:.2f}x",
        "the same prepare_case calls, in threads",
    ])
    g = result["gzip_backends"]
    base = g["zlib (stdlib gzip)"]
    for name, timing in g.items():
        if name.startswith("zlib ("):
            continue
        rows.append([
            "inflate 4 modalities / deflate mask (level 1)",
            f"zlib {base['inflate_4_modalities_seconds']:.3f} s / {base['deflate_mask_level1_seconds']:.3f} s",
            f"{name} {timing['inflate_4_modalities_seconds']:.3f} s / {timing['deflate_mask_level1_seconds']:.3f} s",
            (f"{base['inflate_4_modalities_seconds'] / timing['inflate_4_modalities_seconds']:.2f}x / "
             f"{base['deflate_mask_level1_seconds'] / timing['deflate_mask_level1_seconds']:.2f}x"),
            f"identical bytes in; mask {timing['mask_bytes']} B vs {base['mask_bytes']} B",
        ])
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); load average "
        f"{env['loadavg_at_start'][0]:.1f} at start, {result['loadavg_at_end'][0]:.1f} at end; case "
        f"{case_dir.name}; prepare_case {result['prepare_case_seconds']:.1f} s."
    )
    write_results(
        args.out,
        result,
        header + "\n\n" + markdown_table(["stage", "before", "lever", "speed-up", "effect on outputs"], rows),
    )


if __name__ == "__main__":
    main()

"""Where a case's time goes, stage by stage, in stock MONAI and in medseg, in one process on one device.

Both pipelines run the same cases one after another (no overlap between cases, so each stage's
time is its own), with the same shared SegResNet weights (``reference_weights.py``), and each
stage is timed on its own, the device drained (``torch.cuda.synchronize``) at its end:

* **read**: decode the four ``.nii.gz`` modalities into one channel-first array;
* **preprocess**: orientation to RAS, (stock: 1 mm resampling, a no-op on BraTS grids), non-zero
  channel-wise z-scores, and the copy to the device;
* **network**: the sliding window (240x240x160, the model zoo's), with the pipeline's autocast;
* **invert**: the sigmoid, the inverse of the spatial steps, thresholds and the label map;
* **write**: the uint8 mask as ``.nii.gz``.

**stock** is the model-zoo config (``benchmarks/stock/brats_mri_segmentation_inference.json``)
parsed with ``monai.bundle.ConfigParser``, its transforms called in turn: ``LoadImaged`` and
``EnsureChannelFirstd`` (read), the rest of its ``preprocessing`` (preprocess, the batch moved
to the device as its evaluator does), its ``inferer`` under autocast on CUDA (network), its
``postprocessing`` but ``SaveImaged`` (invert; on the device, as the evaluator runs it) and
``SaveImaged`` (write). **medseg** is ``medseg infer``'s own stage functions for one case
(:mod:`medseg.inference.device_stages` where pre- and post-processing run on the device, the
default on CUDA; ``--device-stages off`` is a second medseg row), called in turn.

The first case of each pipeline is a warm-up (cuDNN autotuning, allocator) and not counted.

Run from the repository root::

    python benchmarks/stage_breakdown.py --data DATA --weights WEIGHTS --cases 4 \\
        --out benchmarks/results/stage_breakdown_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from common import case_arguments, environment, markdown_table, write_brats_cases, write_results
from inference_vs_stock import STOCK_CONFIG
from monai.bundle import ConfigParser
from monai.transforms import Compose

from medseg.inference import InferenceOptions, load_inference_model
from medseg.inference.device_stages import load_case, preprocess_on_device, restore_on_device
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.postprocess import probabilities_to_labels
from medseg.inference.preprocess import restore_geometry
from medseg.inference.volume_task import VolumeRun, predict_case, write_labels
from medseg.inference.writer import output_paths
from medseg.utils.device import resolve_device
from medseg.utils.fastgzip import use_fast_gzip, use_zlib_gzip

STAGES = ("read", "preprocess", "network", "invert", "write")
MODALITIES = ("t1", "t1ce", "t2", "flair")


class StageClock:
    """Seconds per stage of one case; each stage ends with the device drained."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added to what the stage already took)."""
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def stock_case(parser: ConfigParser, case: Path, clock: StageClock) -> None:
    """One case through the stock config's objects, stage by stage."""
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("inferer")
    pre = parser.get_parsed_content("preprocessing").transforms
    post = parser.get_parsed_content("postprocessing").transforms
    amp = torch.autocast("cuda") if device.type == "cuda" else contextlib.nullcontext()
    item = {"image": [str(case / f"{case.name}_{m}.nii.gz") for m in MODALITIES]}
    with clock.stage("read"):
        item = Compose(pre[:2])(item)
    with clock.stage("preprocess"):
        item = Compose(pre[2:])(item)
        batch = item["image"][None].to(device)
    with clock.stage("network"), torch.inference_mode(), amp:
        pred = inferer(batch, network)
    with clock.stage("invert"), torch.inference_mode():
        item = Compose(post[:-1])({**item, "pred": pred[0]})
    with clock.stage("write"):
        post[-1](item)


def medseg_case(run: VolumeRun, case: InferenceCase, clock: StageClock, out: Path, on_device: bool) -> None:
    """One case through ``medseg infer``'s stage functions, stage by stage (``run``: its :class:`VolumeRun`).

    ``on_device``: pre- and post-processing on the network's device (``--device-stages on``,
    :mod:`medseg.inference.device_stages`); else on the host (``off``: the same MONAI steps on
    the CPU, the probabilities copied back after the network).
    """
    model, predictor, options = run.model, run.predictor, run.options
    convention = run.conventions[case.case_id]
    paths = output_paths(out, case.case_id)
    host = torch.device("cpu")
    with clock.stage("read"):
        loaded = load_case(case, model, predictor.device if on_device else host, predictor.cpu_threshold)
    with clock.stage("preprocess"):
        prepared = preprocess_on_device(case, loaded, model, predictor.device if on_device else host)
    with clock.stage("network"):
        maps = predict_case(prepared, model, predictor, options, keep_on_device=on_device)
    with clock.stage("invert"):
        if on_device:
            result = restore_on_device(prepared, maps, model, save_prob=False, convention=convention)
            labels, reference = result.labels, result.reference
        else:
            labels = probabilities_to_labels(restore_geometry(maps, prepared), model, convention=convention)
            reference = prepared.reference
    with clock.stage("write"):
        write_labels(reference, labels, None, None, model, paths, options, (), convention)


def median_stages(per_case: list[dict[str, float]]) -> dict[str, float]:
    """The median seconds of each stage over the cases, and of their sum."""
    out = {s: statistics.median(c.get(s, 0.0) for c in per_case) for s in STAGES}
    out["total"] = statistics.median(sum(c.values()) for c in per_case)
    return out


def timed(cases: list, one: Callable[[object, StageClock], None], device: torch.device) -> list[dict[str, float]]:
    """Per-case stage seconds of ``one`` over ``cases``; the first case is a warm-up and not returned."""
    out = []
    for i, case in enumerate(cases):
        clock = StageClock(device)
        one(case, clock)
        if i > 0:
            out.append(clock.seconds)
        name = getattr(case, "case_id", getattr(case, "name", case))
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in clock.seconds.items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command-line arguments ``argv`` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--cases", type=int, default=4, help="cases timed (one more is the warm-up)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    env = environment()
    device = resolve_device(args.device)
    folders = write_brats_cases(args.data, args.cases + 1, args.shape)[: args.cases + 1]
    rows: dict[str, dict[str, float]] = {}
    raw: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="medseg-stages-") as tmp:
        stock = ConfigParser()
        stock.read_config(str(STOCK_CONFIG))
        stock.update({"output_dir": str(Path(tmp) / "stock"), "ckpt_path": str(args.weights / "segresnet_state_dict.pt"),
                      "device": f"$torch.device('{device}')"})
        network = stock.get_parsed_content("network")
        network.load_state_dict(torch.load(args.weights / "segresnet_state_dict.pt", map_location=device))
        network.eval()
        torch.backends.cudnn.benchmark = True  # as the stock config's "run" sets it
        use_zlib_gzip()  # each pipeline reads as in its own process: stock with Python's gzip, medseg with
        raw["stock"] = timed(folders, lambda c, clock: stock_case(stock, c, clock), device)
        torch.backends.cudnn.benchmark = False
        use_fast_gzip()  # the fast decoder that `medseg infer` installs (run_inference)
        model = load_inference_model(args.weights / "bundle")
        cases = [c for f in folders for c in expand_inputs([f], model)]
        run = VolumeRun(model, cases, InferenceOptions(device=str(device), overwrite=True, progress=False))
        arms = {"medseg": device.type == "cuda", "medseg, --device-stages on": True,
                "medseg, --device-stages off": False}
        for label, on_device in arms.items():
            if label != "medseg" and on_device == arms["medseg"]:
                continue  # the default row already is this one
            out = Path(tmp) / label.replace(" ", "_").replace(",", "")
            raw[label] = timed(cases, lambda c, clock, out=out, on=on_device: medseg_case(run, c, clock, out, on),
                               device)
        rows = {name: median_stages(per_case) for name, per_case in raw.items()}
    result = {"benchmark": "stage_breakdown", "cases": args.cases, "shape": list(args.shape), "device": str(device),
              "environment": env, "median_seconds": rows, "per_case_seconds": raw}
    header = (f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); torch {env['torch']}, MONAI "
              f"{env['monai']}; one process, cases one after another; median seconds per case over {args.cases} "
              f"cases of {'x'.join(map(str, args.shape))} after one warm-up case.")
    table = markdown_table(["pipeline", *STAGES, "total"],
                           [[name, *(f"{r[s]:.3f}" for s in (*STAGES, "total"))] for name, r in rows.items()])
    write_results(args.out, result, header + "\n\n" + table)


if __name__ == "__main__":
    main()

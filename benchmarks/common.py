"""Shared pieces of the medseg-vs-stock-MONAI benchmarks: data, weights, environment, tables.

Benchmark data are medseg's synthetic BraTS-like cases (``medseg.data.synth``) written in
the BraTS 2021 layout, int16 ``.nii.gz``, **skull-stripped** like real BraTS: real BraTS
volumes are brain-only with an exact-zero background (about 15-20 % of the 240x240x155
voxels are non-zero), while the synthetic heads keep scalp, skull and a Rician noise
floor in the air, so almost every voxel is non-zero. The brain mask is recomputed by
replaying the case's random generator through the phantom's first step
(``_tissue_map``, which draws first), and every tumour voxel is checked to lie inside it.

Nothing here is a result: every number in ``benchmarks/results`` is measured by the
scripts that use these helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from medseg.checkpoint import save_checkpoint
from medseg.data.synth import brats as synth_brats
from medseg.data.synth.writers import save_nifti
from medseg.utils.atomic import atomic_write_text

__all__ = [
    "BRATS_PREPROCESSING",
    "SEGRESNET_KWARGS",
    "Timer",
    "case_arguments",
    "dice",
    "environment",
    "markdown_table",
    "read_brats_evaluation",
    "run_medseg",
    "write_brats_cases",
    "write_results",
    "write_shared_weights",
]

#: How both pipelines preprocess a BraTS case: RAS, non-zero channel-wise z-scores, no resampling.
BRATS_PREPROCESSING: dict[str, Any] = {
    "task": "regions",
    "orientation": "RAS",
    "normalize": "nonzero_channel_wise",
    "pixdim": None,
    "channels": ["t1", "t1ce", "t2", "flair"],
}

#: The model-zoo brats_mri_segmentation network (Myronenko 2018), 4 -> 3 (TC, WT, ET).
SEGRESNET_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 3,
    "init_filters": 16,
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "dropout_prob": 0.2,
}


def write_shared_weights(state: dict[str, Any], network: dict[str, Any], inference: dict[str, Any],
                         out: Path) -> tuple[Path, Path]:
    """Write one BraTS-regions network's weights for both pipelines.

    Args:
        state: the ``state_dict`` (TC, WT, ET outputs from t1, t1ce, t2, flair).
        network: ``{"name": ..., "kwargs": ...}`` for ``medseg.networks.build_network``.
        inference: the bundle's ``configs/inference.json`` (window, sw batch, overlap).
        out: the folder (created).

    Returns:
        ``out/segresnet_state_dict.pt``, the plain ``state_dict`` the stock config loads, and
        ``out/bundle``, a medseg output bundle (self-describing checkpoint) with the same tensors.
    """
    import torch

    out.mkdir(parents=True, exist_ok=True)
    plain = out / "segresnet_state_dict.pt"
    torch.save(state, plain)
    bundle = out / "bundle"
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(bundle / "configs" / "inference.json", json.dumps(inference, indent=4) + "\n")
    save_checkpoint(
        bundle / "models" / "model.pt",
        state,
        network=network,
        label_convention="brats2021",
        channel_names=BRATS_PREPROCESSING["channels"],
        preprocessing=BRATS_PREPROCESSING,
        extra={"output_names": ["TC", "WT", "ET"]},
    )
    return plain, bundle


def case_arguments(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    """Add the arguments every inference benchmark shares: ``--data``, ``--shape`` and ``--weights``."""
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2021 case folders (written if missing)")
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), help="case size (BraTS: 240 240 155)")
    if weights:
        parser.add_argument("--weights", type=Path, required=True,
                            help="folder from benchmarks/reference_weights.py")


def _skull_stripped_case(index: int, seed: int, shape: tuple[int, int, int]) -> synth_brats.BratsCase:
    """Case ``index`` of ``medseg data synth brats --seed SEED``, with everything outside the brain set to 0."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    replay = np.random.default_rng()
    replay.bit_generator.state = rng.bit_generator.state
    case = synth_brats.make_brats_case(rng, shape)
    _, brain = synth_brats._tissue_map(replay, shape)  # the phantom's first draws: the same brain
    if np.any((case.label > 0) & ~brain):
        raise RuntimeError(
            "replayed brain mask does not contain the tumour; medseg.data.synth changed its draws"
        )
    images = {name: np.where(brain, image, 0).astype(np.int16) for name, image in case.images.items()}
    return synth_brats.BratsCase(
        images=images, label=case.label, affine=case.affine, has_enhancing=case.has_enhancing
    )


def _write_case(out: Path, i: int, shape: tuple[int, int, int], seed: int, skull_strip: bool) -> Path:
    """Write case ``i`` unless its complete folder is there already; return the folder."""
    cid = f"BraTS2021_{i:05d}"
    folder = out / cid
    names = [folder / f"{cid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")]
    stamp = folder / ".shape"
    wanted = json.dumps({"shape": shape, "seed": seed, "skull_strip": skull_strip})
    if not (all(p.is_file() for p in names) and stamp.is_file() and stamp.read_text() == wanted):
        if skull_strip:
            case = _skull_stripped_case(i, seed, shape)
        else:
            case = synth_brats.make_brats_case(np.random.default_rng(np.random.SeedSequence([seed, i])), shape)
        for name, image in case.images.items():
            save_nifti(image, case.affine, folder / f"{cid}_{name}.nii.gz")
        save_nifti(case.label, case.affine, folder / f"{cid}_seg.nii.gz")
        stamp.write_text(wanted)
    return folder


def write_brats_cases(
    out: str | Path,
    cases: int,
    shape: Sequence[int] = (240, 240, 155),
    seed: int = 0,
    skull_strip: bool = True,
    workers: int | None = None,
) -> list[Path]:
    """Write ``cases`` synthetic BraTS 2021 cases (``CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz``).

    Existing complete case folders are kept (the data are a deterministic function of
    ``(seed, index, shape)``), so reruns do not pay for generation again. A BraTS-size case
    takes about 25 s on one core, so cases are written in a process pool.

    Args:
        out: the dataset folder (created).
        cases: number of cases.
        shape: ``(X, Y, Z)``; BraTS is 240x240x155.
        seed: the seed of ``medseg data synth brats``.
        skull_strip: zero everything outside the brain, as real BraTS is.
        workers: processes writing cases at once (default: every core, at most one per case).

    Returns:
        The case folders.
    """
    shape = tuple(int(s) for s in shape)
    out = Path(out)
    workers = max(1, min(workers or os.cpu_count() or 1, cases))
    if workers == 1:
        return [_write_case(out, i, shape, seed, skull_strip) for i in range(cases)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_write_case, [out] * cases, range(cases), [shape] * cases, [seed] * cases,
                             [skull_strip] * cases))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Device, library versions, CPU model, thread count and load, for the results JSON."""
    import monai
    import nibabel
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": f"cuda ({gpu})" if gpu else "cpu",
        "gpu": gpu,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The checked-out commit, suffixed ``-dirty`` when the tree has uncommitted changes."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude", "*"],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of the BraTS 2021 regions TC {1,4}, WT {1,2,4}, ET {4} between two label maps."""
    regions = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
    return {name: dice(np.isin(pred, values), np.isin(truth, values)) for name, values in regions.items()}


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, ``time.perf_counter``)."""

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(path: str | Path, result: dict[str, Any], table: str, echo: bool = True) -> None:
    """Write ``result`` as JSON at ``path`` and ``table`` (markdown) beside it as ``.md``.

    ``echo`` prints the table too (off for the partial results a benchmark rewrites as it goes).
    """
    path = Path(path)
    result = dict(result)
    result.setdefault("loadavg_at_end", list(os.getloadavg()))
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(path.with_suffix(".md"), table + "\n")
    if echo:
        print(table, flush=True)
        print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


def medseg_command(
    bundle: Path, data: Path, out: Path, device: str = "auto", roi: tuple[int, ...] | None = None
) -> list[str]:
    """The ``medseg infer`` command line (``roi``: override the bundle's 240x240x160 window)."""
    command = [
        sys.executable,
        "-m",
        "medseg",
        "infer",
        str(bundle),
        "--input",
        str(data),
        "--output",
        str(out),
        "--device",
        device,
        "--no-progress",
        "--overwrite",
    ]
    return command + (["--roi", *map(str, roi)] if roi else [])


def run_medseg(cli: Sequence[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``python -m medseg CLI...`` from the repository root, its output to ``log``; return its wall seconds.

    Args:
        cli: the arguments after ``medseg``.
        log: the file stdout and stderr go to (its folder is made).
        env: the environment (default: this process's, with ``PYTHONUNBUFFERED``).

    Raises:
        RuntimeError: on a non-zero exit status, with the last 40 lines of the log.
    """
    command = [sys.executable, "-m", "medseg", *cli]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ medseg", " ".join(cli), flush=True)
    with log.open("w") as stream, Timer() as t:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        rc = subprocess.run(command, check=False, stdout=stream, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[1],
                            env=env if env is not None else dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"exit status {rc}: {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    return t.seconds


def read_brats_evaluation(csv_path: Path, expected: int, name: str) -> dict[str, Any]:
    """What ``medseg evaluate --task brats --out CSV`` wrote: Dice of WT, TC and ET, mean over cases and per case.

    Args:
        csv_path: its ``--out`` (``summary.json`` is read beside it).
        expected: how many cases it must have scored.
        name: the run, for the error.

    Returns:
        ``dice`` (region -> mean over cases), ``mean_dice`` (over the three regions),
        ``per_case`` (case id -> region Dice and their mean) and ``convention``.

    Raises:
        RuntimeError: a case failed or fewer than ``expected`` were scored.
    """
    import csv

    regions = ("WT", "TC", "ET")
    summary = json.loads((csv_path.parent / "summary.json").read_text())
    if summary["n_failed"] or summary["n_evaluated"] != expected:
        raise RuntimeError(f"{name}: {summary['n_evaluated']} of {expected} cases evaluated: {summary['failed']}")
    per_case = {}
    with csv_path.open() as stream:
        for row in csv.DictReader(stream):
            dices = {r: float(row[f"dice_{r}"]) for r in regions}
            per_case[row["case_id"]] = {**dices, "mean": float(np.mean(list(dices.values())))}
    dice = {r: float(summary["metrics"][f"dice_{r}"]["mean"]) for r in regions}
    return {"dice": dice, "mean_dice": float(np.mean(list(dice.values()))), "per_case": per_case,
            "convention": summary.get("convention")}

"""Train the shared SegResNet weights that the medseg-vs-stock benchmarks both load.

There are no public weights for the synthetic cases, and a network with random weights
makes Dice comparisons meaningless (its masks are noise), so this briefly trains the
model-zoo SegResNet (blocks_down 1,2,2,4, init_filters 16, 4 -> 3 regions TC/WT/ET) with
medseg's training transforms on small foreground-rich crops, then writes:

* ``OUT/segresnet_state_dict.pt``: a plain ``state_dict`` (what the stock MONAI config loads),
* ``OUT/bundle/``: a medseg output bundle from the same tensors: ``configs/inference.json``
  (copied from ``bundles/brats_segresnet``: window 240x240x160, sw batch 1, overlap 0.5) and
  ``models/model.pt`` (a self-describing medseg checkpoint, :mod:`medseg.checkpoint`).

``--write-cases N`` first writes N synthetic cases of ``--data-seed`` (default 1) into
``--data``: the benchmarks segment the cases of seed 0, so the weights never saw them.
On 2 CPU cores, 240 steps of two 64³ crops take about 20 minutes; that is a stand-in for
trained weights (its Dice is in the results JSONs), not a model to use. Run::

    python benchmarks/reference_weights.py --data TRAIN --write-cases 6 --out WEIGHTS \
        --steps 240 --crop 64 --batch 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import SEGRESNET_KWARGS, write_brats_cases, write_shared_weights
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceLoss

from medseg.engine.data import prepare_datalist, split
from medseg.networks import build_network
from medseg.transforms import train_transforms

BUNDLE_CONFIG = (
    Path(__file__).resolve().parents[1] / "bundles" / "brats_segresnet" / "configs" / "inference.json"
)


def write_weights(network: torch.nn.Module, out: Path) -> tuple[Path, Path]:
    """Write ``network``'s weights as a plain state_dict and as a medseg output bundle.

    Args:
        network: a SegResNet built with :data:`common.SEGRESNET_KWARGS`.
        out: the folder (created).

    Returns:
        The state_dict file and the bundle folder (:func:`common.write_shared_weights`).
    """
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    return write_shared_weights(state, {"name": "segresnet", "kwargs": SEGRESNET_KWARGS},
                                json.loads(BUNDLE_CONFIG.read_text()), out)


def train(
    data: Path,
    steps: int,
    crop: int,
    batch: int,
    seed: int,
    cases: int | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train the SegResNet on the first ``cases`` cases of ``data`` (all if None) for ``steps`` steps of ``batch`` crops of ``crop``^3."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as work:
        datalist = prepare_datalist(data, work, folds=2, seed=seed)
    items = sorted(split(datalist, "train", 0) + split(datalist, "val", 0), key=lambda d: str(d["image"]))
    items = items[:cases] if cases else items
    transform = train_transforms("regions", (crop,) * 3, convention="brats2021", pos_fraction=0.8)
    transform.set_random_state(seed)
    dataset = CacheDataset(items, transform, progress=False, num_workers=1)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    network = build_network("segresnet", **SEGRESNET_KWARGS)
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)
    losses: list[float] = []
    network.train()
    while len(losses) < steps:
        for item in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(item["image"]), item["label"])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) % 5 == 0:
                print(
                    f"step {len(losses)} loss {sum(losses[-5:]) / 5:.3f} {time.perf_counter():.0f}",
                    flush=True,
                )
            if len(losses) >= steps:
                break
    return network.eval(), losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2021 case folders (labelled)")
    parser.add_argument("--out", type=Path, required=True, help="where the weights go")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, help="train on the first N cases only (default: all)")
    parser.add_argument("--write-cases", type=int, metavar="N",
                        help="first write N synthetic 240x240x155 cases of --data-seed into --data (kept if present)")
    parser.add_argument("--data-seed", type=int, default=1,
                        help="seed of the written cases (default 1; the benchmarks segment seed 0)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.write_cases:
        write_brats_cases(args.data, args.write_cases, seed=args.data_seed)
    network, losses = train(args.data, args.steps, args.crop, args.batch, args.seed, args.cases)
    plain, bundle = write_weights(network, args.out)
    log = {
        "cases": args.cases,
        "steps": args.steps,
        "crop": args.crop,
        "batch": args.batch,
        "seed": args.seed,
        "data_seed": args.data_seed if args.write_cases else None,
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first10": losses[:10],
        "loss_last10": losses[-10:],
    }
    (args.out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {plain} and {bundle} ({log['seconds']} s)")


if __name__ == "__main__":
    main()

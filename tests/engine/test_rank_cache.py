"""A cache per rank under ``torchrun`` (``multi_gpu_train.json``), with real gloo processes on the CPU.

Each rank's ``train#dataset`` caches only its share of the training cases
(:func:`medseg.engine.distributed.rank_share`); the order within a share is re-shuffled every
epoch; and a two-rank run killed with SIGKILL and resumed ends exactly where an uninterrupted
one does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.transforms import Compose, RandSpatialCropd
from tiny_training import BUNDLE, REPO, TINY, final_training, kill_after_first_checkpoint

from medseg.checkpoint import WEIGHTS_KEY, load_checkpoint
from medseg.engine.distributed import EpochSeedHandler, epoch_seed, rank_share
from medseg.engine.handlers.run_state import newest_valid_checkpoint
from medseg.errors import InvalidTypeError, InvalidValueError

CONFIGS = [BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "multi_gpu_train.json"]

# Run under torchrun by test_each_rank_caches_only_its_share: for each run in argv[1], builds the
# bundle's DDP config as monai.bundle run does (train.json, then multi_gpu_train.json), evaluates
# train#dataset and train#sampler, and writes what this rank holds to argv[2]/rank<RANK>.json.
RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    from monai.bundle import ConfigParser

    from medseg.engine.data import split
    from medseg.engine.distributed import rank_share

    runs, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    report = {}
    for run in runs:
        parser = ConfigParser()
        parser.read_config(run["configs"])
        for key, value in {"dataset_dir": run["dataset"], "output_dir": str(out / run["name"]), "num_workers": 0,
                           "tracking_enabled": False, **run["values"]}.items():
            parser[key] = value
        parser.get_parsed_content("initialize")
        dataset = parser.get_parsed_content("train#dataset")
        sampler = parser.get_parsed_content("train#sampler")
        every = split(parser.get_parsed_content("datalist"), "train", parser["fold"])
        orders = []
        for epoch in range(1, 11):
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        report[run["name"]] = {
            "all": [c["case_id"] for c in every],
            "share": [c["case_id"] for c in dataset.data],
            "len": len(dataset),
            "cache_num": dataset.cache_num,
            "cached": [item["case_id"] for item in dataset._cache],  # what the cache holds, transformed
            "sampler_len": len(sampler),
            "orders": orders,
        }
    try:
        rank_share(every[:1], seed=0, source=run["dataset"])
        report["one_case"] = "no error"
    except Exception as error:
        report["one_case"] = f"{type(error).__name__}: {error}"
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
    parser.get_parsed_content("finalize")
""")


@pytest.fixture(scope="module")
def six_brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic cases: 4 training cases with ``num_folds=3`` (even), 3 with ``num_folds=2`` (odd)."""
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("six_brats")
    write_brats_dataset(out, cases=6, shape=(32, 32, 24), seed=3)
    return out


@pytest.fixture(scope="module")
def six_isic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small synthetic ISIC images: 4 training cases with ``num_folds=3``."""
    from medseg.data.synth.isic import write_isic_dataset

    out = tmp_path_factory.mktemp("six_isic")
    write_isic_dataset(out, cases=6, size=(64, 48), seed=0)
    return out


def _torchrun(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]


def _bundle_run(dataset: Path, out: Path, values: dict[str, str]) -> list[str]:
    """``torchrun`` of ``monai.bundle run`` with the DDP config merged on top of ``train.json``."""
    pairs: list[str] = []
    for key, value in values.items():
        pairs += [f"--{key}", {"true": "True", "false": "False"}.get(value, value)]
    files = "[" + ",".join(f"'{f}'" for f in CONFIGS) + "]"
    return _torchrun("-m", "monai.bundle", "run", "--config_file", files, "--dataset_dir", dataset,
                     "--output_dir", out, *pairs)


def test_rank_share_without_a_process_group_is_everything():
    items = [{"case_id": f"c{i}"} for i in range(5)]
    share = rank_share(items, seed=7)
    assert share == items and share is not items  # every case, in its order, in a new list
    assert rank_share((), seed=0) == []
    with pytest.raises(InvalidTypeError, match="seed must be an integer, got str"):
        rank_share(items, seed="0")
    with pytest.raises(InvalidValueError, match=r"seed must be in \[0, 2\*\*32\), got -1"):
        rank_share(items, seed=-1)


def test_rank_share_in_a_world_of_one_is_everything(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        items = list(range(7))
        assert rank_share(items, seed=3) == items
    finally:
        dist.destroy_process_group()


def test_epoch_seeds_depend_on_seed_epoch_and_rank():
    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in range(1, 6) for r in range(4)}
    assert len(seeds) == 2 * 5 * 4 and all(0 <= s < 2**32 for s in seeds)
    assert epoch_seed(0, 3, 1) == epoch_seed(0, 3, 1)


def _draws(engine_epochs: int, start_epoch: int = 0, scramble: bool = False) -> dict[int, list[float]]:
    """Run a real ignite engine whose steps draw from torch, NumPy and a random transform; the draws per epoch."""
    transform = Compose([RandSpatialCropd("x", roi_size=(2, 2), random_size=False)])
    drawn: dict[int, list[float]] = {}

    def step(engine: Engine, batch: int) -> None:
        crop = transform({"x": torch.arange(64.0).reshape(1, 8, 8)})["x"]
        drawn.setdefault(engine.state.epoch, []).extend(
            [float(torch.rand(())), float(np.random.rand()), float(crop.flatten()[0])])

    engine = Engine(step)
    EpochSeedHandler(seed=5, transform=transform, rank=1).attach(engine)
    if start_epoch:
        @engine.on(Events.STARTED)
        def resume(e: Engine) -> None:  # what ResumeLoader does: the epoch comes back, the RNGs are someone else's
            e.state.epoch = start_epoch
            e.state.iteration = start_epoch * 4
            if scramble:
                torch.manual_seed(12345)
                transform.set_random_state(seed=999)
    engine.run(range(4), max_epochs=engine_epochs)
    return drawn


def test_epoch_seed_handler_makes_an_epoch_independent_of_earlier_rng_states():
    straight = _draws(3)
    resumed = _draws(3, start_epoch=1, scramble=True)
    assert set(resumed) == {2, 3}
    assert resumed[2] == straight[2] and resumed[3] == straight[3]
    assert straight[1] != straight[2]  # each epoch draws anew
    with pytest.raises(InvalidTypeError, match="set_random_state"):
        EpochSeedHandler(seed=0, transform=object())


def test_each_rank_caches_only_its_share(six_brats, six_isic, tmp_path):
    """Two real gloo ranks build a bundle's DDP ``train#dataset``: even shares, each rank caching its own alone.

    3D (``brats_attention_unet3d``) with 4 training cases (disjoint shares of 2) and with 3
    (shares of 2, one case dealt to both ranks), and 2D (``isic_light_unet``, 4 cases).
    """
    isic = REPO / "bundles" / "isic_light_unet" / "configs"
    runs = [{"name": "even", "configs": CONFIGS, "dataset": six_brats, "values": {"num_folds": 3}},
            {"name": "odd", "configs": CONFIGS, "dataset": six_brats, "values": {"num_folds": 2}},
            {"name": "isic", "configs": [isic / "train.json", isic / "multi_gpu_train.json"], "dataset": six_isic,
             "values": {"num_folds": 3}}]
    script = tmp_path / "rank_report.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(_torchrun(script, json.dumps(runs, default=str), out), cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [len(ranks[0][name]["all"]) for name in ("even", "odd", "isic")] == [4, 3, 4]
    for name in ("even", "odd", "isic"):
        r0, r1 = ranks[0][name], ranks[1][name]
        every = r0["all"]
        assert r1["all"] == every  # both ranks read the same datalist
        share = (len(every) + 1) // 2  # DDP needs as many steps on each rank: ceil(n / 2)
        for r in (r0, r1):
            assert len(r["share"]) == r["len"] == r["cache_num"] == r["sampler_len"] == share, (name, r)
            assert len(set(r["share"])) == share  # no case twice within a rank
            assert r["cached"] == r["share"], (name, r)  # the cache holds the rank's cases, no other
            assert all(sorted(order) == list(range(share)) for order in r["orders"])
            assert len({tuple(order) for order in r["orders"]}) > 1  # re-shuffled from epoch to epoch
        assert set(r0["share"]) | set(r1["share"]) == set(every)
        both = set(r0["share"]) & set(r1["share"])
        if len(every) % 2 == 0:
            assert not both, (name, r0["share"], r1["share"])
        else:
            # MONAI's even_divisible pads: the first case of the shuffled order is dealt again, to rank 1
            assert len(both) == 1 and r1["share"][-1] == r0["share"][0], (name, r0["share"], r1["share"])
    for r in ranks:
        assert r["one_case"].startswith("DataError: ") and str(six_isic) in r["one_case"], r["one_case"]
        assert "fewer training cases than ranks" in r["one_case"] and "1 training case(s) for 2" in r["one_case"]


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it, read from ``/proc`` (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _kill_tree(root: int) -> None:
    """SIGKILL the launcher and both ranks, the ranks first (as a node that loses power)."""
    for pid in reversed(_process_tree(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_two_rank_sigkill_then_resume_matches_uninterrupted(six_brats, tmp_path):
    """4 training cases, 2 per rank: the resumed run re-shuffles and re-draws each epoch as the straight one did."""
    values = {**TINY, "num_folds": "3", "tracking_enabled": "false"}  # 4 training and 2 validation cases
    straight = tmp_path / "straight"
    result = subprocess.run(_bundle_run(six_brats, straight, values), cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    interrupted = tmp_path / "interrupted"
    killed_at = kill_after_first_checkpoint(_bundle_run(six_brats, interrupted, values), tmp_path,
                                            interrupted / "models" / "last.pt", kill=_kill_tree)
    assert killed_at in (1, 2)
    # the ranks may have saved one more epoch before the kill reached them; resume takes the newest
    resume_epoch = newest_valid_checkpoint(interrupted / "models")[1]["epoch"]
    assert resume_epoch in (1, 2)
    resumed = subprocess.run(_bundle_run(six_brats, interrupted, {**values, "resume_dir": str(interrupted)}),
                             cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert f"at epoch {resume_epoch}" in resumed.stdout + resumed.stderr  # it did resume, the ranks were dead

    a, b = final_training(straight), final_training(interrupted)
    assert a["epochs"] == b["epochs"] == 3
    for key in ("train_loss", "val_mean_dice", "val_dice_TC", "val_dice_WT", "val_dice_ET", "lr"):
        assert b["final_metrics"][key] == a["final_metrics"][key], key  # bit for bit on the CPU
    assert b["best_metric"] == a["best_metric"]
    wa = load_checkpoint(straight / "models" / "last.pt")
    wb = load_checkpoint(interrupted / "models" / "last.pt")
    assert wa["epoch"] == wb["epoch"] == 3
    weights_a, weights_b = wa[WEIGHTS_KEY], wb[WEIGHTS_KEY]
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name

"""The training fast path (``medseg.engine.fastpath``) and the 3D bundles that use it by default.

The CUDA side (patches augmented on the GPU, bf16, fused Adam) runs under ``-m gpu``; on the
CPU the same thread loader and device move are exercised with ``device="cpu"``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from tiny_training import REPO, TINY, medseg, set_args

from medseg.data.synth.writers import write_brats_dataset
from medseg.engine import fastpath
from medseg.errors import MedsegError
from medseg.transforms import train_transforms

BUNDLES_3D = ("brats_segresnet", "brats_attention_unet3d", "generic_3d")


@pytest.fixture(scope="module")
def brats_items(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("fast_brats")
    write_brats_dataset(root, cases=2, shape=(32, 32, 24), seed=5)
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    return [{"image": [str(c / f"{c.name}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")],
             "label": str(c / f"{c.name}_seg.nii.gz")} for c in cases]


def _patches(items: list[dict], device: str | None, device_augment: bool, steps: int = 4) -> list[dict]:
    transform = train_transforms("regions", (16, 16, 16), convention="brats2021", pos_fraction=0.5, device=device)
    transform.set_random_state(seed=7)
    dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=1, progress=False)
    torch.manual_seed(0)
    loader = fastpath.training_loader(dataset, batch_size=1, device_augment=device_augment, num_workers=0)
    out = []
    while len(out) < steps:
        out.extend(loader)
    return out[:steps]


def test_loader_kind_follows_device_augment(brats_items):
    dataset = CacheDataset(brats_items, train_transforms("regions", (16, 16, 16), convention="brats2021"),
                           progress=False)
    threaded = fastpath.training_loader(dataset, batch_size=2, device_augment=True, num_workers=3)
    assert isinstance(threaded, ThreadDataLoader) and threaded.num_workers == 0  # workers cannot touch CUDA
    plain = fastpath.training_loader(dataset, batch_size=2, device_augment=False, num_workers=3)
    assert type(plain) is DataLoader and plain.num_workers == 3
    sampler = torch.utils.data.SequentialSampler(dataset)
    assert fastpath.training_loader(dataset, 1, True, sampler=sampler).sampler is sampler  # DDP's sampler is kept
    with pytest.raises(MedsegError, match="batch_size"):
        fastpath.training_loader(dataset, batch_size=0, device_augment=False)


def test_thread_loader_and_device_move_draw_the_same_patches(brats_items):
    """The background thread and the move to the device change neither the patches nor their order."""
    plain = _patches(brats_items, device=None, device_augment=False)
    fast = _patches(brats_items, device="cpu", device_augment=True)
    for a, b in zip(plain, fast, strict=True):
        assert b["image"].shape == (1, 4, 16, 16, 16) and b["label"].shape == (1, 3, 16, 16, 16)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert len({float(p["image"].sum()) for p in fast}) > 1  # really random crops


def test_device_defaults_on_the_cpu():
    cpu = torch.device("cpu")
    assert fastpath.device_augment_default(cpu) is False and fastpath.device_augment_default("cuda:1") is True
    assert fastpath.augment_device("cpu", False) is None and fastpath.augment_device("cuda", True) == torch.device("cuda")
    assert fastpath.fused_adam(cpu) is False and fastpath.fused_adam("cuda") is True
    assert fastpath.amp_kwargs(cpu) == {"dtype": torch.float16}
    assert fastpath.batch_to_kwargs(True) == {"memory_format": torch.channels_last_3d}
    assert fastpath.batch_to_kwargs(False) == {}


def test_training_precision_follows_the_device_and_the_per_network_table(monkeypatch):
    """The CPU trains in fp32; CUDA in the device's autocast type, unless the measured table names the network."""
    assert fastpath.training_precision("cpu", "segresnet") == "fp32"
    assert fastpath.uses_amp(True, "cpu", "segresnet") is False
    default = fastpath.training_precision("cuda", "segresnet")
    assert default in ("bf16", "fp16")  # without a GPU torch reports no bf16 support: fp16
    assert fastpath.uses_amp(True, "cuda", "segresnet") is True and fastpath.uses_amp(False, "cuda") is False
    monkeypatch.setitem(fastpath.CUDA_PRECISION, "attention_unet3d", "fp32")
    assert fastpath.training_precision("cuda", "attention_unet3d") == "fp32"
    assert fastpath.uses_amp(True, "cuda", "attention_unet3d") is False
    assert fastpath.training_precision("cuda", "segresnet") == default
    monkeypatch.setitem(fastpath.CUDA_PRECISION, "segresnet", "bf16")
    assert fastpath.amp_kwargs("cuda", "segresnet") == {"dtype": torch.bfloat16}


def test_bundle_trainers_take_the_networks_precision(monkeypatch, tmp_path):
    """The 3D bundles' trainer asks the per-network table: attention_unet3d trains in fp32 on CUDA, SegResNet in autocast."""

    def trainer_amp(bundle: str, device: str) -> bool:
        root = REPO / "bundles" / bundle
        workflow = ConfigWorkflow(config_file=str(root / "configs" / "train.json"),
                                  meta_file=str(root / "configs" / "metadata.json"), workflow_type="train",
                                  bundle_root=str(root), output_dir=str(tmp_path / bundle / device),
                                  dataset_dir=str(tmp_path / "none"), tracking_enabled=False)
        parser = workflow.parser
        parser["device"] = f"$torch.device('{device}')"
        parser["use_amp"] = True  # as on a GPU machine with the bundle's amp on
        return parser.get_parsed_content("train#trainer#amp")

    assert fastpath.CUDA_PRECISION.get("attention_unet3d") == "fp32"  # measured: benchmarks/results/training_gpu.json
    assert trainer_amp("brats_attention_unet3d", "cuda") is False
    assert trainer_amp("brats_segresnet", "cuda") is True
    assert trainer_amp("brats_segresnet", "cpu") is False  # the CPU never autocasts
    monkeypatch.delitem(fastpath.CUDA_PRECISION, "attention_unet3d")
    assert trainer_amp("brats_attention_unet3d", "cuda") is True


def test_the_precision_id_overrides_the_table_on_cuda_only():
    """``precision`` (a bundle id, ``auto`` by default) asks for a type on CUDA; the CPU stays fp32; typos are refused."""
    assert fastpath.training_precision("cuda", "attention_unet3d", "bf16") == "bf16"  # the old default, on request
    assert fastpath.training_precision("cuda", "segresnet", "fp32") == "fp32"
    assert fastpath.uses_amp(True, "cuda", "segresnet", "fp32") is False
    assert fastpath.amp_kwargs("cuda", "attention_unet3d", "bf16") == {"dtype": torch.bfloat16}
    for choice in fastpath.PRECISIONS:
        assert fastpath.training_precision("cpu", "segresnet", choice) == "fp32"
    with pytest.raises(MedsegError, match="precision must be one of auto, fp32, fp16, bf16, got 'fp17'"):
        fastpath.training_precision("cpu", "segresnet", "fp17")


def test_medseg_train_refuses_an_unknown_precision_by_name(tiny_brats, tmp_path):
    """The user's route: ``medseg train --set precision=...`` with a typo stops before training, naming the id."""
    result = medseg("train", str(REPO / "bundles" / "brats_attention_unet3d"), "--data", str(tiny_brats),
                    "--output", str(tmp_path / "out"), *set_args({**TINY, "precision": "fp17"}), "--no-tracking",
                    cwd=tmp_path)
    assert result.returncode != 0
    assert "precision must be one of auto, fp32, fp16, bf16, got 'fp17'" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "models").exists()


def test_place_network_converts_the_weights_in_place():
    conv = torch.nn.Conv3d(4, 8, 3)
    placed = fastpath.place_network(conv, "cpu", channels_last=True)
    assert placed is conv and conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 4, 8, 8, 8)
    reference = torch.nn.functional.conv3d(x, conv.weight.contiguous(), conv.bias)
    torch.testing.assert_close(conv(x.to(memory_format=torch.channels_last_3d)), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bundle", BUNDLES_3D)
def test_bundles_build_the_fast_path(bundle, tmp_path):
    """Each 3D bundle's parsed config: the CPU defaults, then the thread loader and channels-last when set."""
    root = REPO / "bundles" / bundle
    data = tmp_path / "data"
    write_brats_dataset(data, cases=3, shape=(24, 24, 16), seed=1)
    for augment in (None, True):
        ids = {"bundle_root": str(root), "output_dir": str(tmp_path / f"out{augment}"), "dataset_dir": str(data),
               "roi_size": [16, 16, 16], "num_workers": 0, "cache_rate": 0.0, "tracking_enabled": False}
        if bundle == "generic_3d":
            ids["pixdim"] = None
        if augment is not None:
            ids.update(device_augment=augment, channels_last=True)
        workflow = ConfigWorkflow(config_file=str(root / "configs" / "train.json"),
                                  meta_file=str(root / "configs" / "metadata.json"), workflow_type="train", **ids)
        parser = workflow.parser
        layout = bool(augment)  # channels_last is opt-in, set together with device_augment here
        assert parser.get_parsed_content("channels_last") is layout
        network = parser.get_parsed_content("network")
        convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
        wanted = torch.channels_last_3d if layout else torch.contiguous_format
        assert convs and all(c.weight.is_contiguous(memory_format=wanted) for c in convs)
        assert any(not c.weight.is_contiguous() for c in convs) is layout  # 3x3x3 kernels really converted
        assert parser.get_parsed_content("train#trainer#to_kwargs") == fastpath.batch_to_kwargs(layout)
        assert parser.get_parsed_content("optimizer").defaults["fused"] is False
        loader = parser.get_parsed_content("train#dataloader")
        assert isinstance(loader, ThreadDataLoader) is bool(augment), (bundle, augment)


@pytest.mark.parametrize("bundle", sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir()))
def test_multi_gpu_config_keeps_every_import(bundle):
    """``multi_gpu_train.json`` replaces the ``imports`` list of ``train.json``, so it must repeat every import."""
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())["imports"]
    multi = json.loads((configs / "multi_gpu_train.json").read_text())["imports"]
    assert set(train) <= set(multi), sorted(set(train) - set(multi))


def test_tiny_training_with_and_without_the_thread_loader(tiny_brats, tmp_path):
    """Real ``medseg train`` runs both ways; with 0 workers both draw the same patches, so the metrics match."""
    finals = {}
    for device_augment in ("false", "true"):
        out = tmp_path / device_augment
        result = medseg("train", str(REPO / "bundles" / "brats_attention_unet3d"), "--data", str(tiny_brats),
                        "--output", str(out), *set_args({**TINY, "max_epochs": "2", "device_augment": device_augment}),
                        "--no-tracking", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        final = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["final_metrics"]
        assert np.isfinite(final["train_loss"])
        finals[device_augment] = {k: v for k, v in final.items() if k != "samples_per_s"}
    assert finals["true"] == finals["false"]


@pytest.mark.gpu
def test_fast_path_on_cuda(brats_items):
    """On CUDA: patches come out of the thread loader on the GPU, and a bf16 fused-Adam step runs."""
    device = torch.device("cuda")
    batches = _patches(brats_items, device=fastpath.augment_device(device, True), device_augment=True, steps=2)
    assert all(b["image"].is_cuda and b["label"].is_cuda for b in batches)
    cpu = _patches(brats_items, device=None, device_augment=False, steps=2)
    for a, b in zip(cpu, batches, strict=True):
        torch.testing.assert_close(b["image"].cpu(), a["image"])
        assert torch.equal(b["label"].cpu(), a["label"])
    network = fastpath.place_network(torch.nn.Conv3d(4, 3, 3, padding=1), device, channels_last=False)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, fused=fastpath.fused_adam(device))
    with torch.autocast("cuda", **fastpath.amp_kwargs(device)):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(batches[0]["image"]), batches[0]["label"])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)

"""``torch.compile`` of the training network: one opt-in id of the 3D bundles, reachable from both routes.

The real inductor compiles on the CPU here (about 30 s for the tiny attention U-Net); the GPU
figures come from ``benchmarks/training_vs_stock.py --levers compile cuda_graphs``.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigWorkflow
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import load_checkpoint
from medseg.engine.fastpath import compile_kwargs
from medseg.networks import build_network


@pytest.mark.slow
def test_medseg_train_compiles_and_its_checkpoint_is_the_plain_networks(tiny_brats, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, "--no-tracking",
                    *set_args({**TINY, "max_epochs": "2", "compile": "true"}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using compile" in result.stdout + result.stderr  # MONAI's trainer compiled the network
    checkpoint = load_checkpoint(out / "models" / "model.pt")
    network = build_network(checkpoint["network"]["name"], **checkpoint["network"]["kwargs"])
    # Checkpoints hold the network itself, not the compiled wrapper (no "_orig_mod." keys).
    assert set(checkpoint["model"]) == set(network.state_dict())
    network.load_state_dict(checkpoint["model"])
    recorded = json.loads((out / "configs" / "train.json").read_text())
    assert recorded["compile"] is True and recorded["compile_mode"] == "default"
    case = min(p for p in tiny_brats.iterdir() if p.is_dir())
    infer = medseg("infer", out, "--input", case, "--output", tmp_path / "pred", "--no-progress", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert (tmp_path / "pred" / f"{case.name}.nii.gz").is_file()


def test_the_monai_workflow_hands_the_compile_ids_to_its_trainer(tmp_path, monkeypatch, isolated_logging):
    monkeypatch.chdir(tmp_path)
    configs = BUNDLE / "configs"
    workflow = ConfigWorkflow(config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
                              workflow_type="train", compile=True, compile_mode="reduce-overhead")
    workflow.initialize()
    assert workflow.check_properties() == []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.compile is True and trainer.optim_set_to_none is True  # CUDA graphs keep no gradients
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    assert workflow.parser.get_parsed_content("train#trainer#compile_kwargs") == {"mode": "reduce-overhead"}
    # Off by default: the trainer runs the network as it is.
    default = ConfigWorkflow(config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
                             workflow_type="train")
    default.initialize()
    trainer = default.parser.get_parsed_content("train#trainer")
    assert trainer.compile is False and trainer.optim_set_to_none is False


def test_an_unknown_compile_mode_and_cuda_graphs_with_accumulation_are_refused():
    with pytest.raises(ValueError, match="compile_mode must be one of default, reduce-overhead, max-autotune, "
                                         "max-autotune-no-cudagraphs, got 'fast'"):
        compile_kwargs("fast")
    with pytest.raises(ValueError, match="records CUDA graphs, which cannot accumulate gradients"):
        compile_kwargs("reduce-overhead", accumulation_steps=2)
    assert compile_kwargs("max-autotune-no-cudagraphs", accumulation_steps=2) == {"mode": "max-autotune-no-cudagraphs"}
    assert compile_kwargs("reduce-overhead", accumulation_steps=2, enabled=False) == {"mode": "reduce-overhead"}


@pytest.mark.gpu
def test_medseg_train_with_cuda_graphs_on_the_gpu(tiny_brats, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, "--no-tracking",
                    *set_args({**TINY, "max_epochs": "3", "compile": "true", "compile_mode": "reduce-overhead"}),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(out / "models" / "model.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())

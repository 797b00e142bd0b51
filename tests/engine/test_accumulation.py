"""Gradient accumulation with clipping, with and without AMP's GradScaler (issue #15, item 2).

The clip runs once per optimizer step: N accumulated micro-batches of one case give the update of
one batch of N. MONAI's trainer makes a CUDA ``GradScaler`` under AMP; on the CPU the same code
path is taken with ``torch.amp.GradScaler("cpu")``, which raises on a second ``unscale_`` before
``update`` exactly as the CUDA one does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from tiny_training import BUNDLE, TINY, medseg, set_args
from torch import nn

from medseg.engine.handlers import GradientClipHandler

N = 4


def _network() -> nn.Module:
    """No batch norm: a batch of N and N batches of one see the same function."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1))


def _data() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(1, 2, 6, 6, 6, generator=generator),
             "label": torch.randn(1, 1, 6, 6, 6, generator=generator)} for _ in range(N)]


def _train(network: nn.Module, loader: list, accumulation: int, amp: bool, max_norm: float) -> nn.Module:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=network,
                                optimizer=optimizer, loss_function=nn.MSELoss(), accumulation_steps=accumulation,
                                train_handlers=[GradientClipHandler(max_norm)], decollate=False)
    if amp:  # what SupervisedTrainer does on CUDA, with the CPU's scaler; its autocast stays a no-op here
        trainer.amp, trainer.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer.run()
    return network


@pytest.mark.parametrize("amp", [False, True])
def test_accumulated_micro_batches_give_the_update_of_one_batch(amp):
    micro = _data()
    batch = [{k: torch.cat([m[k] for m in micro]) for k in ("image", "label")}]
    start = _network()
    # A small threshold, so that the clip bites: clipping a partial sum would change the result.
    accumulated = _train(copy.deepcopy(start), micro, accumulation=N, amp=amp, max_norm=0.05)
    whole = _train(copy.deepcopy(start), batch, accumulation=1, amp=amp, max_norm=0.05)
    moved = False
    for a, b, s in zip(accumulated.parameters(), whole.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        moved |= not torch.equal(a, s)
    assert moved


def test_accumulation_in_a_real_training_run(tiny_brats, tmp_path):
    """``medseg train --set accumulation_steps=2`` with clipping on, as a user runs it."""
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", tmp_path / "out", "--no-tracking",
                    *set_args({**TINY, "max_epochs": "1", "accumulation_steps": "2", "grad_clip": "1.0"}),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "models" / "model.pt").is_file()

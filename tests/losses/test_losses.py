"""Loss values on known inputs: perfect predictions, boundary signs, schedules, smoothing, supervision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.losses import (
    LOSS_NAMES,
    BoundaryLoss,
    DeepSupervisionLoss,
    RegionBoundaryLoss,
    build_loss,
    signed_distance_maps,
)

C = 3


def index_target(seed: int = 0) -> torch.Tensor:
    """A (2, 1, 16, 16) class-index map with every class present."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(2, 1, 16, 16)
    t[:, :, 2:8, 2:8] = 1
    t[:, :, 9:14, 6:15] = 2
    t[1, :, 0, :] = torch.randint(0, C, (16,), generator=g).float()
    return t


def perfect_logits(onehot: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    return (onehot * 2 - 1) * scale


def onehot_of(t: torch.Tensor) -> torch.Tensor:
    return F.one_hot(t[:, 0].long(), C).movedim(-1, 1).float()


@pytest.mark.parametrize("name", ["dice_focal", "dice_ce", "tversky"])
@pytest.mark.parametrize("sigmoid", [False, True])
def test_region_losses_vanish_for_a_perfect_prediction_and_not_otherwise(name, sigmoid):
    t = index_target()
    target = onehot_of(t) if sigmoid else t  # sigmoid: one mask per region channel
    loss = build_loss(name, sigmoid=sigmoid)
    assert float(loss(perfect_logits(onehot_of(t)), target)) < 1e-4
    wrong = perfect_logits(onehot_of(t).roll(1, dims=1))
    assert float(loss(wrong, target)) > 0.5


def test_default_loss_is_monai_dice_focal():
    from monai.losses import DiceFocalLoss

    assert isinstance(build_loss(), DiceFocalLoss)


def test_tversky_weighs_false_negatives_more_by_default():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1  # half the image
    loss = build_loss("tversky", sigmoid=True)
    under = torch.full((1, 1, 8, 8), -30.0)
    under[..., :2, :] = 30.0  # misses half the foreground (false negatives)
    over = torch.full((1, 1, 8, 8), -30.0)
    over[..., :6, :] = 30.0  # as many false positives instead
    assert float(loss(under, target)) > float(loss(over, target))


def test_ce_label_smoothing_matches_its_formula():
    eps = 0.2
    t = index_target()
    logits = torch.randn(2, C, 16, 16, generator=torch.Generator().manual_seed(3))
    loss = float(build_loss("ce_label_smoothing", smoothing=eps)(logits, t))
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, t.long()).mean()
    uniform = -logp.mean(dim=1).mean()
    assert math.isclose(loss, float((1 - eps) * nll + eps * uniform), rel_tol=1e-5)
    # A perfect, confident prediction is no longer free: smoothing keeps logits finite.
    assert float(build_loss("ce_label_smoothing", smoothing=eps)(perfect_logits(onehot_of(t)), t)) > 1.0
    assert float(build_loss("ce_label_smoothing", smoothing=0.0)(perfect_logits(onehot_of(t)), t)) < 1e-6


def test_ce_label_smoothing_sigmoid_targets():
    t = onehot_of(index_target())
    loss = build_loss("ce_label_smoothing", sigmoid=True, smoothing=0.1)
    expected = F.binary_cross_entropy_with_logits(perfect_logits(t), t * 0.9 + 0.05)
    assert math.isclose(float(loss(perfect_logits(t), t)), float(expected), rel_tol=1e-6)


def test_signed_distance_maps_follow_kervadec():
    mask = np.zeros((1, 1, 1, 7), bool)
    mask[..., 2:5] = True  # foreground at x = 2, 3, 4
    phi = signed_distance_maps(mask)[0, 0, 0]
    np.testing.assert_allclose(phi, [2, 1, 0, -1, 0, 1, 2])
    assert not signed_distance_maps(np.zeros((1, 1, 4, 4), bool)).any()  # empty channel -> 0
    assert not signed_distance_maps(np.ones((1, 1, 4, 4), bool)).any()  # full channel -> 0
    spaced = signed_distance_maps(mask, spacing=(1.0, 2.0))[0, 0, 0]
    np.testing.assert_allclose(
        spaced, [4, 2, -1, -3, -1, 2, 4]
    )  # the "- 1" stays in voxels, as in the paper code


def test_boundary_loss_signs():
    t = torch.zeros(1, 1, 16, 16)
    t[..., 4:12, 4:12] = 1
    loss = BoundaryLoss(sigmoid=False)
    perfect = float(loss(perfect_logits(onehot_of(t)[:, :2].contiguous()), t))
    assert perfect < 0  # all probability inside the object, where the distance is negative
    shifted = float(loss(perfect_logits(onehot_of(t.roll(5, dims=-1))[:, :2].contiguous()), t))
    assert shifted > perfect
    nothing = torch.stack([torch.full((1, 16, 16), 30.0), torch.full((1, 16, 16), -30.0)], dim=1)
    assert abs(float(loss(nothing, t))) < 1e-6  # no foreground predicted: p ~ 0 everywhere
    empty_target = torch.zeros(1, 1, 16, 16)
    assert float(loss(torch.randn(1, 2, 16, 16), empty_target)) == 0.0  # phi = 0 without foreground


def test_boundary_loss_sigmoid_regions():
    t = onehot_of(index_target())
    loss = BoundaryLoss(sigmoid=True)
    assert float(loss(perfect_logits(t), t)) < 0
    assert float(loss(perfect_logits(t.roll(4, dims=-1)), t)) > float(loss(perfect_logits(t), t))


def test_boundary_weight_rises_per_epoch_and_is_capped():
    loss = build_loss("boundary", alpha_start=0.1, alpha_step=0.2, alpha_max=0.5)
    assert isinstance(loss, RegionBoundaryLoss)
    weights = []
    for epoch in (1, 2, 3, 4):
        loss.set_epoch(epoch)
        weights.append(loss.alpha)
    assert weights == pytest.approx([0.1, 0.3, 0.5, 0.5])
    t = index_target()
    logits = torch.randn(2, C, 16, 16, generator=torch.Generator().manual_seed(0))
    loss.set_epoch(2)
    expected = 0.7 * float(loss.region(logits, t)) + 0.3 * float(loss.boundary(logits, t))
    assert math.isclose(float(loss(logits, t)), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="`epoch` is 1-based, got 0"):
        loss.set_epoch(0)


def test_deep_supervision_accepts_lists_and_dynunet_stacks():
    base = build_loss("dice_ce")
    t = index_target()
    full = torch.randn(2, C, 16, 16, generator=torch.Generator().manual_seed(1))
    half = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(2))
    ds = DeepSupervisionLoss(base, weights=[1.0, 0.5])
    t_half = F.interpolate(t, size=(8, 8), mode="nearest-exact")
    expected = float(base(full, t)) + 0.5 * float(base(half, t_half))
    assert math.isclose(float(ds([full, half], t)), expected, rel_tol=1e-5)
    stacked = torch.stack([full, full], dim=1)  # DynUNet: (B, N, C, H, W)
    assert math.isclose(float(ds(stacked, t)), 1.5 * float(base(full, t)), rel_tol=1e-5)
    assert math.isclose(float(ds(full, t)), float(base(full, t)), rel_tol=1e-6)  # eval output
    with pytest.raises(ValueError, match="`weights` has 2 entries but the network returned 3 outputs"):
        ds([full, half, half], t)
    assert float(ds([full, half], t.long())) > 0  # integer targets are resized too


def test_factory_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss 'dice'; valid names are: " + ", ".join(LOSS_NAMES)):
        build_loss("dice")
    with pytest.raises(TypeError, match=r"set from `sigmoid`"):
        build_loss("dice_ce", softmax=True)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['lambda_foc'\]"):
        build_loss("dice_focal", lambda_foc=1.0)
    with pytest.raises(ValueError, match=r"`smoothing` must be in \[0, 1\), got 1.5"):
        build_loss("ce_label_smoothing", smoothing=1.5)

"""medseg's attention U-Net: the gates take part, deep supervision, argument checks."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import DeepSupervisionLoss, build_loss
from medseg.networks import AttentionUNet, build_network
from medseg.networks.blocks import AttentionGate


def small(dims: int = 2, **kwargs) -> AttentionUNet:
    torch.manual_seed(0)
    return build_network(
        "attention_unet3d", spatial_dims=dims, in_channels=1, out_channels=2, features=(4, 8, 16), **kwargs
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_gates_record_coefficients_in_unit_interval(dims):
    model = small(dims).eval()
    x = torch.randn((1, 1) + (16,) * dims)
    with torch.no_grad():
        model(x)
    # gates[0] is the deepest (the 8-channel skip at half resolution), gates[1] the full-resolution one.
    deep, shallow = model.gates
    assert deep.last_coefficients.shape == (1, 1) + (8,) * dims
    assert shallow.last_coefficients.shape == (1, 1) + (16,) * dims
    for gate in model.gates:
        alpha = gate.last_coefficients
        assert ((alpha > 0) & (alpha < 1)).all()
        assert alpha.std() > 0  # they vary over space: the gate is not a constant


@pytest.mark.parametrize("dims", [2, 3])
def test_changing_the_coefficients_changes_the_output(dims):
    model = small(dims).eval()
    x = torch.randn((1, 1) + (16,) * dims)
    with torch.no_grad():
        y = model(x)
        recorded_all = [gate.last_coefficients.clone() for gate in model.gates]
        for gate, recorded in zip(model.gates, recorded_all):
            # Feeding back the gate's own coefficients reproduces the output exactly ...
            gate.coefficient_override = recorded
            torch.testing.assert_close(model(x), y, rtol=0, atol=0)
            # ... closing the gate changes it, and so does opening it fully.
            gate.coefficient_override = 0.0
            closed = model(x)
            gate.coefficient_override = 1.0
            opened = model(x)
            gate.coefficient_override = None
            assert (closed - y).abs().max() > 1e-3
            assert (opened - y).abs().max() > 1e-3
            assert (opened - closed).abs().max() > 1e-3
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)


def test_gate_gradients_reach_the_gate_parameters():
    model = small(2).train()
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    for gate in model.gates:
        assert gate.psi.weight.grad is not None and gate.psi.weight.grad.abs().sum() > 0
        assert gate.theta.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_returns_a_list_in_training_and_a_tensor_in_eval(dims):
    model = small(dims, deep_supervision=True, deep_supervision_levels=1)
    x = torch.randn((2, 1) + (16,) * dims)
    outs = model.train()(x)
    assert isinstance(outs, list) and [o.shape for o in outs] == [
        (2, 2) + (16,) * dims,
        (2, 2) + (8,) * dims,
    ]
    target = torch.randint(0, 2, (2, 1) + (16,) * dims).float()
    loss = DeepSupervisionLoss(build_loss("dice_ce"), weights=[1.0, 0.5])(outs, target)
    loss.backward()
    assert model.ds_heads[0].conv.conv.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2) + (16,) * dims


def test_argument_checks_state_the_rule_and_the_value():
    with pytest.raises(ValueError, match=r"`strides` needs len\(features\)-1 = 3 entries, got 2: \(2, 2\)"):
        AttentionUNet(spatial_dims=3, features=(4, 8, 16, 32), strides=(2, 2))
    with pytest.raises(ValueError, match=r"`spatial_dims` must be one of \(2, 3\), got 1"):
        AttentionUNet(spatial_dims=1)
    with pytest.raises(ValueError, match=r"`features` needs at least 2 positive integers, got \(4,\)"):
        AttentionUNet(features=(4,))
    with pytest.raises(
        ValueError, match=r"`deep_supervision_levels` must be in \[1, len\(features\)-2 = 1\], got 3"
    ):
        AttentionUNet(features=(4, 8, 16), deep_supervision=True, deep_supervision_levels=3)
    with pytest.raises(TypeError, match="`out_channels` must be an int, got float: 2.0"):
        AttentionUNet(out_channels=2.0)


def test_input_checks_name_the_shape():
    model = small(2).eval()
    with pytest.raises(ValueError, match=r"input spatial shape \(18, 16\) must be divisible by 4"):
        model(torch.randn(1, 1, 18, 16))
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 16, 16, 16\)"):
        model(torch.randn(1, 1, 16, 16, 16))


def test_gate_follows_the_paper_shapes():
    gate = AttentionGate(spatial_dims=2, skip_channels=6, gate_channels=12, subsample=2)
    x, g = torch.randn(1, 6, 8, 8), torch.randn(1, 12, 4, 4)
    assert gate(x, g).shape == x.shape
    assert gate.theta.stride == (2, 2) and gate.theta.out_channels == 3

"""Every registered network, in every dimension it supports: shape, backward, no NaN, seeding.

The cases come from ``list_networks()``, so a newly registered network is tested at once,
with the tiny configuration it registers as ``smoke_kwargs`` (a test fails until it has one).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medseg.errors import MedsegError
from medseg.networks import build_network, list_networks, network_info

# Input edge per network: 32, except SwinUNETR whose 1/32-resolution bottleneck needs >= 2 voxels.
EDGE: dict[str, dict[int, int]] = {"swinunetr": {2: 64, 3: 64}}
IN_CHANNELS, OUT_CHANNELS = 2, 3

CASES = [(name, dims) for name in list_networks() for dims in network_info(name).spatial_dims]
HAS_EINOPS = importlib.util.find_spec("einops") is not None


def tiny_input(name: str, dims: int) -> torch.Tensor:
    edge = EDGE.get(name, {}).get(dims, 32)
    batch = 2 if edge == 32 else 1  # batch 2 exercises batch norm; larger inputs stay affordable at 1
    return torch.randn((batch, IN_CHANNELS) + (edge,) * dims, generator=torch.Generator().manual_seed(1))


def build_tiny(name: str, dims: int, seed: int = 0) -> torch.nn.Module:
    if name == "swinunetr" and not HAS_EINOPS:
        pytest.skip("swinunetr needs the einops package, which is not installed")
    torch.manual_seed(seed)
    kwargs = network_info(name).smoke_kwargs
    return build_network(
        name, spatial_dims=dims, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **kwargs
    )


@pytest.mark.parametrize("name", list_networks())
def test_every_registered_network_has_a_tiny_config(name):
    assert network_info(name).smoke_kwargs is not None, f"register {name!r} with smoke_kwargs (a tiny configuration)"


def test_registry_lists_the_issue_networks():
    expected = {
        "segresnet",
        "unet",
        "dynunet",
        "swinunetr",
        "attention_unet_monai",
        "flexible_unet",
        "attention_unet3d",
        "light_unet",
        "deeplabv3plus",
    }
    assert expected <= set(list_networks())


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_forward_backward_shape_nan_and_seed(name, dims):
    x = tiny_input(name, dims)
    model = build_tiny(name, dims).train()
    torch.manual_seed(123)  # for any dropout in the forward pass
    y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (x.shape[0], OUT_CHANNELS) + x.shape[2:]
    assert torch.isfinite(y).all()
    (y.float() ** 2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)

    # Same seed -> same weights -> same output; another seed -> another output. Both in
    # training mode, as above, so batch-norm statistics play the same part.
    same, different = build_tiny(name, dims, seed=0).train(), build_tiny(name, dims, seed=1).train()
    with torch.no_grad():
        torch.manual_seed(123)
        torch.testing.assert_close(same(x), y.detach(), rtol=0, atol=0)
        torch.manual_seed(123)
        assert not torch.allclose(different(x), y.detach())


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown network 'nope'.*light_unet.*unet"):
        build_network("nope")


def test_unknown_argument_is_named():
    with pytest.raises(TypeError, match=r"'light_unet' got unknown argument\(s\) \['featurez'\]"):
        build_network("light_unet", featurez=(4, 8))
    with pytest.raises(TypeError, match=r"'unet' got unknown argument\(s\) \['chanels'\]"):
        build_network("unet", chanels=(4, 8))


def test_unsupported_dims_are_refused():
    with pytest.raises(ValueError, match=r"'deeplabv3plus' supports spatial_dims in \(2,\), got 3"):
        build_network("deeplabv3plus", spatial_dims=3)


def test_wrapper_argument_checks_state_rule_and_value():
    with pytest.raises(ValueError, match=r"`strides` needs len\(channels\)-1 = 3 entries, got 2: \(2, 2\)"):
        build_network("unet", spatial_dims=2, channels=(4, 8, 16, 32), strides=(2, 2))
    build_network("unet", spatial_dims=3, channels=(4, 8, 16), strides=((2, 2, 1), 2))  # anisotropic is fine
    with pytest.raises(ValueError, match="never does"):
        build_network("flexible_unet", pretrained=True)
    with pytest.raises(ValueError, match="`backbone` must be one of"):
        build_network("flexible_unet", backbone="efficientnet-b0")
    with pytest.raises(TypeError, match="`in_channels` must be an int, got str"):
        build_network("segresnet", in_channels="4")


@pytest.mark.skipif(HAS_EINOPS, reason="einops is installed")
def test_swinunetr_without_einops_says_so():
    with pytest.raises(MedsegError, match="einops"):
        build_network("swinunetr", spatial_dims=2)


@pytest.mark.parametrize(("dims", "cin", "cout"), [(2, 1, 2), (2, 3, 2), (3, 4, 3)])
def test_light_unet_default_width_is_at_most_2m_parameters(dims, cin, cout):
    model = build_network("light_unet", spatial_dims=dims, in_channels=cin, out_channels=cout)
    assert sum(p.numel() for p in model.parameters()) <= 2_000_000


def test_parameter_table_has_a_row_per_network():
    from medseg.networks.summary import parameter_table

    table = parameter_table(["light_unet", "deeplabv3plus"])
    assert "| `light_unet` | 2D/3D |" in table
    assert "| `deeplabv3plus` | 2D |" in table and "n/a" in table

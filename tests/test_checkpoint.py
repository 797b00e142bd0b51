"""Self-describing checkpoints: round trip, atomic writes, and refusal of truncated or malicious files."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from medseg.checkpoint import (
    build_from_checkpoint,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from medseg.errors import MedsegError
from medseg.networks import build_network

NETWORK = {
    "name": "light_unet",
    "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": (4, 8)},
}


def tiny():
    torch.manual_seed(0)
    return build_network(NETWORK["name"], **NETWORK["kwargs"])


def test_round_trip_rebuilds_the_same_network(tmp_path):
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    path = save_checkpoint(
        tmp_path / "ckpt" / "best.pt",
        model.state_dict(),
        network=NETWORK,
        label_convention="multiclass",
        channel_names=["background", "lesion"],
        preprocessing={"intensity": "zscore", "spacing": [1.0, 1.0]},
        epoch=7,
        best_metric=0.83,
        extra={"run": "abc"},
        optimizer_state=optimizer.state_dict(),
        rng_state=capture_rng_state(),
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary file left
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "medseg-checkpoint" and ckpt["format_version"] == 2
    assert set(ckpt["versions"]) == {"medseg", "monai", "torch"}
    assert ckpt["network"] == NETWORK
    assert (ckpt["epoch"], ckpt["best_metric"], ckpt["channel_names"]) == (7, 0.83, ["background", "lesion"])
    assert ckpt["preprocessing"]["intensity"] == "zscore"
    rebuilt = build_from_checkpoint(path)
    assert not rebuilt.training
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    fresh = torch.optim.AdamW(rebuilt.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt["optimizer_state"])


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = save_checkpoint(tmp_path / "c.pt", tiny(), network=NETWORK, rng_state=state)
    restore_rng_state(load_checkpoint(path)["rng_state"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_only_plain_data_may_be_stored(tmp_path):
    with pytest.raises(
        TypeError, match=r"checkpoint\['extra'\]\['spacing'\]: numpy.ndarray cannot be stored"
    ):
        save_checkpoint(tmp_path / "c.pt", tiny(), network=NETWORK, extra={"spacing": np.ones(3)})
    with pytest.raises(TypeError, match=r"numpy.float64"):
        save_checkpoint(
            tmp_path / "c.pt", tiny(), network=NETWORK, best_metric=None, extra={"dice": np.float64(0.5)}
        )
    with pytest.raises(ValueError, match=r'`network` must be \{"name": str, "kwargs": dict\}'):
        save_checkpoint(tmp_path / "c.pt", tiny(), network={"net": "light_unet"})
    assert not (tmp_path / "c.pt").exists()


def test_missing_and_truncated_files_fail_clearly(tmp_path):
    with pytest.raises(MedsegError, match="nowhere.pt: file not found"):
        load_checkpoint(tmp_path / "nowhere.pt")
    path = save_checkpoint(tmp_path / "full.pt", tiny(), network=NETWORK)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        MedsegError, match=r"truncated.pt: not a readable torch file \(truncated or another format\)"
    ):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(MedsegError, match="notes.pt: not a readable torch file"):
        load_checkpoint(text)


def test_a_plain_state_dict_is_not_a_checkpoint_but_loads_with_load_weights(tmp_path):
    model = tiny()
    plain = tmp_path / "model.pt"  # e.g. MONAI's ckpt_export / a bundle's models/model.pt
    torch.save(model.state_dict(), plain)
    with pytest.raises(MedsegError, match="model.pt: not a medseg checkpoint"):
        load_checkpoint(plain)
    other = build_network(NETWORK["name"], **NETWORK["kwargs"])
    load_weights(other, plain)
    torch.testing.assert_close(other.state_dict(), model.state_dict())
    load_weights(other, save_checkpoint(tmp_path / "ckpt.pt", model, network=NETWORK))  # medseg format too
    wrong = build_network("light_unet", spatial_dims=2, in_channels=3, out_channels=2, features=(4, 8, 16))
    with pytest.raises(MedsegError, match=r"model.pt: weights do not fit LightUNet: \d+ missing"):
        load_weights(wrong, plain)


class _Payload:
    """Unpickling this object creates the file `marker` (os.mknod): it stands for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (str(self.marker),))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medseg-checkpoint", "format_version": 1, "model_state": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(MedsegError, match="evil.pt: refused: .*may contain code"):
        load_checkpoint(evil)
    with pytest.raises(MedsegError, match="refused"):
        load_weights(tiny(), evil)
    raw = tmp_path / "raw.pkl.pt"  # a bare pickle, not a torch zip file
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(MedsegError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_format_1_checkpoints_still_load(tmp_path):
    """Checkpoints written before the weights moved to ``model`` (format 1: ``model_state``) load unchanged."""
    torch.manual_seed(0)
    spec = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                                       "strides": [2], "num_res_units": 0}}
    net = build_network(spec["name"], **spec["kwargs"]).eval()
    old = tmp_path / "v1.pt"
    torch.save({"format": "medseg-checkpoint", "format_version": 1, "network": spec,
                "model_state": net.state_dict(), "label_convention": "toy", "channel_names": ["ct"],
                "preprocessing": None, "epoch": 3, "best_metric": 0.5, "extra": {}}, old)
    ckpt = load_checkpoint(old)
    assert "model_state" not in ckpt and set(ckpt["model"]) == set(net.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(build_from_checkpoint(old)(x), net(x))
    new = load_checkpoint(save_checkpoint(tmp_path / "v2.pt", net, network=spec))
    assert new["format_version"] == 2 and set(new["model"]) == set(net.state_dict())

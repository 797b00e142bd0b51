"""A 2.3 KB checkpoint whose network spec asks for a 7 GB U-Net, and the limit settings themselves.

A network is sized from its spec without memory before it is built (the exact parameter count,
no random numbers drawn); a checkpoint asking for more than the limit is refused on every route,
also in a child process whose own peak memory is measured.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile_files import (
    HUGE_UNET,
    HUGE_UNET_PARAMETERS,
    PEAK_CHILD,
    huge_network_checkpoint,
    needs_wait4,
    one_line_error,
    planar_bundle,
    run_measured,
    traced_peak,
)
from rel_helpers import files_under

from medseg.checkpoint import build_from_checkpoint, check_network_size
from medseg.cli.main import main
from medseg.errors import MedsegError
from medseg.inference.model import load_inference_model
from medseg.networks import build_network, list_networks, network_info
from medseg.utils import limits

# ---------------------------------------------------------------- checkpoints: a 7 GB network in 2 KB


@needs_wait4
def test_huge_network_checkpoint_infer_in_a_real_process(tmp_path):
    checkpoint = huge_network_checkpoint(tmp_path / "huge.pt")
    volume = tmp_path / "in" / "case.nii.gz"
    volume.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), volume)
    (tmp_path / "bundle").mkdir()
    code, out, err, peak = run_measured("infer", tmp_path / "bundle", "--checkpoint", checkpoint,
                                        "--input", volume, "--output", tmp_path / "out", "--no-progress")
    assert code == 2, out + err
    one_line_error(err, "infer", checkpoint, "network too large")
    assert "'unet'" in err and "MEDSEG_MAX_PARAMETERS" in err
    assert peak < PEAK_CHILD, f"peak resident memory {peak / 1024**2:.0f} MB"
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()


def test_huge_network_in_a_bundle_and_the_exact_count(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundle"
    checkpoint = huge_network_checkpoint(bundle / "models" / "model.pt")
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), volume)
    assert main(["infer", str(bundle), "--input", str(volume), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "infer", checkpoint, "network too large")
    # Under a higher limit the meta build runs to the end and gives the exact count, still without memory.
    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", str(10**10))
    with traced_peak() as peak:
        assert check_network_size(HUGE_UNET, checkpoint) == HUGE_UNET_PARAMETERS
    assert peak[0] < 50 * 1024**2
    # Just under it, the build is stopped as soon as its tensors hold more elements than the limit.
    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", str(HUGE_UNET_PARAMETERS - 1))
    with pytest.raises(MedsegError, match=f"{checkpoint}: network too large: 'unet' .* more than 1,813,061,635 "):
        build_from_checkpoint(checkpoint)


def test_huge_2d_network_and_image_size(tmp_path):
    wide = {"name": "light_unet", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                             "features": [16384, 32768]}}
    bundle = planar_bundle(tmp_path / "wide", wide)
    with pytest.raises(MedsegError, match="model.pt: network too large: 'light_unet'"):
        load_inference_model(bundle)
    tall = planar_bundle(tmp_path / "tall")
    ckpt = torch.load(tall / "models" / "model.pt", weights_only=True)
    ckpt["preprocessing"]["image_size"] = [100_000, 100_000]
    torch.save(ckpt, tall / "models" / "model.pt")
    with pytest.raises(MedsegError, match=r"image_size \[100000, 100000\] has 10,000,000,000 pixels"):
        load_inference_model(tall)


def test_deep_network_spec_is_stopped_while_it_is_built(tmp_path):
    deep = {"name": "segresnet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                            "blocks_down": [10**7, 1, 1, 1]}}
    with pytest.raises(MedsegError, match="deep.pt: network too large: 'segresnet' .* more than 10,000 tensors"):
        check_network_size(deep, tmp_path / "deep.pt")


def test_every_registered_network_is_sized_exactly_without_memory():
    """The meta-device count equals the real one for every network (SwinUNETR needs its second attempt)."""
    for name in list_networks():
        info = network_info(name)
        for dims in info.spatial_dims:
            kwargs = {"spatial_dims": dims, "in_channels": 1, "out_channels": 2, **(info.smoke_kwargs or {})}
            model = build_network(name, **kwargs)
            real = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
            assert check_network_size({"name": name, "kwargs": kwargs}) == real, (name, dims)


def test_sizing_draws_no_random_numbers():
    torch.manual_seed(0)
    check_network_size({"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                   "channels": [4, 8], "strides": [2]}})
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)


# ---------------------------------------------------------------- the settings and other sizes from files


def test_limits_defaults_and_settings(monkeypatch):
    memory = limits.available_memory_bytes()
    assert memory >= 256 * 1024**2
    for name in (limits.MAX_VOXELS_ENV, limits.MAX_VOLUME_BYTES_ENV, limits.MAX_IMAGE_PIXELS_ENV,
                 limits.MAX_PARAMETERS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert limits.max_voxels() == memory // 32 < 4000**3
    assert limits.max_volume_bytes() == memory // 8
    assert limits.max_image_pixels() == limits.PILLOW_DEFAULT_MAX_PIXELS == 89_478_485
    assert limits.max_parameters() == min(10**9, memory // 32) < HUGE_UNET_PARAMETERS
    monkeypatch.setenv(limits.MAX_VOXELS_ENV, "1e9")
    assert limits.max_voxels() == 10**9
    monkeypatch.setenv(limits.MAX_PARAMETERS_ENV, "2_000")
    assert limits.max_parameters() == 2000
    for bad in ("0", "-5", "lots", "1.5", "nan"):
        monkeypatch.setenv(limits.MAX_VOXELS_ENV, bad)
        with pytest.raises(MedsegError, match=f"MEDSEG_MAX_VOXELS='{bad}': must be a positive whole number"):
            limits.max_voxels()

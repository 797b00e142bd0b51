"""2D inference: masks at each image's own size (real JPEG of another size and aspect), overlays, multi-scale.

The network is a 1x1 convolution with hand-set weights: lesion where the red channel is
below one half. The expected mask is therefore known at the image's own resolution, which
checks the resize / letterbox round trip and the (H, W) orientation on non-square images.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medseg.checkpoint import save_checkpoint
from medseg.data.synth.isic import write_isic_dataset
from medseg.errors import MedsegError
from medseg.inference import InferenceOptions, run_inference
from medseg.inference.model import load_inference_model
from medseg.inference.planar import MULTISCALE, PlanarModel, scaled_size
from medseg.networks import list_networks, register_network

POINTWISE_2D = "infer_test_pointwise2d"
# A real photograph shipped with matplotlib: 512 wide, 600 high (portrait), unlike any training size.
REAL_JPEG = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

if POINTWISE_2D not in list_networks():

    @register_network(POINTWISE_2D, spatial_dims=(2,), paper="test only: a 1x1 convolution", smoke_kwargs={})
    def _pointwise2d(spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)


def _bundle(root: Path, resize: str = "stretch", size: tuple[int, int] = (64, 64)) -> Path:
    """A 2D output bundle whose network marks pixels with red < 0.5 as lesion (steeply, so ~binary)."""
    state = {"weight": torch.tensor([[[[-40.0]], [[0.0]], [[0.0]]]]), "bias": torch.tensor([20.0])}
    network = {"name": POINTWISE_2D, "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}}
    save_checkpoint(root / "models" / "model.pt", state, network=network, label_convention="isic",
                    channel_names=["R", "G", "B"], extra={"output_names": ["lesion"]},
                    preprocessing={"task": "binary", "spatial_dims": 2, "image_size": list(size), "resize": resize,
                                   "normalize": "none"})
    return root


def _expected(image: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(image).convert("RGB"))
    return rgb[..., 0] < 128


def _agreement(mask_png: Path, expected: np.ndarray) -> float:
    mask = np.asarray(Image.open(mask_png))
    return float((( mask > 0) == expected).mean())


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_real_jpeg_of_another_size_gets_a_mask_of_its_own_size(tmp_path, resize, infer_cli):
    bundle = _bundle(tmp_path / "bundle", resize=resize)
    out = tmp_path / "out"
    assert infer_cli(bundle, "--input", REAL_JPEG, "--output", out) == 0
    with Image.open(REAL_JPEG) as src:
        size = src.size
    assert size == (512, 600)
    mask, overlay = out / "grace_hopper.png", out / "grace_hopper_overlay.png"
    with Image.open(mask) as m, Image.open(overlay) as o:
        assert m.size == size and m.mode == "L"
        assert o.size == size and o.mode == "RGB"
        assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
    # Resampling to 64x64 and back loses detail at edges, but the mask must be the image's own.
    assert _agreement(mask, _expected(REAL_JPEG)) > 0.9
    transposed = _expected(REAL_JPEG)[:512, :512].T  # what a (W, H) mix-up would give on the top square
    assert (_agreement(mask, _expected(REAL_JPEG)) > float(((np.asarray(Image.open(mask))[:512, :512] > 0)
                                                             == transposed).mean()))


def test_every_mask_has_its_images_width_and_height(tmp_path, infer_cli):
    data = tmp_path / "isic"
    images = write_isic_dataset(data, cases=4, seed=3)  # sizes drawn from 600x450, 640x480, 512x512, 720x480
    out = tmp_path / "out"
    assert infer_cli(_bundle(tmp_path / "bundle", size=(96, 128)), "--input", data, "--output", out,
                     "--multiscale") == 0
    for image in images:
        with Image.open(image) as src, Image.open(out / f"{image.stem}.png") as mask:
            assert mask.size == src.size, image.name
        assert _agreement(out / f"{image.stem}.png", _expected(image)) > 0.95
    # ISIC masks in the dataset's ground-truth folder are not inputs.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for image in images for n in (f"{image.stem}.png", f"{image.stem}_overlay.png"))


def test_multiscale_sizes_and_average(tmp_path):
    assert scaled_size((256, 256), 0.75, 16) == (192, 192)
    assert scaled_size((256, 192), 1.25, 32) == (320, 256)
    assert scaled_size((40, 40), 0.75, 32) == (32, 32)
    model = load_inference_model(_bundle(tmp_path / "bundle", size=(64, 96)))
    assert isinstance(model, PlanarModel) and model.image_size == (64, 96)
    out_single, out_multi = tmp_path / "single", tmp_path / "multi"
    options = InferenceOptions(device="cpu", progress=False, save_prob=True)
    run_inference(model, [REAL_JPEG], out_single, options)
    report = run_inference(model, [REAL_JPEG], out_multi, InferenceOptions(device="cpu", progress=False,
                                                                          save_prob=True, multiscale=True))
    assert report.ok and len(MULTISCALE) == 3
    single = np.asarray(Image.open(out_single / "grace_hopper_prob.png"), dtype=float)
    multi = np.asarray(Image.open(out_multi / "grace_hopper_prob.png"), dtype=float)
    assert single.shape == multi.shape == (600, 512)
    # Averaging three resamplings changes the boundary probabilities, not the bulk.
    assert 0 < np.abs(single - multi).mean() < 10


def test_a_bad_image_fails_alone_and_leaves_nothing(tmp_path, infer_cli, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 30, np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(REAL_JPEG.read_bytes()[:2000])  # truncated JPEG
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    assert infer_cli(_bundle(tmp_path / "bundle"), "--input", folder, "--output", out) == 1
    printed = capsys.readouterr().out
    assert "broken.jpg: unreadable" in printed and "empty.png: unreadable" in printed
    assert "Traceback" not in printed
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "good_overlay.png"]
    assert np.asarray(Image.open(out / "good.png")).all()  # red 30 < 128: all lesion


def test_2d_and_3d_options_are_kept_apart(tmp_path, unet_bundle):
    planar = load_inference_model(_bundle(tmp_path / "bundle"))
    with pytest.raises(MedsegError, match="--dicom-seg"):
        run_inference(planar, [REAL_JPEG], tmp_path / "a", InferenceOptions(dicom_seg=True, progress=False))
    with pytest.raises(MedsegError, match="--roi"):
        load_inference_model(tmp_path / "bundle", roi_size=(32, 32, 32))
    volume = load_inference_model(unet_bundle)
    with pytest.raises(MedsegError, match="--multiscale"):
        run_inference(volume, [REAL_JPEG], tmp_path / "b", InferenceOptions(multiscale=True, progress=False))


def test_checkpoint_preprocessing_is_checked(tmp_path):
    root = _bundle(tmp_path / "bundle")
    ckpt = torch.load(root / "models" / "model.pt", weights_only=True)
    ckpt["preprocessing"]["resize"] = "crop"
    torch.save(ckpt, root / "models" / "model.pt")
    with pytest.raises(MedsegError, match="preprocessing.resize must be one of"):
        load_inference_model(root)

"""Sliding-window prediction: mirror TTA, probability and uncertainty maps, CPU stitching of large volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from infer_helpers import random_volume, save_volume

from medseg.errors import MedsegError
from medseg.inference.predictor import MIRROR_AXES, SlidingWindowPredictor, resolve_device
from medseg.networks import build_network

OBLIQUE = np.array([[-1.2, 0.3, 0.0, 10.0], [0.25, 1.1, 0.2, -4.0], [0.0, -0.3, 2.0, 7.0], [0, 0, 0, 1]])


def test_mirror_axes_are_the_8_flip_combinations():
    assert len(MIRROR_AXES) == 8 and len(set(MIRROR_AXES)) == 8 and () in MIRROR_AXES
    assert all(set(axes) <= {2, 3, 4} for axes in MIRROR_AXES)


def _tiny_unet(out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("attention_unet3d", spatial_dims=3, in_channels=1, out_channels=out_channels,
                         features=[4, 8, 16]).eval()


def test_tta_makes_the_prediction_mirror_equivariant():
    image = torch.randn(1, 16, 16, 16)
    mirrored = torch.flip(image, (1,))
    plain = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), activation="softmax", device="cpu")
    tta = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), activation="softmax", device="cpu", tta=True,
                                 track_variance=True)
    p, pm = plain.predict(image).mean, plain.predict(mirrored).mean
    result = tta.predict(image)
    tm = tta.predict(mirrored).mean
    assert result.passes == 8 and result.variance is not None
    assert (torch.flip(pm, (1,)) - p).abs().max() > 1e-4  # the random network alone is not symmetric
    torch.testing.assert_close(torch.flip(tm, (1,)), result.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.mean.sum(0), torch.ones(16, 16, 16), atol=1e-5, rtol=0)
    assert float(result.variance.min()) >= 0 and float(result.variance.max()) > 0


def test_large_volume_is_stitched_on_the_cpu_exactly():
    """160^3 with the CPU threshold at 128^3: input and output stay on the CPU; blending changes nothing pointwise."""
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
    image = torch.randn(1, 160, 160, 160)
    predictor = SlidingWindowPredictor(conv, (64, 64, 64), sw_batch_size=4, overlap=0.25, activation="softmax",
                                       device="cpu", cpu_threshold=128**3)
    result = predictor.predict(image)
    assert result.stitch_device == "cpu" and result.mean.shape == (2, 160, 160, 160)
    with torch.no_grad():
        expected = torch.softmax(conv(image[None]), dim=1)[0]
    torch.testing.assert_close(result.mean, expected, atol=1e-5, rtol=0)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert not SlidingWindowPredictor(torch.nn.Conv3d(1, 1, 1), (8, 8, 8), device="cpu", amp=True).amp  # CUDA only
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MedsegError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MedsegError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("kind, top", [("entropy", 1.0), ("variance", 0.25)])
def test_tta_save_prob_writes_maps_in_the_input_geometry(kind, top, unet_bundle, infer_cli, tmp_path):
    source = save_volume(tmp_path / "in" / "vol.nii.gz", random_volume(7, (20, 18, 12)), OBLIQUE)
    out = tmp_path / "out"
    assert infer_cli(unet_bundle, "--input", source, "--output", out, "--tta", "--save-prob",
                     "--uncertainty", kind, "--roi", "16", "16", "16", "--overlap", "0.5", "--sw-batch", "3") == 0
    ref = nib.load(str(source))
    labels = np.asanyarray(nib.load(str(out / "vol.nii.gz")).dataobj)
    prob_img, unc_img = nib.load(str(out / "vol_prob.nii.gz")), nib.load(str(out / "vol_uncertainty.nii.gz"))
    assert prob_img.shape == (20, 18, 12, 2) and unc_img.shape == (20, 18, 12)
    for img in (prob_img, unc_img):
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    prob, unc = prob_img.get_fdata(), unc_img.get_fdata()
    assert prob.min() >= 0 and prob.max() <= 1
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)
    assert unc.min() >= 0 and unc.max() <= top + 1e-6 and unc.max() > 0
    np.testing.assert_array_equal(labels, np.argmax(prob, axis=-1))  # label values 0/1 are the class indices


def test_variance_needs_tta(unet_bundle, infer_cli, tmp_path, capsys):
    source = save_volume(tmp_path / "in" / "vol.nii.gz", random_volume(8))
    assert infer_cli(unet_bundle, "--input", source, "--output", tmp_path / "o", "--save-prob",
                     "--uncertainty", "variance") == 2
    assert "needs --tta" in capsys.readouterr().err


@pytest.mark.gpu
def test_512_cube_within_8_gib_of_gpu_memory():
    """512^3, one channel, the default attention_unet3d width (16..256), roi 128^3, sw batch 4, AMP.

    Windows run on the GPU; the volume and the stitched output stay on the CPU.
    """
    torch.manual_seed(0)
    network = build_network("attention_unet3d", spatial_dims=3, in_channels=1, out_channels=3).eval()
    predictor = SlidingWindowPredictor(network, (128, 128, 128), sw_batch_size=4, overlap=0.25,
                                       activation="sigmoid", device="cuda")
    assert predictor.amp
    torch.cuda.reset_peak_memory_stats()
    result = predictor.predict(torch.randn(1, 512, 512, 512))
    peak = torch.cuda.max_memory_allocated()
    assert result.stitch_device == "cpu" and result.mean.shape == (3, 512, 512, 512)
    assert peak < 8 * 1024**3, f"peak GPU memory {peak / 1024**3:.2f} GiB"


@pytest.mark.slow
def test_512_cube_on_the_cpu(tmp_path: Path):
    """The same 512^3 volume on the CPU (a pointwise network: this checks stitching and memory, not speed)."""
    conv = torch.nn.Conv3d(1, 2, 1)
    predictor = SlidingWindowPredictor(conv, (128, 128, 128), sw_batch_size=2, overlap=0.25, activation="softmax",
                                       device="cpu")
    result = predictor.predict(torch.randn(1, 512, 512, 512))
    assert result.stitch_device == "cpu" and result.mean.shape == (2, 512, 512, 512)


def test_default_mirror_axes_average_their_mirrorings():
    """``mirror_axes=(1,)``: 2 passes, the plain prediction and the Y-mirrored one mirrored back."""
    image = torch.randn(1, 16, 16, 16)
    plain = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), activation="softmax", device="cpu")
    mirrored = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), activation="softmax", device="cpu",
                                      mirror_axes=(1,))
    result = mirrored.predict(image)
    expected = (plain.predict(image).mean + torch.flip(plain.predict(torch.flip(image, (2,))).mean, (2,))) / 2
    assert result.passes == 2 and mirrored.passes == ((), (3,))
    torch.testing.assert_close(result.mean, expected, atol=1e-5, rtol=0)
    assert SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), device="cpu", mirror_axes=(1,), tta=True).passes \
        == MIRROR_AXES  # --tta still means all 8
    with pytest.raises(MedsegError, match="mirror_axes must be distinct spatial axes"):
        SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), device="cpu", mirror_axes=(3,))


def test_constant_blending_differs_from_gaussian_where_windows_overlap():
    image = torch.randn(1, 24, 16, 16)
    gaussian = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), overlap=0.5, activation="softmax", device="cpu")
    constant = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), overlap=0.5, activation="softmax", device="cpu",
                                      mode="constant")
    assert constant.inferer.mode == "constant" and gaussian.inferer.mode == "gaussian"
    assert (constant.predict(image).mean - gaussian.predict(image).mean).abs().max() > 1e-4
    with pytest.raises(MedsegError, match="mode must be 'gaussian' or 'constant'"):
        SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), device="cpu", mode="linear")


def test_the_checkpoints_blending_and_mirror_axes_reach_the_3d_task(tmp_path):
    """The model spec's inference ``mode`` and ``tta_axes`` are what ``medseg infer`` runs with."""
    from medseg.checkpoint import save_checkpoint
    from medseg.inference import InferenceOptions, load_inference_model
    from medseg.inference.volume_task import VolumeRun

    network = {"name": "attention_unet3d", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                      "features": [4, 8, 16]}}
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "channels": ["t1"], "label_values": [0, 1]}
    inference = {"roi_size": [16, 16, 16], "sw_batch_size": 2, "sw_overlap": 0.25, "mode": "constant",
                 "tta_axes": [0, 2]}
    path = save_checkpoint(tmp_path / "model.pt", _tiny_unet(), network=network, channel_names=["t1"],
                           preprocessing=prep, inference=inference)
    model = load_inference_model(None, checkpoint=path)
    assert (model.blend_mode, model.tta_axes) == ("constant", (0, 2))
    task = VolumeRun(model, [], InferenceOptions(device="cpu", progress=False))
    assert task.predictor.inferer.mode == "constant" and task.predictor.passes == ((), (2,), (4,), (2, 4))
    assert len(VolumeRun(model, [], InferenceOptions(device="cpu", progress=False, tta=True)).predictor.passes) == 8

    with pytest.raises(MedsegError, match=r"tta_axes' must be distinct spatial axes"):
        save_checkpoint(tmp_path / "bad.pt", _tiny_unet(), network=network, channel_names=["t1"],
                        preprocessing=prep, inference=dict(inference, tta_axes=[1, 1]))
    assert not (tmp_path / "bad.pt").exists()


def test_deferred_placement_checks_arguments_at_once_and_moves_the_network_on_place():
    """``defer_placement``: a bad argument still fails when the predictor is made; the network moves on ``place``."""
    with pytest.raises(MedsegError, match="roi_size needs 3 sizes"):
        SlidingWindowPredictor(_tiny_unet(), (16, 16), device="cpu", defer_placement=True)
    network = _tiny_unet()
    predictor = SlidingWindowPredictor(network, (16, 16, 16), device="cpu", defer_placement=True)
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    assert predictor.channels_last and all(c.weight.is_contiguous() for c in convs)  # not yet converted
    predictor.place()
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)
    predictor.warm_up(in_channels=1)  # a no-op on the CPU
    image = torch.randn(1, 16, 16, 16)
    eager = SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), device="cpu")
    torch.testing.assert_close(predictor.predict(image).mean, eager.predict(image).mean)


def test_a_placement_that_fails_in_the_background_is_raised_where_the_predictor_is_used():
    """The CUDA route places the network in a thread (:func:`~medseg.inference.volume_task._place`); its error is kept."""
    from concurrent.futures import Future

    from medseg.inference.volume_task import _place

    class Unplaceable(torch.nn.Conv3d):
        def _apply(self, fn, recurse=True):
            raise RuntimeError("CUDA error: out of memory (simulated by a module that cannot move)")

    done: Future = Future()
    predictor = SlidingWindowPredictor(Unplaceable(1, 2, 1), (8, 8, 8), device="cpu", defer_placement=True)
    _place(predictor, 1, done)
    with pytest.raises(RuntimeError, match="cannot move"):
        done.result()
    ok: Future = Future()
    _place(SlidingWindowPredictor(_tiny_unet(), (16, 16, 16), device="cpu", defer_placement=True), 1, ok)
    assert ok.result().network is not None


@pytest.mark.gpu
def test_on_cuda_the_network_is_placed_and_warmed_up_while_cases_are_read(tmp_path):
    """VolumeRun on CUDA: the network reaches the GPU in the background; ``predictor`` waits for it."""
    from medseg.checkpoint import save_checkpoint
    from medseg.inference import InferenceOptions, load_inference_model
    from medseg.inference.volume_task import VolumeRun

    network = {"name": "attention_unet3d", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                      "features": [4, 8, 16]}}
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "channels": ["t1"], "label_values": [0, 1]}
    path = save_checkpoint(tmp_path / "model.pt", _tiny_unet(), network=network, channel_names=["t1"],
                           preprocessing=prep, inference={"roi_size": [16, 16, 16]})
    run = VolumeRun(load_inference_model(None, checkpoint=path), [], InferenceOptions(device="cuda", progress=False))
    assert run.device.type == "cuda" and run.device_stages
    assert next(run.predictor.network.parameters()).is_cuda

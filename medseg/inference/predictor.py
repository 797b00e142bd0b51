"""Sliding-window prediction with Gaussian blending, mirror TTA and memory-bounded stitching.

MONAI's :class:`~monai.inferers.SlidingWindowInferer` does the windowing and the Gaussian
blending of overlapping windows. Windows run on ``device`` (with AMP on CUDA); the whole
volume and the stitched output stay on the CPU when the volume has more than
``cpu_threshold`` voxels (MONAI's ``cpu_thresh``), so GPU memory holds only a batch of
windows and their importance map, whatever the volume size: a 512^3 volume needs the
same GPU memory as a 128^3 one.

On the CPU the network runs in the channels-last (NDHWC) memory layout, which oneDNN's 3D
convolutions process faster (1.44x for SegResNet's forward pass on 2 cores, docs/performance.md); the
results differ from the NCDHW layout only by float rounding.

The windows always cover the whole volume. nnU-Net's crop to the non-zero box (Isensee et
al. 2021) was measured and not adopted: networks that normalise over the window (GroupNorm
in SegResNet, InstanceNorm in attention_unet3d) see other statistics on the smaller window,
and on BraTS-sized volumes the masks moved by far more than a Dice of 0.005
(docs/performance.md; the lever is ``benchmarks/nonzero_box.py``).

Test-time augmentation mirrors the input along every subset of the three spatial axes
(8 passes, identity included), un-mirrors each output, and averages the probabilities;
the per-voxel variance across the passes is kept with Welford's running update.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from medseg.errors import InvalidValueError
from medseg.utils.device import autocast, resolve_device

__all__ = ["LARGE_VOLUME_VOXELS", "MIRROR_AXES", "Prediction", "SlidingWindowPredictor", "resolve_device"]

logger = logging.getLogger("medseg.infer")

#: Volumes with more voxels than this (256^3) are kept, and stitched, on the CPU.
LARGE_VOLUME_VOXELS = 256**3
#: Every subset of the spatial axes of a ``(B, C, X, Y, Z)`` tensor: the 8 mirror TTA passes.
MIRROR_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n))


@dataclass
class Prediction:
    """The output of :meth:`SlidingWindowPredictor.predict`.

    Attributes:
        mean: probabilities ``(C, X, Y, Z)`` averaged over the TTA passes, float32 on the CPU
            (on the stitch device when :meth:`SlidingWindowPredictor.predict` keeps it there).
        variance: per-channel variance ``(C, X, Y, Z)`` across the passes, or ``None``
            (no TTA, or not requested).
        passes: number of passes averaged (1 or 8).
        stitch_device: where the windows were stitched (``"cpu"`` or ``"cuda:0"``).
    """

    mean: torch.Tensor
    variance: torch.Tensor | None
    passes: int
    stitch_device: str


class SlidingWindowPredictor:
    """Run a network over whole volumes with overlapping windows.

    Args:
        network: the network, in eval mode; it is moved to ``device`` and converted to the
            chosen memory layout **in place** (``Module.to``), so it should not be shared with
            code that expects its original device or layout.
        roi_size: window size ``(X, Y, Z)``.
        sw_batch_size: windows per forward pass. Defaults to 4.
        overlap: overlap of neighbouring windows in ``[0, 1)``. Defaults to 0.5.
        activation: ``"sigmoid"`` (regions) or ``"softmax"`` (classes, over channels).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; where windows run.
        tta: average over the 8 mirrorings of the three spatial axes.
        mirror_axes: without ``tta``, the spatial axes (0, 1, 2 for X, Y, Z) whose mirrorings
            are averaged (every subset of them: 2 passes for one axis, 4 for two); the
            checkpoint's default (``InferenceSettings.tta_axes``). Defaults to none.
        mode: how overlapping windows are blended, ``"gaussian"`` or ``"constant"`` (MONAI's
            ``SlidingWindowInferer`` modes; the checkpoint's ``InferenceSettings.mode``).
        track_variance: with ``tta``, also return the variance across passes.
        amp: autocast on CUDA, in the type :func:`medseg.utils.device.autocast_dtype` picks (never on the CPU).
        cpu_threshold: volumes with more voxels keep their input and output on the CPU.
        channels_last: run the network in the channels-last 3D memory layout. Defaults to
            None: on the CPU only (measured there; not measured on GPUs).
        defer_placement: check the arguments but leave the network where it is until
            :meth:`place` is called (which may run in another thread: on CUDA, creating the
            context and copying the weights then overlap with reading the first case).
    """

    def __init__(
        self,
        network: nn.Module,
        roi_size: Sequence[int],
        sw_batch_size: int = 4,
        overlap: float = 0.5,
        activation: str = "sigmoid",
        device: str | torch.device = "auto",
        tta: bool = False,
        track_variance: bool = False,
        amp: bool = True,
        cpu_threshold: int = LARGE_VOLUME_VOXELS,
        channels_last: bool | None = None,
        mirror_axes: Sequence[int] = (),
        mode: str = "gaussian",
        defer_placement: bool = False,
    ) -> None:
        if activation not in ("sigmoid", "softmax"):
            raise InvalidValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        if mode not in ("gaussian", "constant"):
            raise InvalidValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
        if any(a not in (0, 1, 2) for a in mirror_axes) or len(set(mirror_axes)) != len(tuple(mirror_axes)):
            raise InvalidValueError(f"mirror_axes must be distinct spatial axes among 0, 1, 2, got {list(mirror_axes)}")
        if len(tuple(roi_size)) != 3:
            raise InvalidValueError(f"roi_size needs 3 sizes, got {roi_size}")
        self.device = resolve_device(device)
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        self.network = network.eval()
        if not defer_placement:
            self.place()
        self.activation = activation
        dims = (2, 3, 4) if tta else tuple(2 + a for a in sorted(mirror_axes))
        self.passes: tuple[tuple[int, ...], ...] = tuple(
            axes for n in range(len(dims) + 1) for axes in itertools.combinations(dims, n))
        self.tta = len(self.passes) > 1
        self.mode = mode
        self.track_variance = track_variance and self.tta
        self.amp = amp and self.device.type == "cuda"
        self.cpu_threshold = int(cpu_threshold)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.inferer = self._inferer(self.roi_size)

    def place(self) -> None:
        """Move the network to the device, in the memory layout of ``channels_last`` (done by ``__init__`` unless deferred)."""
        layout = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.network = self.network.to(self.device, memory_format=layout)

    @torch.inference_mode()
    def warm_up(self, in_channels: int) -> None:
        """Run one batch of empty windows through the network on CUDA and wait for it (no-op on the CPU).

        The first forward pass on a GPU loads the convolution and normalisation kernels and
        sets up cuDNN and cuBLAS, about a second; done while the first case is being read, it
        is off the case's path.
        """
        if self.device.type != "cuda":
            return
        self._forward(torch.zeros(self.sw_batch_size, in_channels, *self.roi_size, device=self.device))
        torch.cuda.synchronize(self.device)

    def _inferer(self, roi_size: tuple[int, ...]) -> SlidingWindowInferer:
        return SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=self.sw_batch_size, overlap=self.overlap,
            mode=self.mode, sw_device=self.device, device=None, cpu_thresh=self.cpu_threshold,
        )

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Network output for a batch of windows ``(B, C_in, *roi)`` -> ``(B, C_out, *roi)`` float32."""
        if self.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        with autocast(self.device, self.amp):
            out = self.network(windows)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head comes first
            out = out[0]
        return out.float()

    def _probabilities(self, image: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        flipped = torch.flip(image, axes) if axes else image
        logits = self.inferer(flipped, self._forward)
        if axes:
            logits = torch.flip(logits, axes)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, keep_on_device: bool = False) -> Prediction:
        """Predict one volume.

        Args:
            image: preprocessed image ``(C_in, X, Y, Z)`` (a MetaTensor's metadata is dropped);
                it may be on ``device`` already.
            keep_on_device: leave the probabilities (and variance) where they were stitched:
                on ``device``, unless the volume has more than ``cpu_threshold`` voxels (then the
                CPU). Defaults to False: copied to the CPU.

        Returns:
            Probabilities ``(C_out, X, Y, Z)`` on the CPU (or the stitch device, with
            ``keep_on_device``), and the TTA variance if requested.
        """
        if image.ndim != 4:
            raise InvalidValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
        data = image.as_tensor() if hasattr(image, "as_tensor") else image
        data = data.detach().float()[None]
        large = data.shape[2:].numel() > self.cpu_threshold
        data = data.to("cpu" if large else self.device)
        stitch = "cpu" if large else str(self.device)
        mean = m2 = None
        passes = self.passes
        for n, axes in enumerate(passes, start=1):
            probs = self._probabilities(data, axes)
            if mean is None:
                mean = probs
                m2 = torch.zeros_like(probs) if self.track_variance else None
                continue
            delta = probs - mean
            mean += delta / n
            if m2 is not None:
                m2 += delta * (probs - mean)
            del probs, delta
        mean = mean[0]
        variance = (m2 / len(passes))[0] if m2 is not None else None
        if not keep_on_device:
            mean = mean.cpu()
            variance = variance.cpu() if variance is not None else None
        logger.debug("predicted %s with %d pass(es), stitched on %s", tuple(data.shape), len(passes), stitch)
        return Prediction(mean=mean, variance=variance, passes=len(passes), stitch_device=stitch)

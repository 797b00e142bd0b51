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

``crop_foreground=True`` runs the windows on the box around the non-zero voxels only and
pastes the probabilities back into a background-filled volume (nnU-Net's crop to non-zero,
Isensee et al. 2021). It is off by default: networks that normalise over the window
(GroupNorm in SegResNet, InstanceNorm in attention_unet3d) see other statistics on the
smaller window, and on BraTS-sized volumes the masks moved by far more than a Dice of 0.005
(docs/performance.md). The box sides are multiples of the largest power of two (at most 32)
that divides every side of the configured window, which the network accepts.

Test-time augmentation mirrors the input along every subset of the three spatial axes
(8 passes, identity included), un-mirrors each output, and averages the probabilities;
the per-voxel variance across the passes is kept with Welford's running update.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from medseg.errors import InvalidValueError, MedsegError

__all__ = ["CROP_MARGIN", "CROP_MULTIPLE", "LARGE_VOLUME_VOXELS", "MIRROR_AXES", "Prediction",
           "SlidingWindowPredictor", "foreground_box", "resolve_device", "window_multiple"]

logger = logging.getLogger("medseg.infer")

#: Volumes with more voxels than this (256^3) are kept, and stitched, on the CPU.
LARGE_VOLUME_VOXELS = 256**3
#: Voxels of zero context kept around the non-zero bounding box on every side.
CROP_MARGIN = 8
#: The largest multiple box sides are rounded to (the largest down-sampling factor of medseg's networks).
CROP_MULTIPLE = 32
#: Crop only when the box holds at most this fraction of the voxels; otherwise keep the whole volume.
CROP_MAX_FRACTION = 0.9
#: Every subset of the spatial axes of a ``(B, C, X, Y, Z)`` tensor: the 8 mirror TTA passes.
MIRROR_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; ``"cuda"`` without a GPU is an error.

    Raises:
        MedsegError: an unknown name, or CUDA requested but not available.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedsegError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise MedsegError(f"--device must be auto, cpu or cuda, got {name!r}")


def window_multiple(roi_size: Sequence[int], largest: int = CROP_MULTIPLE) -> int:
    """The largest power of two, at most ``largest``, that divides every side of ``roi_size``."""
    multiple = 1
    while multiple < largest and all(int(r) % (multiple * 2) == 0 for r in roi_size):
        multiple *= 2
    return multiple


def foreground_box(image: torch.Tensor, margin: int = CROP_MARGIN, multiple: int = CROP_MULTIPLE,
                   max_fraction: float = CROP_MAX_FRACTION) -> tuple[slice, ...] | None:
    """The box around the voxels that are non-zero in any channel, grown to whole multiples.

    Each side is the non-zero extent plus ``margin`` on both sides, rounded up to a multiple
    of ``multiple`` and kept inside the volume; an axis whose box would reach the volume's
    size keeps the whole axis.

    Args:
        image: ``(C, X, Y, Z)`` or ``(B, C, X, Y, Z)``.
        margin: zero context kept on each side, in voxels.
        multiple: box sides are multiples of this (unless they span the whole axis).
        max_fraction: return ``None`` when the box holds more than this fraction of the voxels.

    Returns:
        One slice per spatial axis, or ``None`` when cropping would not pay (nothing is zero,
        or everything is).
    """
    if margin < 0 or multiple < 1:
        raise InvalidValueError(f"margin must be >= 0 and multiple >= 1, got {margin} and {multiple}")
    spatial = image.shape[-3:]
    nonzero = image.reshape(-1, *spatial).ne(0).any(dim=0)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(nonzero.any(dim=others)).flatten()
        if hits.numel() == 0:
            return None
        lo, hi, extent = int(hits[0]) - margin, int(hits[-1]) + 1 + margin, int(spatial[axis])
        size = -(-(hi - lo) // multiple) * multiple
        if size >= extent:
            box.append(slice(0, extent))
            continue
        start = min(max(0, lo - (size - (hi - lo)) // 2), extent - size)
        box.append(slice(start, start + size))
    kept = 1
    for piece in box:
        kept *= piece.stop - piece.start
    return tuple(box) if kept <= max_fraction * spatial.numel() else None


@dataclass
class Prediction:
    """The output of :meth:`SlidingWindowPredictor.predict`.

    Attributes:
        mean: probabilities ``(C, X, Y, Z)`` averaged over the TTA passes, float32 on the CPU.
        variance: per-channel variance ``(C, X, Y, Z)`` across the passes, or ``None``
            (no TTA, or not requested).
        passes: number of passes averaged (1 or 8).
        stitch_device: where the windows were stitched (``"cpu"`` or ``"cuda:0"``).
        box: the non-zero box the network ran on (one slice per spatial axis), or ``None``
            for the whole volume.
    """

    mean: torch.Tensor
    variance: torch.Tensor | None
    passes: int
    stitch_device: str
    box: tuple[slice, ...] | None = None


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
        track_variance: with ``tta``, also return the variance across passes.
        amp: use float16 autocast on CUDA (never on the CPU).
        cpu_threshold: volumes with more voxels keep their input and output on the CPU.
        crop_foreground: run the network on the box around the non-zero voxels only
            (:func:`foreground_box`) and fill the rest with background: probability 0 for
            sigmoid regions, class 0 for softmax. Defaults to False (see the module notes).
        channels_last: run the network in the channels-last 3D memory layout. Defaults to
            None: on the CPU only (measured there; not measured on GPUs).
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
        crop_foreground: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        if activation not in ("sigmoid", "softmax"):
            raise InvalidValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        if len(tuple(roi_size)) != 3:
            raise InvalidValueError(f"roi_size needs 3 sizes, got {roi_size}")
        self.device = resolve_device(device)
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        layout = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.network = network.to(self.device, memory_format=layout).eval()
        self.activation = activation
        self.tta = tta
        self.track_variance = track_variance and tta
        self.amp = amp and self.device.type == "cuda"
        self.cpu_threshold = int(cpu_threshold)
        self.crop_foreground = bool(crop_foreground)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.inferer = self._inferer(self.roi_size)

    def _inferer(self, roi_size: tuple[int, ...]) -> SlidingWindowInferer:
        return SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=self.sw_batch_size, overlap=self.overlap,
            mode="gaussian", sw_device=self.device, device=None, cpu_thresh=self.cpu_threshold,
        )

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Network output for a batch of windows ``(B, C_in, *roi)`` -> ``(B, C_out, *roi)`` float32."""
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        if self.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            out = self.network(windows)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head comes first
            out = out[0]
        return out.float()

    def _probabilities(self, image: torch.Tensor, axes: tuple[int, ...],
                       inferer: SlidingWindowInferer) -> torch.Tensor:
        flipped = torch.flip(image, axes) if axes else image
        logits = inferer(flipped, self._forward)
        if axes:
            logits = torch.flip(logits, axes)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)

    @torch.inference_mode()
    def predict(self, image: torch.Tensor) -> Prediction:
        """Predict one volume.

        Args:
            image: preprocessed image ``(C_in, X, Y, Z)`` (a MetaTensor's metadata is dropped).

        Returns:
            Probabilities ``(C_out, X, Y, Z)`` on the CPU, and the TTA variance if requested.
        """
        if image.ndim != 4:
            raise InvalidValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
        data = image.as_tensor() if hasattr(image, "as_tensor") else image
        data = data.detach().float()[None]
        box = foreground_box(data, multiple=window_multiple(self.roi_size)) if self.crop_foreground else None
        inferer = self.inferer
        full_shape = data.shape[2:]
        if box is not None:
            data = data[(slice(None), slice(None), *box)]
            # Along a cropped axis the window shrinks to the box (fewer voxels through the
            # network); along a whole axis it stays, and MONAI pads as before.
            roi = tuple(r if piece.stop - piece.start == n else min(r, piece.stop - piece.start)
                        for r, piece, n in zip(self.roi_size, box, full_shape))
            inferer = self._inferer(roi) if roi != self.roi_size else self.inferer
        large = data.shape[2:].numel() > self.cpu_threshold
        data = data.to("cpu" if large else self.device)
        stitch = "cpu" if large else str(self.device)
        mean = m2 = None
        passes = MIRROR_AXES if self.tta else ((),)
        for n, axes in enumerate(passes, start=1):
            probs = self._probabilities(data, axes, inferer)
            if mean is None:
                mean = probs
                m2 = torch.zeros_like(probs) if self.track_variance else None
                continue
            delta = probs - mean
            mean += delta / n
            if m2 is not None:
                m2 += delta * (probs - mean)
            del probs, delta
        mean = mean[0].cpu()
        variance = (m2 / len(passes))[0].cpu() if m2 is not None else None
        if box is not None:
            mean, variance = self._paste(mean, box, full_shape), (
                None if variance is None else self._paste(variance, box, full_shape, fill_background=False))
        logger.debug("predicted %s with %d pass(es), stitched on %s, box %s", tuple(data.shape), len(passes), stitch,
                     box)
        return Prediction(mean=mean, variance=variance, passes=len(passes), stitch_device=stitch, box=box)

    def _paste(self, values: torch.Tensor, box: tuple[slice, ...], shape: torch.Size,
               fill_background: bool = True) -> torch.Tensor:
        """``values`` ``(C, *box)`` in a ``(C, *shape)`` volume; outside: background (or 0)."""
        full = torch.zeros((values.shape[0], *shape), dtype=values.dtype)
        if fill_background and self.activation == "softmax":
            full[0] = 1.0  # class 0, the background, with certainty
        full[(slice(None), *box)] = values
        return full

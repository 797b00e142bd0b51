"""nnU-Net's crop to the non-zero box (Isensee et al. 2021), measured for medseg and not adopted.

:class:`NonzeroBoxPredictor` runs the sliding window on the box around the voxels that are
non-zero in any channel only, and pastes the probabilities back into a background-filled
volume. ``cpu_levers.py`` times it against the whole volume. On one BraTS-sized case the
window ran 1.30x faster, but the masks moved by far more than a Dice of 0.005: networks that
normalise over the window (GroupNorm in SegResNet, InstanceNorm in attention_unet3d) see
other statistics on the smaller window (docs/performance.md). So the library predicts on the
whole volume, and the lever lives here, next to the benchmark that measured it.

The box sides are multiples of the largest power of two (at most 32) that divides every
side of the configured window, which the network accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from medseg.errors import InvalidValueError
from medseg.inference.predictor import Prediction, SlidingWindowPredictor

__all__ = ["CROP_MARGIN", "CROP_MAX_FRACTION", "CROP_MULTIPLE", "BoxPrediction", "NonzeroBoxPredictor",
           "foreground_box", "window_multiple"]

#: Voxels of zero context kept around the non-zero bounding box on every side.
CROP_MARGIN = 8
#: The largest multiple box sides are rounded to (the largest down-sampling factor of medseg's networks).
CROP_MULTIPLE = 32
#: Crop only when the box holds at most this fraction of the voxels; otherwise keep the whole volume.
CROP_MAX_FRACTION = 0.9


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


@dataclasses.dataclass
class BoxPrediction(Prediction):
    """A :class:`~medseg.inference.predictor.Prediction` and the box the network ran on.

    Attributes:
        box: one slice per spatial axis, or ``None`` for the whole volume.
    """

    box: tuple[slice, ...] | None = None


class NonzeroBoxPredictor(SlidingWindowPredictor):
    """:class:`~medseg.inference.predictor.SlidingWindowPredictor` on the non-zero box only.

    Outside the box the output is background: probability 0 for sigmoid regions, class 0 for
    softmax; the variance there is 0. Along a cropped axis the window shrinks to the box (fewer
    voxels through the network); along a whole axis it stays, and MONAI pads as before.
    """

    @torch.inference_mode()
    def predict(self, image: torch.Tensor) -> BoxPrediction:
        """Predict one volume ``(C_in, X, Y, Z)`` on its non-zero box (the whole volume if it does not pay)."""
        if image.ndim != 4:
            raise InvalidValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
        data = image.as_tensor() if hasattr(image, "as_tensor") else image
        data = data.detach().float()
        box = foreground_box(data[None], multiple=window_multiple(self.roi_size))
        if box is None:
            return BoxPrediction(**vars(super().predict(data)), box=None)
        full_shape = data.shape[1:]
        roi = tuple(r if piece.stop - piece.start == n else min(r, piece.stop - piece.start)
                    for r, piece, n in zip(self.roi_size, box, full_shape))
        whole = self.inferer
        self.inferer = self._inferer(roi) if roi != self.roi_size else whole
        try:
            inside = super().predict(data[(slice(None), *box)])
        finally:
            self.inferer = whole
        variance = None if inside.variance is None else self._paste(inside.variance, box, full_shape, False)
        return BoxPrediction(mean=self._paste(inside.mean, box, full_shape), variance=variance,
                             passes=inside.passes, stitch_device=inside.stitch_device, box=box)

    def _paste(self, values: torch.Tensor, box: tuple[slice, ...], shape: torch.Size,
               fill_background: bool = True) -> torch.Tensor:
        """``values`` ``(C, *box)`` in a ``(C, *shape)`` volume; outside: background (or 0)."""
        full = torch.zeros((values.shape[0], *shape), dtype=values.dtype)
        if fill_background and self.activation == "softmax":
            full[0] = 1.0  # class 0, the background, with certainty
        full[(slice(None), *box)] = values
        return full

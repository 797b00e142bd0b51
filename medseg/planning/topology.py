"""The planned network: DynUNet's per-axis kernels and strides, and the patch and batch that fit a GPU.

The rules are nnU-Net's (Isensee et al., Nature Methods 2021; ``get_pool_and_conv_props`` and
``ExperimentPlanner.get_plans_for_configuration`` in nnU-Net v2), written for MONAI's ``DynUNet``:

* **Pooling per axis.** At each level, an axis is pooled (stride 2) only while its current
  spacing is less than twice the finest current spacing and its feature map stays at least
  :data:`MIN_FEATURE_MAP` voxels wide. A 0.9 x 0.9 x 4 mm patch is pooled in-plane only until
  the in-plane spacing has caught up with the 4 mm axis; from then on all three axes are.
* **Kernels per axis.** An axis gets a 3-wide kernel once its current spacing is within 2x of
  the finest; before that it gets 1 (a 2D convolution on a very coarse axis).
* **Filters.** 32 at full resolution, doubled per level, at most 320.
* **Levels.** At most 6; at least 3 (MONAI's ``DynUNet`` needs 3): a patch too small to pool
  twice gets levels with stride 1.
* **Patch size.** Start from a patch of :data:`REFERENCE_PATCH_VOXELS` voxels shaped like the
  data's physical extent (finer axes longer), clipped to the median shape; while the estimated
  memory of a training step with batch 2 exceeds the budget, shorten the axis that is largest
  relative to the median shape. Each axis is a multiple of ``2 ** pools on that axis``.
* **Batch size.** As many as fit the budget, at least 2, and no more than a batch covering 5 %
  of the dataset's voxels.

Memory is estimated by running the network on torch's ``meta`` device (shapes, no data): the
elements of every layer's output are what training keeps for the backward pass.
:func:`estimate_memory_bytes` counts them at 2 bytes each with mixed precision (4 without), plus
16 bytes per parameter (weights, gradients and Adam's two moments) and a fixed
:data:`CUDA_OVERHEAD_BYTES` for the CUDA context and cuDNN workspace. On a machine with a GPU,
:func:`measure_memory_bytes` replaces the estimate by one measured forward and backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medseg.errors import InvalidValueError
from medseg.utils.device import autocast

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "MIN_FEATURE_MAP",
    "REFERENCE_PATCH_VOXELS",
    "Topology",
    "activation_elements",
    "build_planned_network",
    "estimate_memory_bytes",
    "fit_patch_and_batch",
    "measure_memory_bytes",
    "plan_topology",
]

MIN_FEATURE_MAP = 4
MAX_LEVELS = 6  # full resolution + 5 poolings, as nnU-Net's 3d_fullres at 128^3
MIN_LEVELS = 3  # the fewest MONAI's DynUNet builds
BASE_FILTERS = 32
MAX_FILTERS = 320
REFERENCE_PATCH_VOXELS = 256**3 // 8  # a 128^3 patch at isotropic spacing, nnU-Net's default 3D size
CUDA_OVERHEAD_BYTES = 768 * 2**20
MAX_DATASET_FRACTION = 0.05
MIN_BATCH = 2


@dataclass(frozen=True)
class Topology:
    """A DynUNet's shape for one patch size.

    Attributes:
        kernel_size: per level, the kernel size along each axis.
        strides: per level, the stride along each axis (the first level's is all 1).
        filters: channels per level.
        divisor: per axis, what the patch size must be a multiple of (2 ** poolings).
    """

    kernel_size: list[list[int]]
    strides: list[list[int]]
    filters: list[int]
    divisor: list[int]

    def network_kwargs(self, in_channels: int, out_channels: int) -> dict:
        """The ``dynunet`` registry arguments of this topology."""
        return {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "upsample_kernel_size": self.strides[1:], "filters": self.filters,
                "norm_name": "instance", "res_block": False}


def plan_topology(spacing: Sequence[float], patch_size: Sequence[int], min_feature_map: int = MIN_FEATURE_MAP,
                  max_levels: int = MAX_LEVELS) -> Topology:
    """Kernels and strides of a DynUNet for a patch at a spacing (the rules in the module docstring).

    Args:
        spacing: the target spacing in mm, one per axis.
        patch_size: the patch size in voxels, one per axis.
        min_feature_map: no axis is pooled below this many voxels.
        max_levels: at most this many levels (resolutions).

    Returns:
        The topology; its ``divisor`` says what each patch axis must be a multiple of.
    """
    if len(spacing) != len(patch_size) or any(s <= 0 for s in spacing) or any(p < 1 for p in patch_size):
        raise InvalidValueError(f"spacing {list(spacing)} and patch_size {list(patch_size)} must be positive, "
                                "one per axis")
    dims = len(spacing)
    current = [float(s) for s in spacing]
    size = [float(p) for p in patch_size]
    kernel = [1] * dims
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dims]
    pools = [0] * dims
    while len(strides) < max_levels:
        finest = min(current)
        for axis in range(dims):
            if current[axis] / finest < 2:
                kernel[axis] = 3
        kernels.append(list(kernel))
        axes = [a for a in range(dims) if size[a] >= 2 * min_feature_map and current[a] / finest < 2]
        if not axes:
            break
        stride = [1] * dims
        for axis in axes:
            stride[axis] = 2
            pools[axis] += 1
            current[axis] *= 2
            size[axis] = math.ceil(size[axis] / 2)
        strides.append(stride)
    if len(kernels) < len(strides):  # the deepest level, reached by the last pooling
        finest = min(current)
        kernels.append([3 if current[a] / finest < 2 else kernel[a] for a in range(dims)])
    while len(strides) < MIN_LEVELS:  # MONAI's DynUNet needs 3 levels; a patch too small to pool gets unpooled ones
        strides.append([1] * dims)
        kernels.append(list(kernels[-1]))
    filters = [min(BASE_FILTERS * 2**level, MAX_FILTERS) for level in range(len(strides))]
    return Topology(kernel_size=kernels, strides=strides, filters=filters, divisor=[2**p for p in pools])


def build_planned_network(topology: Topology, in_channels: int, out_channels: int) -> nn.Module:
    """The DynUNet of ``topology``, built through medseg's network registry."""
    from medseg.networks import build_network

    return build_network("dynunet", **topology.network_kwargs(in_channels, out_channels))


def activation_elements(topology: Topology, patch_size: Sequence[int], in_channels: int,
                        out_channels: int) -> tuple[int, int]:
    """``(elements of every layer output for one sample, parameters)``, counted on the meta device."""
    with torch.device("meta"):
        network = build_planned_network(topology, in_channels, out_channels)
        total = 0

        def count(_module: nn.Module, _inputs: object, output: object) -> None:
            nonlocal total
            if isinstance(output, torch.Tensor):
                total += output.numel()

        hooks = [m.register_forward_hook(count) for m in network.modules() if not list(m.children())]
        try:
            network(torch.empty(1, in_channels, *patch_size))
        finally:
            for hook in hooks:
                hook.remove()
    return total, sum(p.numel() for p in network.parameters())


def estimate_memory_bytes(topology: Topology, patch_size: Sequence[int], batch_size: int, in_channels: int,
                          out_channels: int, amp: bool = True) -> int:
    """The estimated GPU memory of one training step (see the module docstring)."""
    elements, params = activation_elements(topology, patch_size, in_channels, out_channels)
    return int(elements * batch_size * (2 if amp else 4) + 16 * params + CUDA_OVERHEAD_BYTES)


def measure_memory_bytes(topology: Topology, patch_size: Sequence[int], batch_size: int, in_channels: int,
                         out_channels: int, device: torch.device, amp: bool = True) -> int:
    """The peak CUDA memory of one measured forward and backward pass with Adam (CUDA devices only)."""
    network = build_planned_network(topology, in_channels, out_channels).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.randn(batch_size, in_channels, *patch_size, device=device)
    with autocast(device, enabled=amp):  # the precision training uses there (medseg.utils.device)
        loss = network(x).float().mean()
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated(device) - base
    del network, optimizer, x, loss
    torch.cuda.empty_cache()
    return int(peak + CUDA_OVERHEAD_BYTES)


def _initial_patch(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    """A patch of :data:`REFERENCE_PATCH_VOXELS` voxels with each axis in proportion to 1/spacing, clipped."""
    inverse = [1.0 / s for s in spacing]
    scale = (REFERENCE_PATCH_VOXELS / math.prod(inverse)) ** (1 / len(spacing))
    return [max(1, min(round(i * scale), int(m))) for i, m in zip(inverse, median_shape)]


def _round_to(patch: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """Each axis rounded up to a multiple of its divisor."""
    return [int(math.ceil(p / d) * d) for p, d in zip(patch, divisor)]


def fit_patch_and_batch(spacing: Sequence[float], median_shape: Sequence[int], dataset_voxels: int,
                        in_channels: int, out_channels: int, budget_bytes: int,
                        device: torch.device | None = None) -> tuple[list[int], int, Topology, dict]:
    """The patch size, batch size and topology that fit ``budget_bytes`` (the rules in the module docstring).

    Args:
        spacing: the target spacing.
        median_shape: the median case shape at the target spacing.
        dataset_voxels: voxels of all cases at the target spacing (for the 5 % batch cap).
        in_channels: the dataset's channels.
        out_channels: the classes, background included.
        budget_bytes: the GPU memory to plan for.
        device: a CUDA device to check the plan on with one measured step; ``None``: estimate only.

    Returns:
        ``(patch_size, batch_size, topology, memory)``; ``memory`` holds the estimate and, with a
        device, the measurement, in GiB.
    """
    if budget_bytes <= CUDA_OVERHEAD_BYTES:
        raise InvalidValueError(f"GPU memory {budget_bytes / 2**30:.2f} GiB is below the "
                                f"{CUDA_OVERHEAD_BYTES / 2**30:.2f} GiB the CUDA context alone takes")
    patch = _initial_patch(spacing, median_shape)
    topology = plan_topology(spacing, patch)
    patch = _round_to(patch, topology.divisor)

    def fits(p: list[int], top: Topology, batch: int) -> bool:
        return estimate_memory_bytes(top, p, batch, in_channels, out_channels) <= budget_bytes

    while not fits(patch, topology, MIN_BATCH):
        ratios = [p / m for p, m in zip(patch, median_shape)]
        order = sorted(range(len(patch)), key=lambda a: ratios[a], reverse=True)
        shrinkable = [a for a in order if patch[a] - topology.divisor[a] >= MIN_FEATURE_MAP]
        if not shrinkable:
            break  # the smallest patch; the batch below takes what is left
        axis = shrinkable[0]
        patch[axis] -= topology.divisor[axis]
        topology = plan_topology(spacing, patch)
        patch = _round_to(patch, topology.divisor)
    per_sample, params = activation_elements(topology, patch, in_channels, out_channels)
    fixed = 16 * params + CUDA_OVERHEAD_BYTES
    batch = max(1, (budget_bytes - fixed) // (per_sample * 2))
    cap = max(1, round(dataset_voxels * MAX_DATASET_FRACTION / math.prod(patch)))
    batch = int(max(min(batch, cap), MIN_BATCH if batch >= MIN_BATCH else 1))
    memory = {"budget_gib": round(budget_bytes / 2**30, 3),
              "estimated_gib": round(estimate_memory_bytes(topology, patch, batch, in_channels, out_channels) / 2**30,
                                     3),
              "measured_gib": None}
    if device is not None and device.type == "cuda":
        measured = measure_memory_bytes(topology, patch, batch, in_channels, out_channels, device)
        while measured > budget_bytes and batch > 1:
            batch -= 1
            measured = measure_memory_bytes(topology, patch, batch, in_channels, out_channels, device)
        memory["measured_gib"] = round(measured / 2**30, 3)
    return patch, batch, topology, memory

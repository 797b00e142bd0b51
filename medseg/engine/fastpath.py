"""The training fast path the 3D bundles use by default: loader, mixed precision and optimizer choices.

Called from bundle configs (``configs/train.json``), so the choices stay overridable ids:

* ``device_augment`` (default: on when the device is CUDA) moves each patch to the device
  as soon as it is cut from the cached volume; the flips and intensity changes then run on
  the GPU, and :func:`training_loader` feeds the trainer from a background thread
  (MONAI's ``ThreadDataLoader``) instead of worker processes, which cannot touch CUDA.
  The expensive deterministic steps are cached once by ``CacheDataset``; what is left per
  step is a slice and a copy, which one thread does while the GPU computes the previous step.
* :func:`training_precision` picks the floating-point type a network trains in on a device,
  and :func:`amp_kwargs` the autocast arguments for it. On CUDA it is bfloat16 where the GPU
  supports it (no loss-scale overflows), else float16, but for the networks listed in
  :data:`CUDA_PRECISION`, whose measured step is fastest in another type
  (``benchmarks/training_vs_stock.py --levers precision``; ``docs/performance.md``).
* :func:`fused_adam` uses the single-kernel Adam/AdamW on CUDA.
* ``compile`` (default: off, opt-in) hands the network to MONAI's ``SupervisedTrainer`` for
  ``torch.compile`` (inductor), in the mode of the ``compile_mode`` id (:func:`compile_kwargs`;
  ``reduce-overhead`` adds CUDA graphs on a GPU; gradients are then set to ``None`` at
  each step). The compilation is paid once per run, in the
  first iterations; checkpoints and validation use the network itself, so checkpoints are the
  same as without it. Off by default until a GPU measurement shows it pays
  (``benchmarks/training_vs_stock.py --levers compile cuda_graphs``).
* ``channels_last`` (default: off, opt-in) keeps the network's weights and each batch in
  the channels-last 3D layout, which oneDNN's convolutions run fastest in: a SegResNet
  training step at 96^3 takes 6.2 s instead of 7.7 s on the 2-core CPU. It is not the
  default because ``medseg demo`` trained with it scored lower held-out Dice at both
  training seeds tried (``benchmarks/demo_layout_ab.py``), and it is unmeasured on CUDA
  (PyTorch's CUDA GroupNorm has no channels-last kernel).

On the CPU (no GPU, or ``device_augment=false``) the loader is the plain ``DataLoader``
with worker processes. ``benchmarks/training_vs_stock.py`` measures this path against the
stock model-zoo recipe; ``docs/performance.md`` has the figures.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import DataLoader, ThreadDataLoader
from torch.utils.data import Dataset, Sampler

from medseg.errors import InvalidValueError, MedsegError
from medseg.utils.device import autocast_dtype, supports_bf16


def device_augment_default(device: str | torch.device) -> bool:
    """Whether patches should be augmented on ``device`` by default: on CUDA, yes; on the CPU there is nothing to gain."""
    return torch.device(device).type == "cuda"


def augment_device(device: str | torch.device, device_augment: bool) -> torch.device | None:
    """The device ``train_transforms`` moves patches to, or ``None`` to keep them where they are cut."""
    return torch.device(device) if device_augment else None


def training_loader(
    dataset: Dataset,
    batch_size: int,
    device_augment: bool,
    num_workers: int = 4,
    shuffle: bool = True,
    sampler: Sampler | None = None,
    buffer_size: int = 2,
) -> DataLoader:
    """The training loader of the fast path.

    Args:
        dataset: the (cached) training dataset.
        batch_size: patches per step.
        device_augment: the random transforms end on the training device (see the module
            docstring): batches are made in one background thread, ``buffer_size`` ahead;
            ``num_workers`` is then not used. Otherwise a ``DataLoader`` with ``num_workers``
            worker processes.
        num_workers: worker processes of the plain loader.
        shuffle: reshuffle every epoch (``False`` when a ``sampler`` is given, e.g. under DDP).
        sampler: a sampler (``DistributedSampler`` under ``torchrun``).
        buffer_size: batches made ahead by the background thread.

    Returns:
        A MONAI ``DataLoader`` or ``ThreadDataLoader``.

    Raises:
        MedsegError: for a batch size or buffer size below 1, or negative workers.
    """
    if batch_size < 1 or buffer_size < 1 or num_workers < 0:
        raise MedsegError(f"training loader: batch_size ({batch_size}) and buffer_size ({buffer_size}) must be "
                          f">= 1 and num_workers ({num_workers}) >= 0")
    # An empty dataset (a workflow built before its data, see medseg.engine.data.placeholder_datalist)
    # cannot be shuffled: torch's RandomSampler refuses zero samples when it is made.
    order = {"batch_size": batch_size, "shuffle": shuffle and sampler is None and len(dataset) > 0, "sampler": sampler}
    if device_augment:
        # One producer thread, so the random transforms draw in the same order as in the main
        # process: the per-transform RNG states saved at each epoch end resume exactly.
        return ThreadDataLoader(dataset, num_workers=0, buffer_size=buffer_size, **order)
    return DataLoader(dataset, num_workers=num_workers, **order)


#: Networks whose CUDA training step is fastest in another type than the device's default
#: autocast type: ``"fp32"`` (no autocast; TF32 convolutions), ``"fp16"`` or ``"bf16"``. From
#: the GPU measurements of ``benchmarks/training_vs_stock.py --levers precision``
#: (``benchmarks/results/training_gpu.json``: one H200, torch 2.11, crop 224x224x144, batch 1):
#: attention_unet3d takes 0.30 s a step in bf16 against 0.22 s in fp32 or fp16 (3.22 against 4.27
#: cases/s; fp32 needs no loss scaling), while SegResNet is fastest in bf16 (4.42 cases/s; fp16
#: 4.38, fp32 3.80), the default.
CUDA_PRECISION: dict[str, str] = {"attention_unet3d": "fp32"}

_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def training_precision(device: str | torch.device, network: str | None = None, choice: str = "auto") -> str:
    """The type ``network`` (a registry name) trains in on ``device``: ``"fp32"``, ``"fp16"`` or ``"bf16"``.

    Args:
        device: the training device.
        network: the network's registry name (``network_spec['name']``).
        choice: the bundle's ``precision`` id: ``"auto"`` (default) is :data:`CUDA_PRECISION`'s
            choice for the network on CUDA, else the device's autocast type
            (:func:`medseg.utils.device.autocast_dtype`); ``"fp32"``, ``"fp16"`` or ``"bf16"``
            ask for that type on CUDA. The CPU always trains in fp32 (autocast slows its
            convolutions down), whatever the choice.

    Raises:
        InvalidValueError: an unknown ``choice``, or ``"bf16"`` on a GPU without bfloat16.
    """
    if choice not in PRECISIONS:
        raise InvalidValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    dtype = autocast_dtype(device)
    if dtype is None:
        return "fp32"
    if choice == "bf16" and torch.cuda.is_available() and not supports_bf16(device):
        raise InvalidValueError("precision bf16: this GPU has no bfloat16 support; use fp16, fp32 or auto")
    if choice != "auto":
        return choice
    return CUDA_PRECISION.get(str(network), _NAMES[dtype])


def uses_amp(amp: bool, device: str | torch.device, network: str | None = None, choice: str = "auto") -> bool:
    """Whether the trainer autocasts: the bundle's ``amp`` is on and :func:`training_precision` is not fp32."""
    return bool(amp) and training_precision(device, network, choice) != "fp32"


def amp_kwargs(device: str | torch.device, network: str | None = None, choice: str = "auto") -> dict[str, Any]:
    """``torch.autocast`` arguments for the trainer and evaluator (:func:`training_precision`).

    Where the network trains in fp32 (the CPU, where the trainer never autocasts), float16 is
    returned only so that MONAI gets a valid type; :func:`uses_amp` is then false.
    """
    precision = training_precision(device, network, choice)
    return {"dtype": torch.bfloat16 if precision == "bf16" else torch.float16}


def place_network(network: torch.nn.Module, device: str | torch.device, channels_last: bool) -> torch.nn.Module:
    """Move ``network`` to ``device``, in the channels-last 3D layout when ``channels_last`` (weights converted in place)."""
    network = network.to(torch.device(device))
    return network.to(memory_format=torch.channels_last_3d) if channels_last else network


def batch_to_kwargs(channels_last: bool) -> dict[str, Any]:
    """``Tensor.to`` arguments the trainer gives each batch (its ``to_kwargs``): the layout the network is in."""
    return {"memory_format": torch.channels_last_3d} if channels_last else {}


#: ``torch.compile`` modes the ``compile_mode`` id takes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The modes in which inductor records CUDA graphs (on a GPU).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_kwargs(mode: str = "default", accumulation_steps: int = 1, enabled: bool = True) -> dict[str, Any]:
    """``torch.compile`` arguments for the trainer's ``compile_kwargs`` (used when the bundle's ``compile`` is on).

    A mode that records CUDA graphs replays them into the same memory each iteration, so gradients
    cannot be carried from one iteration to the next: the bundles then set them to ``None`` at each
    step (``optim_set_to_none`` follows ``compile``) and gradient accumulation is refused.

    Args:
        mode: the ``compile_mode`` id, one of :data:`COMPILE_MODES`.
        accumulation_steps: the ``accumulation_steps`` id.
        enabled: the ``compile`` id (the accumulation check applies only when compiling).

    Raises:
        InvalidValueError: an unknown ``mode``, or a CUDA-graph mode with ``accumulation_steps`` > 1.
    """
    if mode not in COMPILE_MODES:
        raise InvalidValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if enabled and mode in CUDA_GRAPH_MODES and int(accumulation_steps) > 1:
        raise InvalidValueError(
            f"compile_mode {mode} records CUDA graphs, which cannot accumulate gradients over iterations "
            f"(accumulation_steps={accumulation_steps}): use compile_mode default or max-autotune-no-cudagraphs")
    return {"mode": mode}


def fused_adam(device: str | torch.device) -> bool:
    """Whether to use the fused (single-kernel) Adam: on CUDA."""
    return torch.device(device).type == "cuda"

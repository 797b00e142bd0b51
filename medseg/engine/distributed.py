"""Helpers for ``multi_gpu_train.json`` under ``torchrun``: the local device, rank-0 agreement, a cache per rank.

A cache per rank. Before, every rank cached the whole training set and a ``DistributedSampler``
then drew its share from it, so host memory grew with the number of GPUs (MONAI #3843,
nnU-Net #2558). Now :func:`rank_share` hands each rank a fixed, even share of the training
cases (MONAI's ``partition_dataset``, seeded, so every rank computes the same split without
talking to the others), and its ``CacheDataset`` caches only that share: about 1/N of the
one-rank cache per rank. The price is that cases no longer move between ranks from epoch to
epoch; the order *within* a share is still re-shuffled every epoch (a ``DistributedSampler``
over the share with ``num_replicas=1``, whose ``set_epoch`` MONAI's ``Workflow`` calls at each
epoch start), which is what data-parallel SGD needs.

Exact resume. The checkpoint is written by rank 0 and holds rank 0's RNG states; restoring
them on every rank would make rank 1 draw rank 0's random crops after a resume.
:class:`EpochSeedHandler` instead seeds each rank's RNGs (Python, NumPy, torch and the random
transforms) at every epoch start from ``(seed, epoch, rank)``: a resumed run, whose epoch comes
back from the checkpoint, draws exactly what the uninterrupted run drew, on every rank.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from medseg.errors import DataError, InvalidTypeError, InvalidValueError

__all__ = ["EpochSeedHandler", "broadcast_string", "epoch_seed", "local_device", "rank_share"]

T = TypeVar("T")


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` on a GPU node, else the CPU (gloo backend, e.g. the CI test)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def broadcast_string(value: str) -> str:
    """Return rank 0's ``value`` on every rank (e.g. a timestamped output folder)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return str(holder[0])


def _rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidTypeError(f"seed must be an integer, got {type(seed).__name__}: {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise InvalidValueError(f"seed must be in [0, 2**32), got {seed}")
    return int(seed)


def rank_share(items: Sequence[T], seed: int, source: str | os.PathLike[str] | None = None) -> list[T]:
    """This rank's share of the training cases under ``torchrun``: all its ``CacheDataset`` caches.

    MONAI's ``partition_dataset(items, num_partitions=world_size, shuffle=True, seed=seed,
    even_divisible=True)[rank]``: the cases are shuffled with ``seed`` (the same on every rank,
    so the shares are disjoint without any communication) and dealt out round-robin. Every
    share has ``ceil(len(items) / world_size)`` cases, because DDP needs the same number of
    steps on every rank; when ``len(items)`` is not a multiple of the world size, the first
    cases of the shuffled order are dealt a second time to fill the last shares (as
    ``DistributedSampler`` pads), so a few cases are cached on two ranks. With N ranks a
    rank's cache holds about 1/N of the one-rank cache.

    Args:
        items: the training cases (the datalist's dicts), in datalist order.
        seed: the run's seed (the bundle's ``seed``), an integer in ``[0, 2**32)``.
        source: where the cases come from (the dataset folder), named in errors.

    Returns:
        The rank's share, a new list. Without an initialised process group, or with a world
        size of 1, every item in its order; an empty ``items`` gives an empty share on every
        rank (a workflow built before its data; ``require_dataset`` then says what is missing).

    Raises:
        InvalidTypeError, InvalidValueError: for a seed that is not an integer in ``[0, 2**32)``.
        DataError: naming ``source``, when there are fewer cases than ranks.
    """
    seed = _check_seed(seed)
    items = list(items)
    rank, world = _rank_and_world()
    if world == 1 or not items:
        return items
    if len(items) < world:
        raise DataError(source if source is not None else "training cases", "fewer training cases than ranks",
                        f"{len(items)} training case(s) for {world} torchrun processes: each rank needs at least "
                        "one; start fewer processes (--nproc_per_node) or use fewer folds (num_folds)")
    from monai.data import partition_dataset

    return list(partition_dataset(items, num_partitions=world, shuffle=True, seed=seed, even_divisible=True)[rank])


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed in ``[0, 2**32)`` for one rank's epoch, well mixed (NumPy's ``SeedSequence``).

    Args:
        seed: the run's seed.
        epoch: the epoch number (ignite's, from 1).
        rank: the process rank.
    """
    return int(np.random.SeedSequence([_check_seed(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeedHandler:
    """Seed this rank's RNGs at every epoch start from ``(seed, epoch, rank)``, for exact DDP resume.

    At ``EPOCH_STARTED`` (after MONAI's ``sampler.set_epoch``, before the epoch's data loader
    iterator is made) Python's, NumPy's and torch's global generators and the random
    transforms of ``transform`` (``Compose.set_random_state``) are seeded with
    :func:`epoch_seed`. What an epoch draws then depends only on ``(seed, epoch, rank)``, not on
    RNG states carried over from earlier epochs, so a resumed run (its epoch restored from the
    checkpoint, the RNG states in it being rank 0's) draws on every rank what the uninterrupted
    run drew. The data loader's worker seeds come from torch's generator, so they follow too.

    Args:
        seed: the run's seed (the bundle's ``seed``), an integer in ``[0, 2**32)``.
        transform: the training transform (a MONAI ``Compose``), or ``None``.
        rank: the process rank; default: the process group's, 0 without one.

    Raises:
        InvalidTypeError: for a ``transform`` without ``set_random_state``.
    """

    def __init__(self, seed: int, transform: Any = None, rank: int | None = None) -> None:
        self.seed = _check_seed(seed)
        if transform is not None and not callable(getattr(transform, "set_random_state", None)):
            raise InvalidTypeError(f"transform needs set_random_state (a MONAI Compose), got {type(transform).__name__}")
        self.transform = transform
        self.rank = rank

    def attach(self, engine: Any) -> None:
        """Run at every ``EPOCH_STARTED`` of ``engine`` (the trainer)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        """Seed every generator for ``engine.state.epoch``."""
        rank = self.rank if self.rank is not None else _rank_and_world()[0]
        value = epoch_seed(self.seed, engine.state.epoch, rank)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)
        if self.transform is not None:
            self.transform.set_random_state(seed=value)

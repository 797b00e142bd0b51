"""Split a batch of cases into disjoint parts: one per process, GPU or machine, for an archive.

Part ``k`` of ``n`` holds the cases whose position in case-id order is ``k`` modulo ``n``: the
same split on every machine (it depends on the ids only), every case in exactly one part, and
neighbouring ids (often similar sizes) spread over the parts. ``torchrun --nproc_per_node=G -m
medseg infer ...`` gives each rank its part (:func:`torchrun_part`) on its own GPU, and the
ranks' reports are merged into one summary (:meth:`medseg.inference.batch.BatchReport.merged`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["select_part", "torchrun_part"]

T = TypeVar("T")


def select_part(cases: Sequence[T], num_parts: int, part_id: int, key: str = "case_id") -> list[T]:
    """The cases of part ``part_id`` of ``num_parts``, in case-id order."""
    ordered = sorted(cases, key=lambda c: str(getattr(c, key)))
    return [case for i, case in enumerate(ordered) if i % num_parts == part_id]


def torchrun_part() -> tuple[int, int, int] | None:
    """``(num_parts, part_id, local_rank)`` from the environment ``torchrun`` sets, or ``None`` outside it."""
    try:
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    return (world, rank, int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else None

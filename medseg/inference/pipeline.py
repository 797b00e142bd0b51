"""Run cases through read → network → write with the three stages overlapped.

Folder inference on a GPU is bound by reading and writing, not by the network: decoding four
gzipped NIfTI files and writing a compressed mask take longer than the forward pass
(issue #7). :func:`run_stages` therefore reads (decodes and preprocesses) the next case in a
background thread, and maps the previous case back to its input grid and writes it in
another, while the calling thread runs the network on the current one. zlib, NumPy and
PyTorch release the GIL in their long calls, so the three stages really do run at once.

At most three cases are in memory: one being read, one in the network, one being written.
A case larger than ``large`` voxels runs on its own: nothing is read ahead while it is in
the network and its write finishes before the next read starts, so folders of very large
volumes (the 512³ case of the memory target) hold one case at a time, as the serial loop did.

Each stage's error belongs to its case only; the other cases go on. Outcomes are reported
in input order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Stages", "run_stages"]

Job = TypeVar("Job")
Prepared = TypeVar("Prepared")
Computed = TypeVar("Computed")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Stages(Generic[Job, Prepared, Computed, Result]):
    """The three steps of one case.

    Attributes:
        prepare: read and preprocess (runs in the reading thread when overlapped).
        compute: the network (always in the calling thread, which owns the device).
        finish: map back and write; returns what was written (runs in the writing thread).
        size: how many voxels a prepared case holds, to keep large cases on their own.
    """

    prepare: Callable[[Job], Prepared]
    compute: Callable[[Job, Prepared], Computed]
    finish: Callable[[Job, Computed], Result]
    size: Callable[[Prepared], int]


Report = Callable[[Job, "Result | BaseException", float], None]


def _serial(jobs: Sequence[Job], stages: Stages, report: Report) -> None:
    for job in jobs:
        start = time.perf_counter()
        try:
            result = stages.finish(job, stages.compute(job, stages.prepare(job)))
        except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
            report(job, err, time.perf_counter() - start)
            continue
        report(job, result, time.perf_counter() - start)


def run_stages(jobs: Sequence[Job], stages: Stages[Job, Prepared, Computed, Result], report: Report,
               overlap: bool = True, large: int | None = None) -> None:
    """Run every job through ``prepare → compute → finish`` and report each, in order.

    Args:
        jobs: the cases, in the order they are reported.
        stages: the three steps.
        report: called once per job with what ``finish`` returned, or the exception that
            stopped that job (in any stage), and the seconds from the start of its reading to
            the end of its writing.
        overlap: read the next job and write the previous one in background threads while
            ``compute`` runs; ``False`` runs the steps one after another in this thread.
        large: jobs whose prepared ``size`` exceeds this run without overlap (bounded
            memory); ``None``: no limit.
    """
    if not overlap or len(jobs) < 2:
        _serial(jobs, stages, report)
        return
    limit = large if large is not None else float("inf")
    with ThreadPoolExecutor(1, thread_name_prefix="medseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="medseg-write") as writer:
        started: dict[int, float] = {}

        def read(i: int) -> Future:
            started[i] = time.perf_counter()
            return reader.submit(stages.prepare, jobs[i])

        def collect(i: int, future: Future) -> None:
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
                report(jobs[i], err, time.perf_counter() - started[i])
                return
            report(jobs[i], result, time.perf_counter() - started[i])

        pending_read: Future | None = read(0)
        pending_write: tuple[int, Future] | None = None
        for i, job in enumerate(jobs):
            assert pending_read is not None
            error: BaseException | None = None
            prepared = computed = None
            try:
                prepared = pending_read.result()
            except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
                error = err
            small = error is None and stages.size(prepared) <= limit
            pending_read = read(i + 1) if i + 1 < len(jobs) and (error is not None or small) else None
            if error is None:
                try:
                    computed = stages.compute(job, prepared)
                except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
                    error = err
            del prepared
            if pending_write is not None:  # one write in flight: memory stays bounded
                collect(*pending_write)
                pending_write = None
            if error is not None:
                report(job, error, time.perf_counter() - started[i])
            else:
                pending_write = (i, writer.submit(stages.finish, job, computed))
                del computed
                if not small:
                    collect(*pending_write)
                    pending_write = None
            if pending_read is None and i + 1 < len(jobs):
                pending_read = read(i + 1)
        if pending_write is not None:
            collect(*pending_write)

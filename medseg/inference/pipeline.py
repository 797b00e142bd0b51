"""Run cases through read → network → write with the three stages overlapped.

Folder inference on a GPU is bound by reading and writing, not by the network: decoding four
gzipped NIfTI files and writing a compressed mask take longer than the forward pass
(issue #7). :func:`run_stages` therefore reads (decodes and preprocesses) the next case in a
background thread, and maps the previous case back to its input grid and writes it in
another, while the calling thread runs the network on the current one. zlib, NumPy and
PyTorch release the GIL in their long calls, so the three stages really do run at once.

``readers`` cases are read at once (threads): on a GPU host one reader cannot keep up with
the network, as stock MONAI's four DataLoader workers show. At most ``readers + 2`` cases
are in memory: those read ahead, one in the network, one being written. A case larger than
``large`` voxels gets no new read-ahead while it is in the network, and its write finishes
before the next read starts; with one reader (the CPU default), folders of very large
volumes (the 512³ case of the memory target) hold one case at a time, as the serial loop did.

Each stage's error belongs to its case only; the other cases go on. Outcomes are reported
in input order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from medseg.errors import InvalidValueError

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
               overlap: bool = True, large: int | None = None, readers: int = 1) -> None:
    """Run every job through ``prepare → compute → finish`` and report each, in order.

    Args:
        jobs: the cases, in the order they are reported.
        stages: the three steps.
        report: called once per job with what ``finish`` returned, or the exception that
            stopped that job (in any stage), and the seconds from the start of its reading to
            the end of its writing.
        overlap: read the next jobs and write the previous one in background threads while
            ``compute`` runs; ``False`` runs the steps one after another in this thread.
        large: a job whose prepared ``size`` exceeds this gets no new read-ahead while it is
            in ``compute``, and is written before the next read starts (bounded memory);
            ``None``: no limit.
        readers: how many jobs are read at once, ahead of the one in ``compute`` (threads).
            At most ``readers + 2`` jobs are in memory: those read ahead, the one in
            ``compute`` and the one being written. With 1, a large job is held alone.
    """
    if readers < 1:
        raise InvalidValueError(f"readers must be at least 1, got {readers}")
    if not overlap or len(jobs) < 2:
        _serial(jobs, stages, report)
        return
    limit = large if large is not None else float("inf")
    with ThreadPoolExecutor(readers, thread_name_prefix="medseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="medseg-write") as writer:
        started: dict[int, float] = {}
        reads: deque[Future] = deque()  # reads of jobs next_read - len(reads) ... next_read - 1
        next_read = 0

        def read_ahead() -> None:
            nonlocal next_read
            while next_read < len(jobs) and len(reads) < readers:
                started[next_read] = time.perf_counter()
                reads.append(reader.submit(stages.prepare, jobs[next_read]))
                next_read += 1

        def collect(i: int, future: Future) -> None:
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
                report(jobs[i], err, time.perf_counter() - started[i])
                return
            report(jobs[i], result, time.perf_counter() - started[i])

        read_ahead()
        pending_write: tuple[int, Future] | None = None
        for i, job in enumerate(jobs):
            if not reads:  # the read-ahead paused for a large job
                read_ahead()
            error: BaseException | None = None
            prepared = computed = None
            try:
                prepared = reads.popleft().result()
            except Exception as err:  # noqa: BLE001 - isolation: reported, the batch goes on
                error = err
            small = error is None and stages.size(prepared) <= limit
            if small or error is not None:
                read_ahead()
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
        if pending_write is not None:
            collect(*pending_write)

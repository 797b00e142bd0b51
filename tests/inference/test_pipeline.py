"""The overlapped read → network → write loop: real threads, order, isolation, bounded memory."""

from __future__ import annotations

import threading

import pytest

from medseg.inference.pipeline import Stages, run_stages

WAIT = 10.0  # seconds; a correct loop never waits this long


class Recorder:
    """Stages over integer jobs that log which thread ran what, and how many jobs were alive at once."""

    def __init__(self, fail: dict[str, int] | None = None, sizes: dict[int, int] | None = None) -> None:
        self.fail = fail or {}
        self.sizes = sizes or {}
        self.lock = threading.Lock()
        self.events: list[tuple[str, int, str]] = []
        self.alive = 0
        self.most_alive = 0

    def _log(self, stage: str, job: int) -> None:
        with self.lock:
            self.events.append((stage, job, threading.current_thread().name))

    def prepare(self, job: int) -> dict:
        self._log("prepare", job)
        with self.lock:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
        if self.fail.get("prepare") == job:
            with self.lock:
                self.alive -= 1
            raise OSError(f"case {job}: unreadable")
        return {"job": job}

    def compute(self, job: int, prepared: dict) -> dict:
        self._log("compute", job)
        if self.fail.get("compute") == job:
            with self.lock:
                self.alive -= 1
            raise RuntimeError(f"case {job}: network failed")
        return {**prepared, "value": job * 10}

    def finish(self, job: int, computed: dict) -> str:
        self._log("finish", job)
        with self.lock:
            self.alive -= 1
        if self.fail.get("finish") == job:
            raise OSError(f"case {job}: disk full")
        return f"written {computed['value']}"

    def stages(self) -> Stages:
        return Stages(self.prepare, self.compute, self.finish, size=lambda p: self.sizes.get(p["job"], 1))


def run(recorder: Recorder, jobs: list[int], **kwargs) -> list[tuple[int, object]]:
    reports: list[tuple[int, object]] = []
    run_stages(jobs, recorder.stages(), lambda job, result, seconds: reports.append((job, result)), **kwargs)
    return reports


def test_results_come_back_in_input_order():
    reports = run(Recorder(), list(range(6)))
    assert reports == [(i, f"written {i * 10}") for i in range(6)]


def test_reading_and_writing_run_in_background_threads_while_the_network_runs():
    next_read = threading.Event()
    previous_written = threading.Event()
    seen: dict[str, bool] = {}

    class Overlapping(Recorder):
        def prepare(self, job: int) -> dict:
            if job == 2:
                next_read.set()
            return super().prepare(job)

        def finish(self, job: int, computed: dict) -> str:
            if job == 0:
                previous_written.set()
            return super().finish(job, computed)

        def compute(self, job: int, prepared: dict) -> dict:
            if job == 1:  # while case 1 is in the network, case 2 is read and case 0 written
                seen["read ahead"] = next_read.wait(WAIT)
                seen["written behind"] = previous_written.wait(WAIT)
            return super().compute(job, prepared)

    recorder = Overlapping()
    reports = run(recorder, [0, 1, 2])
    assert seen == {"read ahead": True, "written behind": True}
    assert [r for _, r in reports] == ["written 0", "written 10", "written 20"]
    threads = {stage: {t for s, _, t in recorder.events if s == stage} for stage in ("prepare", "compute", "finish")}
    assert threads["compute"] == {threading.current_thread().name}
    assert all(t.startswith("medseg-read") for t in threads["prepare"])
    assert all(t.startswith("medseg-write") for t in threads["finish"])


def test_serial_runs_everything_in_the_calling_thread_one_case_at_a_time():
    recorder = Recorder()
    reports = run(recorder, [0, 1, 2], overlap=False)
    assert [r for _, r in reports] == ["written 0", "written 10", "written 20"]
    assert {t for _, _, t in recorder.events} == {threading.current_thread().name}
    assert [(s, j) for s, j, _ in recorder.events] == [
        (s, j) for j in range(3) for s in ("prepare", "compute", "finish")]
    assert recorder.most_alive == 1


@pytest.mark.parametrize("stage", ["prepare", "compute", "finish"])
def test_a_failure_in_any_stage_stops_only_its_case(stage):
    reports = run(Recorder(fail={stage: 2}), list(range(5)))
    assert [job for job, _ in reports] == [0, 1, 2, 3, 4]
    failed = [(job, r) for job, r in reports if isinstance(r, BaseException)]
    assert len(failed) == 1 and failed[0][0] == 2 and "case 2" in str(failed[0][1])
    assert [r for job, r in reports if job != 2] == ["written 0", "written 10", "written 30", "written 40"]


def test_at_most_three_cases_are_in_memory():
    # Each case stays in the network until the next one has been read, so the loop always has a
    # case read ahead (at least 2 alive, whatever the scheduling); a reader that ran further
    # ahead than one case would push the count past 3 while the network waits.
    jobs = list(range(12))
    read = {job: threading.Event() for job in jobs}

    class ReadAhead(Recorder):
        def prepare(self, job: int) -> dict:
            prepared = super().prepare(job)
            read[job].set()
            return prepared

        def compute(self, job: int, prepared: dict) -> dict:
            if job + 1 in read:
                assert read[job + 1].wait(WAIT), f"case {job + 1} was not read while case {job} was in the network"
            return super().compute(job, prepared)

    recorder = ReadAhead()
    reports = run(recorder, jobs)
    assert reports == [(i, f"written {i * 10}") for i in jobs]
    assert 2 <= recorder.most_alive <= 3


def test_a_large_case_is_held_alone():
    # Case 1 is over the limit: nothing is read while it is in the network, and it is
    # written before the next case is read.
    recorder = Recorder(sizes={1: 1000})
    reports = run(recorder, [0, 1, 2, 3], large=100)
    assert [r for _, r in reports] == ["written 0", "written 10", "written 20", "written 30"]
    order = [(s, j) for s, j, _ in recorder.events]
    assert order.index(("finish", 1)) < order.index(("prepare", 2))
    assert order.index(("finish", 0)) < order.index(("prepare", 2))


def test_several_readers_read_at_once_and_memory_stays_bounded():
    # With 3 readers, cases 1-3 are read at the same time: each read waits at a barrier for
    # the other two, which breaks (and fails that case) if fewer than 3 run at once.
    barrier = threading.Barrier(3, timeout=WAIT)

    class Parallel(Recorder):
        def prepare(self, job: int) -> dict:
            if job in (1, 2, 3):
                barrier.wait()
            return super().prepare(job)

    recorder = Parallel()
    reports = run(recorder, list(range(12)), readers=3)
    assert reports == [(i, f"written {i * 10}") for i in range(12)]
    assert len({t for s, _, t in recorder.events if s == "prepare"}) == 3
    assert recorder.most_alive <= 3 + 2  # read ahead, in compute, being written


def test_readers_must_be_positive():
    with pytest.raises(ValueError, match="readers must be at least 1"):
        run(Recorder(), [0, 1], readers=0)

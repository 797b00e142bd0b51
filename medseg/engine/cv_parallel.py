"""``medseg cv --devices``: train folds side by side, each as its own ``medseg train`` process on one device.

Each fold runs as the command a user would type (``python -m medseg train BUNDLE --fold K ...``)
with ``CUDA_VISIBLE_DEVICES`` naming its one GPU (empty for a ``cpu`` entry), so the fold sees
exactly one device, as ``cuda:0``, and the bundle's own device choice needs no change. A process
per fold, not a thread or ``torch.multiprocessing``: CUDA state, the SIGTERM handler, the MONAI
workflow and the output folder's lock are per process, and a fold that crashes (or is killed by
the OOM killer) takes only itself down.

Each device entry is a slot that trains one fold at a time and takes the next waiting fold when
it frees up; an entry given twice (``--devices cpu cpu``, ``--devices 0 0``) is two slots. A fold
that fails stops new folds from starting; those already running finish (and count as done), then
:func:`run_fold_jobs` raises, naming the fold, its exit status and the end of its log.

Signals: Ctrl-C reaches every process of the terminal's process group, the folds included; they
stop as a lone ``medseg train`` does (checkpoint kept, MLflow run ``KILLED``) and are waited for.
SIGTERM is turned into :class:`~medseg.engine.handlers.interrupt.RunInterrupted` as in a training
run. A fold still running :data:`GRACE_S` seconds after the signal did not get it (it was sent to
this process alone) and is sent the same signal. The wait is short for SIGTERM: ``docker stop``
and Kubernetes signal only the main process and kill everything 10 or 30 s later, while SLURM
signals every process, and a fold's second SIGTERM ends it at once (its checkpoint is safe either
way). On 2 busy CPU cores a fold took 4.5 s from SIGTERM to its exit, its MLflow run marked
``KILLED`` on the way.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medseg.errors import MedsegError

__all__ = ["FoldJob", "check_devices", "parse_devices", "run_fold_jobs"]

logger = logging.getLogger("medseg.train")

#: Seconds the folds get to stop on their own after Ctrl-C or SIGTERM before it is passed on to them.
GRACE_S = {signal.SIGINT: 20.0, signal.SIGTERM: 5.0}
#: Lines of a failed fold's log quoted in the error.
TAIL_LINES = 15
_POLL_S = 0.25
_DEVICE = re.compile(r"(?:cuda:)?(\d+)")
_FORMS = "cpu, a GPU index N or cuda:N (e.g. --devices 0 1, --devices cuda:0,cuda:1 or --devices cpu cpu)"


@dataclass(frozen=True)
class FoldJob:
    """One fold to train in a subprocess.

    Attributes:
        fold: the fold number.
        args: the ``medseg`` arguments (``["train", BUNDLE, ...]``), run as ``python -m medseg ARGS``.
        log: the file that receives the process's stdout and stderr (appended to).
        resumed: whether the fold continues an interrupted training (``--resume``).
    """

    fold: int
    args: list[str]
    log: Path
    resumed: bool = False


def parse_devices(values: Sequence[str]) -> list[str]:
    """Normalise ``--devices`` entries to ``"cpu"`` and ``"cuda:N"``, one per slot.

    ``["0", "1"]``, ``["cuda:0", "cuda:1"]`` and ``["0,1"]`` all give ``["cuda:0", "cuda:1"]``.

    Raises:
        MedsegError: no entry, or an entry that is not a device, naming it.
    """
    items = [part.strip() for value in values for part in str(value).split(",")]
    if not items or any(not item for item in items):
        raise MedsegError(f"--devices needs one or more devices: {_FORMS}; got {list(values)!r}")
    devices = []
    for item in items:
        match = _DEVICE.fullmatch(item.lower())
        if item.lower() == "cpu":
            devices.append("cpu")
        elif match:
            devices.append(f"cuda:{int(match.group(1))}")
        else:
            raise MedsegError(f"--devices {item!r}: not a device; give {_FORMS}")
    return devices


def check_devices(devices: Sequence[str]) -> None:
    """Refuse a ``cuda:N`` that torch does not see, before anything starts.

    Raises:
        MedsegError: naming the device and how many GPUs torch sees.
    """
    wanted = sorted({int(d.split(":")[1]) for d in devices if d != "cpu"})
    if not wanted:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if count == 0:
        raise MedsegError(f"--devices cuda:{wanted[0]}: torch sees no CUDA GPU on this machine{where}; "
                          "give --devices cpu ... or leave --devices out")
    beyond = [n for n in wanted if n >= count]
    if beyond:
        raise MedsegError(f"--devices cuda:{beyond[0]}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}{where}")


def visible_devices(device: str) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that shows a fold ``device`` alone (``""``: no GPU).

    ``cuda:N`` counts the GPUs this process sees; under a ``CUDA_VISIBLE_DEVICES`` of its own
    (a scheduler's ``"2,3"``) that is the N-th entry of the list, not the machine's GPU N.
    """
    if device == "cpu":
        return ""
    index = int(device.split(":")[1])
    outer = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return outer[index] if index < len(outer) else str(index)


def _environment(device: str, cpu_slots: int) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible_devices(device), "PYTHONUNBUFFERED": "1"}
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # torch would give every CPU fold all the cores; folds side by side would then fight over them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_slots))
    return env


@dataclass
class _Running:
    job: FoldJob
    device: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]


def _start(job: FoldJob, device: str, cpu_slots: int) -> _Running:
    command = [sys.executable, "-m", "medseg", *job.args]
    job.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(job.log, "ab")  # noqa: SIM115 - closed when the process ends
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {stamp} medseg cv: fold {job.fold} on {device}: {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=_environment(device, cpu_slots))
    except BaseException:
        log.close()
        raise
    logger.info("fold %d: %s on %s in its own process (pid %d); its output goes to %s", job.fold,
                "resuming its interrupted training" if job.resumed else "training", device, process.pid, job.log)
    return _Running(job, device, process, log)


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (read from its last 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode("utf-8", errors="replace")
    except OSError as err:
        return f"    (cannot read it: {err})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _wait_all(running: dict[int, _Running], signum: int | None) -> None:
    """Wait for every running fold; pass ``signum`` on to those still running after :data:`GRACE_S` seconds.

    ``signum=None`` (this process failed): SIGTERM them at once, so each keeps its checkpoint.
    """
    deadline = time.monotonic() + (GRACE_S[signal.Signals(signum)] if signum is not None else 0.0)
    for run in running.values():
        try:
            run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            sig = signum if signum is not None else signal.SIGTERM
            logger.warning("fold %d (pid %d) still runs; sending it %s", run.job.fold, run.process.pid,
                           signal.Signals(sig).name)
            run.process.send_signal(sig)
    for run in running.values():
        run.process.wait()
        run.log.close()
        logger.info("fold %d: stopped (%s); its output is in %s", run.job.fold, _status(run.process.returncode),
                    run.job.log)


def run_fold_jobs(jobs: Sequence[FoldJob], devices: Sequence[str], on_done: Callable[[int, str], None]) -> None:
    """Train ``jobs`` in subprocesses, one at a time on each of ``devices``, in order of the list.

    Args:
        jobs: the folds to train.
        devices: the slots (:func:`parse_devices`).
        on_done: called in this thread with the fold and its device as each fold finishes
            (``medseg cv`` records it as done then).

    Raises:
        MedsegError: one or more folds failed (after the others running finished), naming each
            fold, its exit status and its log, with the log's last lines.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after every running fold stopped.
    """
    from medseg.engine.handlers.interrupt import InterruptHandler, RunInterrupted

    pending = deque(jobs)
    running: dict[int, _Running] = {}
    failed: list[tuple[FoldJob, int]] = []
    cpu_slots = sum(d == "cpu" for d in devices)
    sigterm = InterruptHandler()  # SIGTERM -> RunInterrupted, as in a training run
    sigterm.install()
    try:
        while running or (pending and not failed):  # after a failure, no new fold starts
            for slot, device in enumerate(devices):
                if slot not in running and pending and not failed:
                    running[slot] = _start(pending.popleft(), device, cpu_slots)
            for slot, run in list(running.items()):
                code = run.process.poll()
                if code is None:
                    continue
                run.log.close()
                del running[slot]
                if code == 0:
                    logger.info("fold %d: finished on %s", run.job.fold, run.device)
                    on_done(run.job.fold, run.device)
                else:
                    logger.error("fold %d: failed on %s (%s); see %s", run.job.fold, run.device, _status(code),
                                 run.job.log)
                    failed.append((run.job, code))
                    if running:
                        logger.info("waiting for the folds still running (%s) to finish",
                                    ", ".join(str(r.job.fold) for r in running.values()))
            if running:
                time.sleep(_POLL_S)
    except KeyboardInterrupt as err:
        _wait_all(running, signal.SIGTERM if isinstance(err, RunInterrupted) and err.signal_name == "SIGTERM"
                  else signal.SIGINT)
        raise
    except BaseException:
        _wait_all(running, None)  # a bug here: stop the folds (SIGTERM: checkpoint kept, run KILLED)
        raise
    finally:
        sigterm.restore()
    if failed:
        waiting = f"\nnot started: fold(s) {', '.join(str(job.fold) for job in pending)}" if pending else ""
        raise MedsegError("\n".join(f"fold {job.fold} failed ({_status(code)}); its log {job.log} ends:\n"
                                    f"{_tail(job.log)}" for job, code in failed) + waiting)

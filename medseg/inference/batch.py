"""Segment a batch of cases: progress bar, skip what exists, isolate failures, summarise.

One case that cannot be read or segmented never stops the others: its error is recorded
(naming the file and the rule it broke) and listed in the summary, and the batch reports
failure. Outputs are written as a set through :func:`medseg.inference.writer.write_outputs`,
so a failing case leaves no file behind. For DICOM cases, patient identifiers are removed
from every message.

Every case's output files are planned before the network runs
(:func:`medseg.inference.outputs.plan_outputs`): two cases that would write the same file
stop the batch there, and a case whose output name is longer than the file system allows
fails there. Temporary files that an earlier, killed run left in the output folder are
removed before the first case is read. Without ``overwrite`` no existing file is replaced:
a case whose files all exist is skipped, and one that lacks some (e.g. ``save_prob`` newly
asked for) writes only those. With ``overwrite`` a case's whole set is replaced: its files this run
does not write are removed once the new ones are in place.

What depends on the kind of model is asked of its task (:func:`medseg.inference.task.task_for`):
which inputs are cases, which files a case writes, and the read → network → write steps of a
case, which run through :mod:`medseg.inference.pipeline` overlapped (3D: the next case is
read and the previous one written while the network runs on the current one) where the task
allows it. The loop itself is the same for 2D and 3D models.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medseg.errors import MedsegError
from medseg.inference.inputs import InferenceCase
from medseg.inference.options import InferenceOptions, check_options
from medseg.inference.outputs import CaseOutputs, plan_outputs
from medseg.inference.pipeline import Stages, run_stages
from medseg.inference.shard import select_part
from medseg.inference.task import CaseRun, Model, task_for
from medseg.privacy import redact
from medseg.utils.atomic import remove_partial_files
from medseg.utils.fastgzip import use_fast_gzip

__all__ = ["BatchReport", "CaseOutcome", "check_output_dir", "run_inference"]

logger = logging.getLogger("medseg.infer")


@dataclass
class CaseOutcome:
    """What happened to one case: ``status`` is ``"written"``, ``"skipped"`` or ``"failed"``."""

    case_id: str
    status: str
    source: str
    detail: str = ""
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BatchReport:
    """Every case's outcome, in input order."""

    output_dir: Path
    outcomes: list[CaseOutcome]

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def written(self) -> list[CaseOutcome]:
        """Cases segmented in this run."""
        return self._with("written")

    @property
    def skipped(self) -> list[CaseOutcome]:
        """Cases whose outputs existed already."""
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseOutcome]:
        """Cases that could not be segmented."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failed

    @classmethod
    def merged(cls, reports: Sequence[BatchReport]) -> BatchReport:
        """One report of several parts' cases (``torchrun`` ranks), in case-id order."""
        outcomes = sorted((o for r in reports for o in r.outcomes), key=lambda o: o.case_id)
        return cls(output_dir=reports[0].output_dir, outcomes=outcomes)

    def format_summary(self) -> str:
        """A table of every case, then the failures with their errors."""
        lines = [f"{len(self.outcomes)} case(s) -> {self.output_dir}: {len(self.written)} written, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed"]
        width = max([len(o.case_id) for o in self.outcomes] + [4])
        lines.append(f"{'case':<{width}}  {'status':<7}  detail")
        for o in self.outcomes:
            detail = o.detail if o.status == "failed" else "; ".join(
                t for t in (", ".join(p.name for p in o.outputs), o.detail) if t)
            lines.append(f"{o.case_id:<{width}}  {o.status:<7}  {detail}")
        if self.failed:
            lines.append(f"failed ({len(self.failed)}):")
            lines.extend(f"  {o.case_id}: {o.detail}" for o in self.failed)
        return "\n".join(lines)


def check_output_dir(output_dir: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Refuse an output folder that is a file, or equal to or inside an input folder.

    Returns:
        The resolved output folder.

    Raises:
        MedsegError: naming both folders.
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MedsegError(f"--output {out}: exists and is not a folder")
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            src = path.resolve()
            if out == src or src in out.parents:
                raise MedsegError(f"--output {out} is {'the' if out == src else 'inside the'} input folder {src}; "
                                  "write outputs to a folder outside the inputs")
    return out


def _unique_ids(cases: list[InferenceCase]) -> None:
    """Suffix repeated ids (``-2``, ``-3`` ...); compared case-insensitively for case-insensitive file systems."""
    seen: set[str] = set()
    for case in cases:
        base, n, candidate = case.case_id, 1, case.case_id
        while candidate.casefold() in seen:
            n += 1
            candidate = f"{base}-{n}"
        if candidate != case.case_id:
            logger.warning("two inputs are both named %r; the second is written as %r", base, candidate)
            case.case_id = candidate
        seen.add(candidate.casefold())


def _chosen(cases: list[InferenceCase], case_ids: Sequence[str], inputs: Sequence[str | Path]) -> list[InferenceCase]:
    """The cases whose ids are ``case_ids``; every id must be found."""
    wanted = set(case_ids)
    missing = sorted(wanted - {case.case_id for case in cases})
    if missing:
        raise MedsegError(f"{len(missing)} of the {len(wanted)} cases asked for are not in "
                          f"{[str(p) for p in inputs]}: {', '.join(missing[:5])}")
    return [case for case in cases if case.case_id in wanted]


def _message(err: BaseException, case: InferenceCase) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, MedsegError):
        text = f"{type(err).__name__}: {text} (input {case.source})"
    return redact(text, case.identifiers) if case.identifiers else text


@dataclass(frozen=True)
class _Written:
    """What writing one case did: files written, existing files kept, stale files removed."""

    written: list[Path]
    kept: list[Path]
    removed: list[Path]

    def note(self) -> str:
        notes = []
        if self.kept:
            notes.append(f"kept the existing {', '.join(p.name for p in self.kept)} (use --overwrite to replace)")
        if self.removed:
            notes.append(f"removed {', '.join(p.name for p in self.removed)} (not written by this run)")
        return "; ".join(notes)


def _finish(plan: CaseOutputs, options: InferenceOptions, write: Callable[[list[Path]], list[Path]]) -> _Written:
    """Write a case's planned files, keeping those that exist unless ``overwrite``; then drop its stale ones."""
    kept = [] if options.overwrite else plan.existing()
    written = write(kept) if len(kept) < len(plan.files) else []
    # Only once the new files are in place: a failing case keeps its previous, consistent set.
    removed = plan.remove_stale() if options.overwrite else []
    return _Written(written, kept, removed)


def _stages(run: CaseRun, plans: dict[str, CaseOutputs], options: InferenceOptions) -> Stages:
    """The task's steps of a case, its writing wrapped in the batch's keep / overwrite policy (:func:`_finish`)."""

    def finish(case: InferenceCase, computed: Any) -> _Written:
        plan = plans[case.case_id]
        return _finish(plan, options, lambda keep: run.write(case, computed, plan.paths, keep))

    return Stages(prepare=run.prepare, compute=run.compute, finish=finish, size=run.size)


def run_inference(model: Model, inputs: Sequence[str | Path], output_dir: str | Path,
                  options: InferenceOptions | None = None) -> BatchReport:
    """Segment every case of ``inputs`` into ``output_dir``.

    Args:
        model: from :func:`medseg.inference.model.load_inference_model`, 2D or 3D; its task
            (:func:`~medseg.inference.task.task_for`) says which inputs it segments and how.
        inputs: files and folders (see :mod:`medseg.inference.inputs`).
        output_dir: created if missing; must not be, or be inside, an input folder.
        options: how to run; defaults to :class:`InferenceOptions`.

    Returns:
        The report; ``report.ok`` is False when any case failed.

    Raises:
        MedsegError: bad options, a refused output folder, no cases, two cases whose outputs
            share a file, or an output that would overwrite an input file (all before the
            network runs or anything is written). Per-case errors are reported, not raised.
    """
    options = options or InferenceOptions()
    check_options(options)
    use_fast_gzip()  # decoding is most of reading a case
    task = task_for(model)
    task.check_options(options)
    out = check_output_dir(output_dir, inputs)
    cases = task.list_cases(inputs)
    if not cases:
        raise MedsegError(f"no cases found in {[str(p) for p in inputs]}")
    _unique_ids(cases)
    if options.case_ids is not None:
        cases = _chosen(cases, options.case_ids, inputs)
    # Every case's files, planned together: a clash stops the batch before anything runs or is written.
    sources = {p.resolve() for case in cases if case.kind in ("nifti", "image") for p in case.images}
    plans = plan_outputs(cases, out, files=lambda case, folder: task.case_files(case, folder, options),
                         overwrite=options.overwrite, inputs=sources)
    if options.num_parts > 1:  # after the whole batch's plan, so that no two parts can write one file
        cases = select_part(cases, options.num_parts, options.part_id)
        logger.info("part %d of %d: %d case(s)", options.part_id + 1, options.num_parts, len(cases))
    out.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write (SIGKILL, power loss) left its hidden temporary files; only those of
    # processes that no longer run are removed (medseg.utils.atomic.remove_partial_files).
    for stale in remove_partial_files(out):
        logger.warning("removed %s, left by an interrupted run", stale)
    run = task.start(cases, options)
    by_id: dict[str, CaseOutcome] = {}
    todo = []
    for case in cases:
        plan = plans[case.case_id]
        if not options.overwrite and case.problem is None and all(p.exists() for p in plan.files):
            by_id[case.case_id] = CaseOutcome(case.case_id, "skipped", plan.source, "outputs exist (use --overwrite)",
                                              plan.files)
        else:
            todo.append(case)
    # disable=None: drawn on a terminal only, like the rest of the CLI's progress output.
    bar = tqdm(total=len(todo), desc="medseg infer", unit="case", file=sys.stderr,
               disable=None if options.progress else True)

    def report(case: InferenceCase, result: _Written | BaseException, seconds: float) -> None:
        source = plans[case.case_id].source
        if isinstance(result, BaseException):  # isolation: one bad case must not stop the batch
            message = _message(result, case)
            logger.debug("case %s failed: %s", case.case_id, message)
            by_id[case.case_id] = CaseOutcome(case.case_id, "failed", source, message, seconds=seconds)
        elif not result.written:  # its files appeared while the batch ran
            by_id[case.case_id] = CaseOutcome(case.case_id, "skipped", source, "outputs exist (use --overwrite)",
                                              result.kept, seconds)
        else:
            by_id[case.case_id] = CaseOutcome(case.case_id, "written", source, result.note(), result.written,
                                              seconds)
        bar.set_postfix_str(case.case_id, refresh=False)
        bar.update()

    # Where the task allows it, the next case is read and the previous one written while the
    # network runs (medseg.inference.pipeline).
    run_stages(todo, _stages(run, plans, options), report, overlap=options.pipelined and task.overlap,
               large=options.cpu_threshold, readers=run.readers)
    bar.close()
    return BatchReport(output_dir=out, outcomes=[by_id[case.case_id] for case in cases])

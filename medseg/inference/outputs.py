"""Plan every output file of a batch before anything runs, so no two cases share a name.

Output names are built from case ids with suffixes (``<id>_prob.nii.gz``, 2D
``<id>_overlay.png``), so the outputs of different cases can coincide: case ``scan``'s
probability map is case ``scan_prob``'s mask, and 2D ``lesion``'s overlay is
``lesion_overlay``'s mask. Writing both would silently replace one case's file with the
other's, and a rerun would then "skip" the case whose file was taken. :func:`plan_outputs`
therefore lists each case's files, given the options, and refuses the batch, naming both
inputs and the file, before the network runs or anything is written.

Each plan also holds every file a run of its case could write with any options
(:attr:`CaseOutputs.owned`). ``--overwrite`` replaces that whole set: files this run does
not write (a previous run's ``_prob`` and ``_uncertainty`` maps, say) are removed once the
new ones are in place (:meth:`CaseOutputs.remove_stale`), so no file from another run or
model is left beside the new mask. With ``--overwrite`` the owned sets must not overlap
either, since removing one case's stale file could delete another case's output.

Names must also fit the file system: a file name is at most ``NAME_MAX`` bytes (255 on
Linux file systems, counted in UTF-8), and the suffixes make an output's name longer than
its input's, so a legal 247-byte input name gives a 259-byte ``_uncertainty.nii.gz``. Such a
case fails here, before the network runs, naming its input and the output that is too long;
the other cases run. Names are not shortened: an output named after its input (the
``medseg evaluate`` pairing, the user's own scripts) is worth more than a run that goes on
under a name nobody asked for. (The writer's temporary names are shortened to fit, so every
name the file system allows can be written: :mod:`medseg.utils.atomic`.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.inference.inputs import InferenceCase
from medseg.privacy import redact
from medseg.utils.atomic import name_max

__all__ = ["CaseFiles", "CaseOutputs", "plan_outputs"]


@dataclass(frozen=True)
class CaseFiles:
    """The files one case could write, as its task names them (:meth:`medseg.inference.task.Task.case_files`).

    Attributes:
        paths: the task's paths object for its writer, e.g.
            :class:`~medseg.inference.writer.OutputPaths` (3D).
        writes: ``(what, path)`` of each file this run writes, e.g. ``("mask", .../scan.nii.gz)``.
        owned: ``(what, path)`` of each file any run could write for the case (``writes`` included).
    """

    paths: Any
    writes: tuple[tuple[str, Path], ...]
    owned: tuple[tuple[str, Path], ...]


@dataclass(frozen=True)
class CaseOutputs:
    """The output files of one case.

    Attributes:
        case_id: the case.
        source: its input, as messages may show it (patient identifiers redacted).
        paths: the paths object of its task's writer (:attr:`CaseFiles.paths`).
        writes: ``(what, path)`` of each file this run writes, e.g. ``("mask", .../scan.nii.gz)``.
        owned: ``(what, path)`` of each file any run could write for the case (``writes`` included).
    """

    case_id: str
    source: str
    paths: Any
    writes: tuple[tuple[str, Path], ...]
    owned: tuple[tuple[str, Path], ...]

    @property
    def files(self) -> list[Path]:
        """The files this run writes."""
        return [path for _, path in self.writes]

    @property
    def stale(self) -> list[Path]:
        """The case's files that this run does not write."""
        wanted = set(self.files)
        return [path for _, path in self.owned if path not in wanted]

    def existing(self) -> list[Path]:
        """The files of :attr:`files` that exist now."""
        return [path for path in self.files if _exists(path)]

    def remove_stale(self) -> list[Path]:
        """Delete the case's files that this run did not write (``--overwrite``).

        Returns:
            The files removed.
        """
        removed = []
        for path in self.stale:
            if path.is_symlink() or path.exists():
                path.unlink()
                removed.append(path)
        return removed


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # ENAMETOOLONG: a name the plan refused, which cannot exist
        return False


def _outputs(case: InferenceCase, out: Path, files: Callable[[InferenceCase, Path], CaseFiles]) -> CaseOutputs:
    source = redact(str(case.source), case.identifiers) if case.identifiers else str(case.source)
    listed = files(case, out)
    return CaseOutputs(case.case_id, source, listed.paths, listed.writes, listed.owned)


def _shown(name: str, keep: int = 24) -> str:
    return name if len(name) <= 2 * keep + 1 else f"{name[:keep]}…{name[-keep:]}"


def _name_problem(plan: CaseOutputs, limit: int) -> str | None:
    """Why some file ``plan`` writes has a name longer than ``limit`` bytes, or ``None``."""
    longest = max(plan.writes, key=lambda item: len(os.fsencode(item[1].name)))
    what, path = longest
    size = len(os.fsencode(path.name))
    if size <= limit:
        return None
    extra = size - len(os.fsencode(plan.case_id))
    return (f"{plan.source}: output name too long (its {what} {_shown(path.name)} would be a {size}-byte file name; "
            f"the file system allows {limit} bytes (NAME_MAX, UTF-8); rename the input so that its case id "
            f"{_shown(plan.case_id)} has at most {limit - extra} bytes)")


def _key(path: Path) -> str:
    # Case-insensitive, as the ids are made unique: outputs may land on a case-insensitive file system.
    return str(path).casefold()


def plan_outputs(cases: Sequence[InferenceCase], out: Path, *, files: Callable[[InferenceCase, Path], CaseFiles],
                 overwrite: bool, inputs: Iterable[Path] = ()) -> dict[str, CaseOutputs]:
    """List every case's output files and refuse a batch in which two cases would share one.

    A case with an output name longer than the file system allows (``NAME_MAX``) gets its
    :attr:`~medseg.inference.inputs.InferenceCase.problem` set, naming its input and that
    output: it fails before anything is read, and the others run.

    Args:
        cases: the batch, with unique ids.
        out: the resolved output folder.
        files: a case's files in ``out`` given the run's options, from its task
            (:meth:`medseg.inference.task.Task.case_files`: 3D ``.nii.gz``, 2D ``.png``).
        overwrite: each case's whole owned set is replaced, so those sets must not overlap.
        inputs: resolved input files, which no output may replace.

    Returns:
        The plan of each case, by case id.

    Raises:
        MedsegError: two cases have the same id or would write (with ``overwrite``: write or
            remove) the same file, naming both inputs and the file; or an output would
            replace an input file.
    """
    plans: dict[str, CaseOutputs] = {}
    claimed: dict[str, str] = {}
    ids: dict[str, CaseOutputs] = {}
    sources = {_key(Path(p)): Path(p) for p in inputs}
    limit = name_max(out)
    for case in cases:
        plan = _outputs(case, out, files)
        other = ids.get(case.case_id.casefold())
        if other is not None:
            raise MedsegError(f"--output {out}: inputs {other.source} and {plan.source} are both case "
                              f"{case.case_id!r}; rename one of them")
        ids[case.case_id.casefold()] = plan
        plans[case.case_id] = plan
        too_long = _name_problem(plan, limit)
        if too_long is not None:
            if case.problem is None:
                case.problem = too_long  # it fails before it is read; its files are never written
            continue
        written = set(plan.files)
        for what, path in plan.owned if overwrite else plan.writes:
            if _key(path) in sources:
                raise MedsegError(f"--output {out}: {path.name} would overwrite the input file {sources[_key(path)]}")
            removal = "" if path in written else "; --overwrite removes it, as this run does not write it"
            claim = f"the {what} of case {plan.case_id!r} (input {plan.source}{removal})"
            if _key(path) in claimed:
                raise MedsegError(f"--output {out}: two cases would write {path.name}: it is {claimed[_key(path)]} "
                                  f"and {claim}; rename one of the inputs or write them to separate folders")
            claimed[_key(path)] = claim
        plans[case.case_id] = plan
    return plans

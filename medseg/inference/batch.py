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

3D cases are pipelined (:mod:`medseg.inference.pipeline`): the next case is read and the
previous one written while the network runs on the current one.

Each 3D case's mask is written in the label convention :func:`~medseg.inference.postprocess.choose_convention`
picks for it, before anything runs: ``labels`` if given (an impossible one stops the batch
there), else the input's own (a BraTS 2023 folder gets 0/1/2/3), else the model's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from medseg.data.conventions import LabelConvention
from medseg.errors import MedsegError
from medseg.inference.dicom_seg import dicom_seg_writer
from medseg.inference.geometry import DicomReference
from medseg.inference.inputs import InferenceCase, expand_image_inputs, expand_inputs
from medseg.inference.model import InferenceModel
from medseg.inference.options import InferenceOptions, check_options
from medseg.inference.outputs import CaseOutputs, plan_outputs
from medseg.inference.pipeline import Stages, run_stages
from medseg.inference.planar import PlanarModel, PlanarOutputs, PlanarPredictor, infer_image
from medseg.inference.postprocess import choose_convention, probabilities_to_labels, uncertainty_map
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import PreparedCase, prepare_case, restore_geometry
from medseg.inference.writer import OutputPaths, write_outputs
from medseg.privacy import redact
from medseg.utils.atomic import remove_partial_files

__all__ = ["BatchReport", "CaseOutcome", "check_output_dir", "infer_case", "infer_planar_case", "predict_case",
           "run_inference", "write_case"]

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


def predict_case(prepared: PreparedCase, model: InferenceModel, predictor: SlidingWindowPredictor,
                 options: InferenceOptions) -> torch.Tensor:
    """Run the network on a prepared case.

    Returns:
        Its maps on the preprocessed grid: the probabilities, followed by the uncertainty map
        when ``options.save_prob`` is set.
    """
    prediction = predictor.predict(prepared.image)
    maps = [prediction.mean]
    if options.save_prob:
        maps.append(uncertainty_map(prediction.mean, prediction.variance, options.uncertainty, model.task))
    return torch.cat(maps) if len(maps) > 1 else maps[0]


def _labelled_as(model: InferenceModel, convention: LabelConvention | None) -> InferenceModel:
    """The model as the DICOM-SEG writer sees it when its masks hold ``convention``'s values (segments and meanings)."""
    if convention is None or convention.name == model.convention:
        return model
    return dataclasses.replace(model, convention=convention.name, label_values=tuple(sorted(convention.valid_values)),
                               label_names={v: n for v, n in convention.labels.items() if v != 0})


def write_case(prepared: PreparedCase, maps: torch.Tensor, model: InferenceModel, paths: OutputPaths,
               options: InferenceOptions, keep: Collection[Path] = (),
               convention: LabelConvention | None = None) -> list[Path]:
    """Map a case's maps back to its input geometry and write its outputs as one set.

    Args:
        keep: existing outputs to leave as they are (not written).
        convention: the label convention the mask is written in
            (:func:`~medseg.inference.postprocess.choose_convention`); ``None``: the model's.

    Returns:
        The files written.
    """
    restored = restore_geometry(maps, prepared)
    del maps
    probabilities = restored[: model.out_channels]
    labels = probabilities_to_labels(probabilities, model, convention=convention)
    seg = None
    if options.dicom_seg and isinstance(prepared.reference, DicomReference) and paths.dicom_seg not in keep:
        seg = dicom_seg_writer(labels, prepared.reference, _labelled_as(model, convention))
    return write_outputs(
        prepared.reference, paths, labels,
        probabilities=probabilities if options.save_prob else None,
        uncertainty=restored[model.out_channels] if options.save_prob else None,
        output_names=model.output_names, dicom_seg=seg, keep=keep,
    )


def infer_case(case: InferenceCase, model: InferenceModel, predictor: SlidingWindowPredictor, paths: OutputPaths,
               options: InferenceOptions) -> list[Path]:
    """Segment one case and write its outputs in its input geometry (read, predict, write in turn).

    Returns:
        The files written.
    """
    convention = choose_convention(model, options.labels, case.convention)
    prepared = prepare_case(case, model)
    return write_case(prepared, predict_case(prepared, model, predictor, options), model, paths, options,
                      convention=convention)


def infer_planar_case(case: InferenceCase, predictor: PlanarPredictor, paths: PlanarOutputs,
                      options: InferenceOptions, keep: Collection[Path] = ()) -> list[Path]:
    """Segment one 2D image and write its mask and overlay at the image's own width and height.

    Args:
        keep: existing outputs to leave as they are (not written).

    Returns:
        The files written.
    """
    if case.problem:
        raise MedsegError(case.problem)  # already names the file and the rule
    return infer_image(case.images[0], predictor, paths, save_prob=options.save_prob, keep=keep)


def _case_conventions(model: InferenceModel, cases: Sequence[InferenceCase], forced: str | None
                      ) -> dict[str, LabelConvention | None]:
    """The label convention of each case's mask, by case id; says once which conventions the batch writes."""
    chosen = {case.case_id: choose_convention(model, forced, case.convention) for case in cases}
    written = Counter(c.name if c is not None else model.convention or "the model's" for c in chosen.values())
    how = "--labels" if forced else "each input's own, else the model's"
    logger.info("label values: %s (%s)", ", ".join(f"{name} for {n} case(s)" for name, n in written.items()), how)
    ignored = sorted({case.convention.name for case in cases if case.convention is not None and forced is None
                      and case.convention.is_region_based and chosen[case.case_id] is None})
    for name in ignored:
        logger.warning("inputs in %s labels get the model's %s values: its outputs do not map to %s", name,
                       model.convention or "unnamed", name)
    return chosen


def _readers(options: InferenceOptions, on_cpu: bool) -> int:
    if options.readers is not None:
        return options.readers
    return 1 if on_cpu else min(4, os.cpu_count() or 1)


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


def run_inference(model: InferenceModel | PlanarModel, inputs: Sequence[str | Path], output_dir: str | Path,
                  options: InferenceOptions | None = None) -> BatchReport:
    """Segment every case of ``inputs`` into ``output_dir``.

    Args:
        model: from :func:`medseg.inference.model.load_inference_model`; a 2D model
            (:class:`~medseg.inference.planar.PlanarModel`) segments image files.
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
    check_options(model, options)
    planar = isinstance(model, PlanarModel)
    out = check_output_dir(output_dir, inputs)
    cases = expand_image_inputs(inputs) if planar else expand_inputs(inputs, model)  # type: ignore[arg-type]
    if not cases:
        raise MedsegError(f"no cases found in {[str(p) for p in inputs]}")
    _unique_ids(cases)
    # Every case's files, planned together: a clash stops the batch before anything runs or is written.
    sources = {p.resolve() for case in cases if case.kind in ("nifti", "image") for p in case.images}
    plans = plan_outputs(cases, out, planar=planar, save_prob=options.save_prob, dicom_seg=options.dicom_seg,
                         overwrite=options.overwrite, inputs=sources)
    out.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write (SIGKILL, power loss) left its hidden temporary files; only those of
    # processes that no longer run are removed (medseg.utils.atomic.remove_partial_files).
    for stale in remove_partial_files(out):
        logger.warning("removed %s, left by an interrupted run", stale)
    if isinstance(model, PlanarModel):
        planar_predictor = PlanarPredictor(model, options.device, multiscale=options.multiscale, tta=options.tta)
        stages = Stages(prepare=lambda case: case,
                        compute=lambda case, _: case,
                        finish=lambda case, _: _finish(plans[case.case_id], options, lambda keep: infer_planar_case(
                            case, planar_predictor, plans[case.case_id].paths, options, keep)),
                        size=lambda _: 0)
        readers = 1
    else:
        conventions = _case_conventions(model, cases, options.labels)
        predictor = SlidingWindowPredictor(
            model.network, model.roi_size, model.sw_batch_size, model.overlap, activation=model.activation,
            device=options.device, tta=options.tta,
            track_variance=options.save_prob and options.uncertainty == "variance",
            cpu_threshold=options.cpu_threshold)
        stages = Stages(prepare=lambda case: prepare_case(case, model),
                        # the prepared case goes on to the writer, which inverts its transforms
                        compute=lambda case, prepared: (prepared, predict_case(prepared, model, predictor, options)),
                        finish=lambda case, computed: _finish(plans[case.case_id], options, lambda keep: write_case(
                            *computed, model, plans[case.case_id].paths, options, keep,
                            convention=conventions[case.case_id])),
                        size=lambda prepared: prepared.image[0].numel())
        readers = _readers(options, on_cpu=predictor.device.type != "cuda")
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

    # 3D: read the next case and write the previous one while the network runs (medseg.inference.pipeline).
    run_stages(todo, stages, report, overlap=options.pipelined and not planar, large=options.cpu_threshold,
               readers=readers)
    bar.close()
    return BatchReport(output_dir=out, outcomes=[by_id[case.case_id] for case in cases])

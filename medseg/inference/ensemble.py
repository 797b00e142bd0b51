"""Ensembles: several trained 3D models segment each case together, their probabilities averaged.

``medseg infer A B C --input ... --output ...`` (output bundles, or a ``medseg cv`` folder, which
stands for its folds) runs every member on each case with the member's *own* preprocessing
(spacing, plan, normalisation, sliding window) and maps its probabilities back to the input's
grid before averaging, so members may differ in network, window and plan. The mean is turned
into labels once, with the members' shared post-processing, and written as one model would
write it.

Members must agree on what they segment: the task (regions or classes), the output names, the
label values and convention, and the input channels; the first that differs is named.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.inference.inputs import InferenceCase, expand_inputs
from medseg.inference.model import InferenceModel
from medseg.inference.options import InferenceOptions
from medseg.inference.outputs import CaseFiles
from medseg.inference.postprocess import forced_convention, uncertainty_map
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import prepare_case, restore_geometry
from medseg.inference.volume_task import VolumeTask, case_conventions, predict_case, write_restored
from medseg.inference.writer import OutputPaths

__all__ = ["MEMBERS_ID", "EnsembleModel", "EnsembleTask", "bundle_members", "check_members", "ensemble_members",
           "preprocessing_key"]

logger = logging.getLogger("medseg.infer")
_SAME = ("task", "output_names", "label_values", "convention", "in_channels", "channel_names")


@dataclass(frozen=True)
class EnsembleModel:
    """The members of an ensemble, checked to segment the same thing (:func:`check_members`).

    Attributes:
        members: the 3D models.
        sources: where each came from (its bundle folder), for messages.
    """

    members: tuple[InferenceModel, ...]
    sources: tuple[str, ...]

    @property
    def first(self) -> InferenceModel:
        """The member whose labels, names and post-processing the ensemble writes with."""
        return self.members[0]


#: The config id of an ensemble bundle's ``configs/inference.json`` that lists its member folders.
MEMBERS_ID = "ensemble_members"
MAX_MEMBERS = 64


def preprocessing_key(model: InferenceModel) -> str:
    """What a member's preprocessing depends on (its spacing and plan): members with equal keys prepare a case alike."""
    return json.dumps([model.pixdim, model.planned], sort_keys=True, default=str)


def bundle_members(path: str | Path) -> list[Path] | None:
    """The member folders of an ensemble bundle (``medseg export --format ensemble``), or ``None`` for another folder.

    The list is read as plain JSON from ``configs/inference.json`` (never executed) and
    checked: relative folders inside the bundle, each holding ``models/model.pt``.

    Raises:
        MedsegError: naming the file, for a list that breaks these rules.
    """
    config = Path(path) / "configs" / "inference.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours to judge here: loading the bundle as one model says what is wrong
    if not isinstance(data, dict) or MEMBERS_ID not in data:
        return None
    listed = data[MEMBERS_ID]
    if not (isinstance(listed, list) and 2 <= len(listed) <= MAX_MEMBERS and all(isinstance(m, str) for m in listed)):
        raise MedsegError(f"{config}: {MEMBERS_ID} must list 2 to {MAX_MEMBERS} member folders, got {listed!r}")
    root = Path(path).resolve()
    members = []
    for name in listed:
        folder = (root / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not folder.is_relative_to(root):
            raise MedsegError(f"{config}: member {name!r} is not a folder inside the bundle")
        if not (folder / "models" / "model.pt").is_file():
            raise MedsegError(f"{config}: member {name!r} has no models/model.pt")
        members.append(folder)
    return members


def ensemble_members(paths: Sequence[str | Path]) -> list[Path]:
    """The output bundles of ``paths``: a ``medseg cv`` folder (``cv.json``) stands for its folds, in order,
    and an ensemble bundle for its members."""
    found: list[Path] = []
    for path in map(Path, paths):
        state = path / "cv.json"
        members = bundle_members(path) if path.is_dir() else None
        if members is not None:
            found += members
        elif state.is_file():
            folds = int(json.loads(state.read_text()).get("options", {}).get("folds", 0))
            missing = [k for k in range(folds) if not (path / f"fold_{k}" / "models" / "model.pt").is_file()]
            if folds < 1 or missing:
                raise MedsegError(f"{path}: a cross-validation whose folds {missing or '?'} have no trained model; "
                                  "finish it first (run medseg cv again on it)")
            found += [path / f"fold_{k}" for k in range(folds)]
        else:
            found.append(path)
    return found


def check_members(members: Sequence[Any], sources: Sequence[str]) -> EnsembleModel:
    """An :class:`EnsembleModel` of ``members``, or an error naming the first member that differs.

    Raises:
        MedsegError: fewer than two members, a 2D member, or members that disagree on what
            they segment (task, outputs, label values and convention, input channels).
    """
    if len(members) < 2:
        raise MedsegError("an ensemble needs at least two members")
    for model, source in zip(members, sources):
        if not isinstance(model, InferenceModel):
            raise MedsegError(f"{source}: a 2D model; ensembles are of 3D models")
    first = members[0]
    for model, source in zip(members[1:], sources[1:]):
        for name in _SAME:
            if getattr(model, name) != getattr(first, name):
                raise MedsegError(f"{source} cannot join an ensemble with {sources[0]}: its {name} "
                                  f"{getattr(model, name)!r} differs from {getattr(first, name)!r}")
    posts = {json.dumps(m.postprocessing, sort_keys=True) for m in members}
    if len(posts) > 1:
        logger.warning("the ensemble's members record different post-processing; none is applied")
        members = [dataclasses.replace(m, postprocessing=None) for m in members]
    return EnsembleModel(tuple(members), tuple(str(s) for s in sources))


class EnsembleRun:
    """One batch's cases through every member; see the module docstring."""

    def __init__(self, model: EnsembleModel, cases: Sequence[InferenceCase], options: InferenceOptions) -> None:
        self.model = model
        self.options = options
        self.conventions = case_conventions(model.first, cases, options.labels)
        self.predictors = [SlidingWindowPredictor(
            m.network, m.roi_size, m.sw_batch_size, m.overlap, activation=m.activation, device=options.device,
            tta=options.tta, mirror_axes=m.tta_axes, mode=m.blend_mode, cpu_threshold=options.cpu_threshold)
            for m in model.members]
        self.readers = 1

    def prepare(self, case: InferenceCase) -> InferenceCase:
        """Nothing yet: each member reads the case with its own preprocessing in :meth:`compute`."""
        return case

    def compute(self, case: InferenceCase, prepared: InferenceCase) -> tuple[Any, np.ndarray]:
        """The members' mean probabilities on the input's grid, and the geometry to write them in."""
        single = dataclasses.replace(self.options, save_prob=False)  # the uncertainty comes from the mean
        total: np.ndarray | None = None
        reference = None
        cached: dict[str, Any] = {}
        for member, predictor in zip(self.model.members, self.predictors):
            key = preprocessing_key(member)
            if key not in cached:  # members with the same preprocessing read the case once
                cached = {key: prepare_case(case, member)}
            ready = cached[key]
            probabilities = restore_geometry(predict_case(ready, member, predictor, single), ready)
            total = probabilities if total is None else total + probabilities
            reference = ready.reference
        return reference, np.asarray(total) / len(self.model.members)

    def write(self, case: InferenceCase, computed: tuple[Any, np.ndarray], paths: OutputPaths,
              keep: Collection[Path]) -> list[Path]:
        """Labels from the mean, the shared post-processing, and the outputs, as one model writes them."""
        reference, mean = computed
        first = self.model.first
        uncertainty = None
        if self.options.save_prob:
            uncertainty = uncertainty_map(torch.from_numpy(mean), None, "entropy", first.task)[0].numpy()
        return write_restored(reference, mean, uncertainty, first, paths, self.options, keep,
                              self.conventions[case.case_id])

    def size(self, prepared: InferenceCase) -> int:
        """Not known before reading: every case counts as small."""
        return 0


class EnsembleTask:
    """Segment volumes with an :class:`EnsembleModel` (one case at a time)."""

    overlap = False

    def __init__(self, model: EnsembleModel) -> None:
        self.model = model
        self._volume = VolumeTask(model.first)

    def check_options(self, options: InferenceOptions) -> None:
        """Refuse what an ensemble cannot do: 2D multiscale, and the TTA variance (the maps are averaged)."""
        if options.multiscale:
            raise MedsegError("--multiscale averages scales of 2D images; an ensemble is of 3D models")
        if options.save_prob and options.uncertainty == "variance":
            raise MedsegError("--uncertainty variance is not available for ensembles; use entropy")
        if options.labels is not None:
            forced_convention(self.model.first, options.labels)

    def list_cases(self, inputs: Sequence[str | Path]) -> list[InferenceCase]:
        """As one member lists them (the members share their input channels)."""
        return expand_inputs(inputs, self.model.first)

    def case_files(self, case: InferenceCase, out: Path, options: InferenceOptions) -> CaseFiles:
        """The files one 3D model writes."""
        return self._volume.case_files(case, out, options)

    def start(self, cases: Sequence[InferenceCase], options: InferenceOptions) -> EnsembleRun:
        """Make each member's predictor and choose each case's label convention."""
        return EnsembleRun(self.model, cases, options)

"""Out-of-fold predictions: a fold's best model segments the fold's own validation cases.

``medseg train BUNDLE --data DATA --fold K`` validates on fold K of the datalist's
deterministic folds (``medseg data list --folds N``: the same cases for the same seed and N)
and then writes ``OUT/oof/<case id>.nii.gz`` for each of fold K's cases, in the case's own
geometry, with ``medseg infer``'s pipeline (and ``<case id>_prob.nii.gz`` with
``save_prob``). Over the folds of a cross-validation every labelled case is predicted once,
by the one model that did not train on it: the predictions ``medseg cv`` scores and chooses
post-processing on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

__all__ = ["OOF_DIR", "fold_case_ids", "write_oof_predictions"]

OOF_DIR = "oof"
logger = logging.getLogger("medseg.train")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MedsegError(f"{path}: cannot be read as JSON ({err})") from err


def fold_case_ids(datalist: dict[str, Any], fold: int) -> list[str]:
    """The ids of the labelled cases in fold ``fold`` of a datalist (``medseg data list``)."""
    folds = int(datalist.get("num_folds", 0))
    if not 0 <= fold < folds:
        raise MedsegError(f"fold {fold} is not one of the datalist's {folds} folds (0 to {folds - 1})")
    return sorted(str(e["case_id"]) for e in datalist.get("training", []) if int(e.get("fold", -1)) == fold)


def write_oof_predictions(output_dir: str | Path, save_prob: bool = False, device: str = "auto",
                          overwrite: bool = False) -> Any:
    """Segment the validation cases of a trained fold with its best model into ``OUT/oof/``.

    Args:
        output_dir: the fold's output bundle (``configs/train.json`` records its ``fold``,
            ``datalist.json`` its cases and dataset folder).
        save_prob: also write the probability maps (``<id>_prob.nii.gz``), which ensembles of
            configurations are chosen on.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overwrite: replace existing predictions (a resumed fold writes them again).

    Returns:
        The :class:`~medseg.inference.batch.BatchReport`.

    Raises:
        MedsegError: the folder is not a trained output bundle, or a case failed.
    """
    from medseg.inference.batch import run_inference
    from medseg.inference.model import load_inference_model
    from medseg.inference.options import InferenceOptions

    out = Path(output_dir)
    config = _read_json(out / "configs" / "train.json")
    datalist = _read_json(out / "datalist.json")
    fold = config.get("fold")
    if type(fold) is not int:
        raise MedsegError(f"{out / 'configs' / 'train.json'}: its fold is {fold!r}, not a fold number")
    ids = fold_case_ids(datalist, fold)
    if not ids:
        raise MedsegError(f"{out / 'datalist.json'}: fold {fold} holds no case")
    root = datalist.get("root")
    if not isinstance(root, str) or not Path(root).is_dir():
        raise MedsegError(f"{out / 'datalist.json'}: the dataset folder {root!r} is not there")
    model = load_inference_model(out)
    options = InferenceOptions(device=device, save_prob=save_prob, overwrite=overwrite, progress=False,
                               case_ids=tuple(ids))
    logger.info("fold %d: out-of-fold predictions of its %d validation case(s) -> %s", fold, len(ids), out / OOF_DIR)
    report = run_inference(model, [root], out / OOF_DIR, options)
    if report.failed:
        raise MedsegError(f"fold {fold}: {len(report.failed)} out-of-fold case(s) failed:\n{report.format_summary()}")
    return report

"""Export an ensemble (trained bundles, or a ``medseg cv`` folder's folds) as one MONAI bundle; register it.

``medseg export A B ... --format ensemble --out ENSEMBLE`` writes::

    ENSEMBLE/
      configs/inference.json   MONAI config: python -m monai.bundle run --config_file ENSEMBLE/configs/inference.json
      configs/metadata.json    MONAI metadata; "medseg_ensemble" lists the members and their checkpoints' sha256
      members/member_K/        each member: models/model.pt and its plain inference settings
      docs/README.md

``medseg infer ENSEMBLE`` reads it as the ensemble of its members (:func:`medseg.inference.ensemble.bundle_members`),
and so does the bundle's own config (:mod:`medseg.inference.ensemble_bundle`): each member
keeps its own preprocessing, window and plan; their probabilities are averaged on each input's
grid; the members' shared post-processing is applied once.

With ``--register NAME`` the folder is logged to an MLflow run of its own (tagged with the
members' runs) and registered as one version of ``NAME``; ``medseg infer models:/NAME/V``
downloads the whole ensemble (:mod:`medseg.inference.sources`).

Nothing is written over: the folder must not exist; it is written beside itself and renamed
into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

__all__ = ["ENSEMBLE_FORMAT", "export_ensemble", "register_ensemble"]

ENSEMBLE_FORMAT = "medseg-ensemble/1"
_IMPORTS = ["$import os", "$import torch", "$import medseg", "$import medseg.engine.data",
            "$import medseg.inference.ensemble_bundle", "$import medseg.inference.preprocess",
            "$import medseg.transforms.case_names"]
# What a member's metadata lends the ensemble's (plain values that describe the data, not a run).
_METADATA_KEYS = ("schema", "task", "authors", "copyright", "data_source", "data_type", "image_classes",
                  "label_classes", "pred_classes", "intended_use", "references", "network_data_format")


def _member_settings(model: Any) -> dict[str, Any]:
    """The member's effective inference settings, as plain JSON ``medseg infer`` reads."""
    return {"roi_size": list(model.roi_size), "sw_batch_size": model.sw_batch_size, "sw_overlap": model.overlap}


def inference_config(bundle_root: Path, members: Sequence[str], first: Any, postprocessing: Any) -> dict[str, Any]:
    """The ensemble bundle's ``configs/inference.json`` (a MONAI ``SupervisedEvaluator``)."""
    convention = first.convention if first.task == "regions" else None
    return {
        "imports": _IMPORTS,
        "bundle_root": str(bundle_root),
        "ensemble_members": list(members),
        "dataset_dir": "data/my_dataset",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "sw_batch_size": None,
        "sw_overlap": None,
        "amp": True,
        "label_postprocessing": postprocessing,
        "label_convention": convention,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "ensemble": "$medseg.inference.ensemble_bundle.load_ensemble(@bundle_root)",
        "network_def": "$medseg.inference.ensemble_bundle.EnsembleNetwork(@ensemble)",
        "network": "$@network_def.to(@device)",
        "datalist": "$medseg.engine.data.inference_datalist(@dataset_dir)",
        "preprocessing": "$medseg.inference.preprocess.loading_transforms()",
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 2},
        "inferer": {"_target_": "medseg.inference.ensemble_bundle.EnsembleInferer", "ensemble": "@ensemble",
                    "device": "@device", "sw_batch_size": "@sw_batch_size", "overlap": "@sw_overlap"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "medseg.inference.ensemble_bundle.EnsembleLabelsd", "keys": "pred", "ensemble": "@ensemble"},
            {"_target_": "medseg.postprocessing.transform.PostprocessLabelsd", "keys": "pred",
             "postprocessing": "@label_postprocessing", "convention": "@label_convention"},
            {"_target_": "medseg.transforms.case_names.CaseIdToMetad", "keys": "pred"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "output_dtype": "$torch.uint8", "resample": False, "separate_folder": False, "squeeze_end_dims": True,
             "output_name_formatter": "$medseg.transforms.case_names.case_file_name"},
        ]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$medseg.engine.data.require_dataset(@datalist, @dataset_dir)", "$@evaluator.run()"],
        "finalize": [],
    }


def _metadata(folders: Sequence[Path], models: Sequence[Any], names: Sequence[str],
              postprocessing: Any) -> dict[str, Any]:
    """MONAI metadata: the first member's description of the data, and the members."""
    import monai
    import numpy
    import torch

    import medseg
    from medseg.tracking.manifest import sha256_file

    source = folders[0] / "configs" / "metadata.json"
    try:
        first = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedsegError(f"{source}: not readable JSON ({err})") from err
    meta = {k: first[k] for k in _METADATA_KEYS if isinstance(first, dict) and k in first}
    members = []
    for folder, model, name in zip(folders, models, names):
        training = {}
        try:
            training = json.loads((folder / "configs" / "metadata.json").read_text()).get("medseg_training") or {}
        except (OSError, ValueError, AttributeError):
            pass
        members.append({"folder": name, "source": folder.name, "network": model.network_name,
                        "sha256": sha256_file(model.checkpoint), "mlflow_run_id": training.get("mlflow_run_id"),
                        "best_metric": training.get("best_metric")})
    meta.update({
        "version": "0.1.0",
        "changelog": {"0.1.0": f"ensemble of {len(members)} medseg models"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__, "required_packages_version": {"medseg": medseg.__version__},
        "name": f"Ensemble of {len(members)} models",
        "description": "Each member segments the input with its own preprocessing and sliding window; their "
                       "probabilities, mapped back to the input's grid, are averaged and turned into labels once.",
        "medseg_ensemble": {"format": ENSEMBLE_FORMAT, "members": members, "postprocessing": postprocessing},
    })
    return meta


def _readme(names: Sequence[str], sources: Sequence[str]) -> str:
    rows = "\n".join(f"- `{n}`: from `{s}`" for n, s in zip(names, sources))
    return (f"# Ensemble of {len(names)} medseg models\n\nMembers (each `members/<name>/models/model.pt`):\n\n{rows}\n\n"
            "Segment with medseg:\n\n    medseg infer THIS_FOLDER --input SCANS --output MASKS\n\n"
            "or as a MONAI bundle (pass --bundle_root if the folder has moved since it was exported):\n\n"
            "    python -m monai.bundle run --config_file THIS_FOLDER/configs/inference.json \\\n"
            "        --dataset_dir SCANS --output_dir MASKS\n")


def export_ensemble(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write the ensemble of ``sources`` as one bundle at ``out`` (see the module docstring).

    Args:
        sources: output bundles, ``medseg cv`` folders (their folds) or ensemble bundles
            (their members); two members at least, segmenting the same thing.
        out: the new bundle folder; it must not exist.

    Returns:
        ``out``.

    Raises:
        MedsegError: ``out`` exists, or the members cannot form an ensemble (the first that
            differs is named).
    """
    from medseg.engine.trust import sign_bundle
    from medseg.inference.ensemble import check_members, ensemble_members
    from medseg.inference.model import load_inference_model

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise MedsegError(f"{out}: already exists; medseg export writes a new ensemble folder (choose another --out)")
    folders = ensemble_members(sources)
    models = [load_inference_model(f) for f in folders]
    ensemble = check_members(models, [str(f) for f in folders])
    postprocessing = ensemble.first.postprocessing  # None when the members record different ones
    names = [f"member_{k}" for k in range(len(folders))]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for folder, model, name in zip(folders, models, names):
            member = staging / "members" / name
            (member / "models").mkdir(parents=True)
            (member / "configs").mkdir()
            shutil.copyfile(model.checkpoint, member / "models" / "model.pt")
            (member / "configs" / "inference.json").write_text(json.dumps(_member_settings(model), indent=2) + "\n")
        (staging / "configs").mkdir()
        (staging / "docs").mkdir()
        config = inference_config(out.resolve(), [f"members/{n}" for n in names], ensemble.first, postprocessing)
        (staging / "configs" / "inference.json").write_text(json.dumps(config, indent=4) + "\n")
        meta = _metadata(folders, models, [f"members/{n}" for n in names], postprocessing)
        (staging / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        (staging / "docs" / "README.md").write_text(_readme(names, [f.name for f in folders]))
        logging_conf = folders[0] / "configs" / "logging.conf"
        if logging_conf.is_file():  # MONAI's bundle run reads configs/logging.conf when there is one
            shutil.copyfile(logging_conf, staging / "configs" / "logging.conf")
        os.rename(staging, out)  # fails, and replaces nothing, if a non-empty out appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sign_bundle(out)
    return out


def register_ensemble(bundle: str | os.PathLike[str], name: str, tracking_uri: str | None = None,
                      fallback: str | None = None, experiment: str = "medseg") -> tuple[str, str | None]:
    """Log an exported ensemble bundle to a new MLflow run and register it as one version of ``name``.

    The run is tagged with its members' runs (``medseg.ensemble_members``) and holds the
    bundle under the artifact path ``ensemble``; the registered version's source is that folder.

    Returns:
        The run id and the new version (``None`` when the server has not confirmed it yet).
    """
    from medseg.tracking import open_tracking

    bundle = Path(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["medseg_ensemble"]
    runs = [m["mlflow_run_id"] for m in meta["members"] if m.get("mlflow_run_id")]
    session = open_tracking(tracking_uri, experiment, fallback=fallback)
    run_id = session.start_run(f"ensemble-{name}", tags={"medseg.ensemble_members": ",".join(runs)[:5000],
                                                        "medseg.ensemble_size": len(meta["members"])})
    try:
        session.log_artifact(bundle, "ensemble")
        version = session.register_model(name, "ensemble", description=f"ensemble of {len(meta['members'])} models")
    except BaseException as err:
        session.end_run("FAILED", reason=f"{type(err).__name__}: {str(err)[:300]}")
        raise
    session.end_run("FINISHED")
    return run_id, version

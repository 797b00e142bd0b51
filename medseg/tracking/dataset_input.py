"""A training dataset as an MLflow dataset input, so the run's Datasets panel names it.

The manifest (``dataset/manifest.json``: every file's path, size and sha256) stays the record a
reproduction checks; the dataset input is how MLflow's UI and search show it: the folder's name,
its location as the source, and the manifest's hash as the digest, so two runs on the same data
show the same dataset.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Characters of the manifest's sha256 kept as the MLflow digest (the field is meant to be short).
DIGEST_LENGTH = 16


def log_dataset_input(client: Any, run_id: str, dataset_root: str | os.PathLike[str],
                      manifest: Mapping[str, Any], context: str = "training") -> None:
    """Log ``dataset_root`` as a dataset input of ``run_id``.

    Args:
        client: an ``MlflowClient``.
        run_id: the run.
        dataset_root: the dataset folder.
        manifest: its manifest (:func:`medseg.tracking.build_manifest`).
        context: the input's ``mlflow.data.context`` tag.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    root = Path(dataset_root).resolve()
    with warnings.catch_warnings():  # MLflow warns that a local path could be several kinds of source
        warnings.simplefilter("ignore")
        dataset = MetaDataset(source=resolve_dataset_source(str(root)), name=root.name,
                              digest=str(manifest["dataset_hash"])[:DIGEST_LENGTH])
    tags = [InputTag("mlflow.data.context", context), InputTag("medseg.dataset_files", str(manifest["count"])),
            InputTag("medseg.dataset_bytes", str(manifest["total_size"]))]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])

"""Patient identifiers read from a real DICOM series never reach a real MLflow server's params, tags or artifacts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pydicom
import pydicom.data
from mlflow import MlflowClient

from medseg.inference.dicom_io import scan_dicom_folder
from medseg.tracking import open_tracking
from medseg.tracking.phi import hash_identifier

CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def test_dicom_identifiers_are_hashed_in_mlflow(mlflow_server: str, tmp_path: Path) -> None:
    series = scan_dicom_folder(CT5N)
    assert len(series) == 1
    header = pydicom.dcmread(sorted(p for p in CT5N.iterdir() if p.is_file())[0], stop_before_pixels=True)
    identifiers = {"PatientName": str(header.PatientName), "PatientID": str(header.PatientID),
                   "PatientBirthDate": str(header.get("PatientBirthDate", "")) or "19700101"}
    assert identifiers["PatientName"] and identifiers["PatientID"]
    # What a user's config or a DICOM-derived tag would carry: the header values themselves.
    config = {"dataset_dir": str(CT5N), "max_epochs": 1,
              "dicom": {**identifiers, "Modality": str(header.Modality),
                        "SeriesInstanceUID": str(series[0].series_uid)}}
    session = open_tracking(mlflow_server, f"phi-{uuid.uuid4().hex[:8]}", runs_dir=tmp_path, strict=True)
    run_id = session.start_run("phi", tags={"PatientID": identifiers["PatientID"], "medseg.fold": 0})
    session.log_config(config)
    session.end_run("FINISHED")

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    logged = json.dumps({"params": run.data.params, "tags": run.data.tags})
    artifact = Path(client.download_artifacts(run_id, "config/resolved.json", str(tmp_path))).read_text()
    for key, value in identifiers.items():
        assert value not in logged and value not in artifact, key
        assert run.data.params[f"dicom.{key}"] == hash_identifier(value)
    assert run.data.tags["PatientID"] == hash_identifier(identifiers["PatientID"])
    assert run.data.params["dicom.Modality"] == str(header.Modality)  # other tags are kept

"""A DICOM series folder named after its patient: ``data check``, ``data list`` and ``infer`` name it alike
and never show the name.

Real series: copies of pydicom's CT series ``CT5N`` retagged with pydicom, in folders named
``<PatientName>_<PatientID>`` as PACS exports often are. ``medseg infer`` has always hashed
such a folder into ``series_<hash>``; ``data check`` and ``data list`` printed and wrote the
folder name. They now use the same naming function and the same list of identifiers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from rel_helpers import pydicom_series, single_channel_bundle

from medseg.cli.main import main
from medseg.privacy import PHI_KEYWORDS, patient_identifiers
from medseg.tracking.phi import PHI_KEYWORDS as TRACKING_PHI_KEYWORDS
from medseg.tracking.phi import is_phi_key

CT5N = pydicom_series("dicomdirtests", "98892001", "CT5N")
NAME, PATIENT_ID, BIRTH = "Zyxwv^Quentin", "31415926", "19210704"
SECRETS = ("Zyxwv", "Quentin", PATIENT_ID, BIRTH)


def _retag(folder: Path, series_uid: str | None = None) -> Path:
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PATIENT_ID, BIRTH
        if series_uid:
            ds.SeriesInstanceUID = series_uid
        ds.save_as(f)
    return folder


def _by_z(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with two series of one patient, both folders named after the patient; the second misses a slice."""
    root = tmp_path_factory.mktemp("phi") / "export"
    good = _retag(shutil.copytree(CT5N, root / f"{NAME}_{PATIENT_ID}"))
    broken = _retag(shutil.copytree(CT5N, root / f"{NAME.replace('^', ' ')} {PATIENT_ID} follow-up"),
                    series_uid=generate_uid(entropy_srcs=["medseg test follow-up"]))
    _by_z(broken)[2].unlink()
    return {"root": root, "good": good, "broken": broken}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return single_channel_bundle(tmp_path_factory.mktemp("bundle"))


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), (secret, text)


def test_one_list_of_identifiers_serves_tracking_and_dicom() -> None:
    assert TRACKING_PHI_KEYWORDS is PHI_KEYWORDS
    header = pydicom.dcmread(next(CT5N.iterdir()), stop_before_pixels=True)
    header.ReferringPhysicianName = "Ywxq^Hortensia"  # in the tracking list, and now read from headers too
    header.InstitutionName = "Qwertz Klinikum"
    found = patient_identifiers([header])
    expected = ("Doe^Peter", "Doe", "Peter", "98890234", "Hortensia", "Qwertz Klinikum", str(header.SeriesInstanceUID))
    for value in expected:
        assert value in found, value
    assert "Hortensia" not in repr(found) and "Hortensia" not in str(found)
    for keyword in ("ReferringPhysicianName", "InstitutionName", "SeriesInstanceUID", "PatientName"):
        assert is_phi_key(keyword), keyword
    assert is_phi_key("(0008,0090)")  # ReferringPhysicianName by tag number


def test_data_check_list_and_infer_name_a_patient_named_folder_alike_without_the_name(export, bundle, tmp_path,
                                                                                       capsys):
    root = export["root"]
    # data list: stdout, stderr (the broken series' warning) and the JSON
    datalist = tmp_path / "list.json"
    assert main(["data", "list", str(root), "--out", str(datalist)]) == 0
    out, err = capsys.readouterr()
    text = datalist.read_text()
    for shown in (out, err, text):
        _clean(shown)
    assert "missing slice" in err and "<redacted>" in err, err
    entries = json.loads(text)["testing"]
    ids = {e["case_id"] for e in entries}
    assert len(ids) == 2 and all(i.startswith("series_") for i in ids), ids
    assert all(e["SeriesInstanceUID"].startswith("sha256:") for e in entries)

    # data check: the broken series' row shows its case id
    assert main(["data", "check", str(root)]) == 1
    out, err = capsys.readouterr()
    _clean(out + err)
    row = next(line for line in out.splitlines() if "missing slice" in line)
    broken_id = row.split()[0]
    assert broken_id in ids, (row, ids)
    (good_id,) = ids - {broken_id}

    # infer: the same ids, for the written mask and for the failure
    out_dir = tmp_path / "out"
    assert main(["infer", str(bundle), "--input", str(root), "--output", str(out_dir), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    _clean(out + err)
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{good_id}.nii.gz"]
    assert any(line.startswith(broken_id) and "failed" in line for line in out.splitlines()), out


def test_a_patient_named_series_given_directly_is_listed_under_its_infer_id(export, bundle, tmp_path, capsys):
    series = export["good"]
    datalist = tmp_path / "list.json"
    assert main(["data", "list", str(series), "--out", str(datalist)]) == 0
    out, err = capsys.readouterr()
    text = datalist.read_text()
    _clean(out + err + text)
    (entry,) = json.loads(text)["testing"]
    out_dir = tmp_path / "out"
    assert main(["infer", str(bundle), "--input", str(series), "--output", str(out_dir), "--no-progress"]) == 0
    _clean(capsys.readouterr().out)
    assert [p.name for p in out_dir.iterdir()] == [f"{entry['case_id']}.nii.gz"]


def test_data_check_of_a_patient_named_series_given_directly(export, capsys):
    assert main(["data", "check", str(export["good"])]) == 0
    _clean("".join(capsys.readouterr()))

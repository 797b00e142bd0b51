"""scrub_phi: patient identifiers never reach MLflow params or tags."""

from __future__ import annotations

import hashlib

from medseg.tracking.phi import hash_identifier, is_phi_key, scrub_phi


def _expected(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def test_identifiers_are_hashed_case_insensitively_and_nested() -> None:
    header = {
        "PatientName": "Doe^John",
        "patientid": "MRN-0042",
        "dicom": {"PATIENT_BIRTH_DATE": "19700101", "Modality": "MR"},
        "cases": [{"PatientID": "A1", "label": "tumour"}, {"PatientID": "B2"}],
        "(0010,0020)": "MRN-7",
        "spacing": [1.0, 1.0, 1.0],
        "patient_count": 12,
    }
    clean = scrub_phi(header)
    assert clean["PatientName"] == _expected("Doe^John")
    assert clean["patientid"] == _expected("MRN-0042")
    assert clean["dicom"] == {"PATIENT_BIRTH_DATE": _expected("19700101"), "Modality": "MR"}
    assert clean["cases"] == [
        {"PatientID": _expected("A1"), "label": "tumour"},
        {"PatientID": _expected("B2")},
    ]
    assert clean["(0010,0020)"] == _expected("MRN-7")
    assert clean["spacing"] == [1.0, 1.0, 1.0]
    assert clean["patient_count"] == 12
    assert header["PatientName"] == "Doe^John"  # input untouched
    flat = repr(clean)
    for secret in ("Doe^John", "MRN-0042", "19700101", "A1'", "MRN-7"):
        assert secret not in flat


def test_flattened_keys_structured_values_none_and_idempotence() -> None:
    assert is_phi_key("data.dicom.PatientID")
    assert is_phi_key("tags/PatientBirthDate")
    assert not is_phi_key("patient_count")
    assert not is_phi_key(10)
    clean = scrub_phi({"data.PatientName": {"Alphabetic": "Doe^Jane"}, "PatientID": None})
    assert clean["data.PatientName"].startswith("sha256:") and len(clean["data.PatientName"]) == 23
    assert clean["PatientID"] is None
    assert scrub_phi(clean) == clean
    assert hash_identifier(12345) == _expected("12345")

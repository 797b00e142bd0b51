"""Keep DICOM patient identifiers out of MLflow: replace them with a sha256 prefix.

Configs, case lists and DICOM headers can carry identifiers (``PatientName``,
``PatientID``, ...). MLflow params and tags are visible to everyone who can open the
tracking server, so every mapping that reaches params or tags goes through
:func:`scrub_phi` first. The hash is unsalted so that the same identifier gives the same
value across runs (useful to see that two runs used the same patient); the price is that
a short, guessable identifier can be recovered by brute force, so do not treat the hash
as de-identification for sharing outside the team.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# Names from the DICOM PS3.15 basic de-identification profile that identify a patient,
# a study or a person involved with it. Compared after lowercasing and removing
# separators, so ``patient_id``, ``PatientID`` and ``patient-id`` all match.
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        "patientname",
        "patientid",
        "patientbirthdate",
        "patientbirthtime",
        "patientbirthname",
        "patientaddress",
        "patienttelephonenumbers",
        "patientmotherbirthname",
        "otherpatientids",
        "otherpatientidssequence",
        "otherpatientnames",
        "issuerofpatientid",
        "medicalrecordlocator",
        "accessionnumber",
        "referringphysicianname",
        "performingphysicianname",
        "operatorsname",
        "physiciansofrecord",
        "nameofphysiciansreadingstudy",
        "requestingphysician",
        "institutionname",
        "institutionaddress",
        "studyid",
        "studyinstanceuid",
        "seriesinstanceuid",
        "sopinstanceuid",
        "militaryrank",
        "ethnicgroup",
        "regionofresidence",
    }
)

# The same attributes by DICOM tag number, e.g. ``(0010,0010)`` or ``00100020``.
PHI_TAG_NUMBERS: frozenset[str] = frozenset(
    {"00100010", "00100020", "00100030", "00100032", "00101000", "00101001", "00101040", "00080050"}
)

HASH_PREFIX = "sha256:"
_HASH_CHARS = 16
_NON_ALNUM = re.compile(r"[^0-9a-z]")


def is_phi_key(key: object) -> bool:
    """Tell whether a mapping key names a patient identifier.

    Only the last component of a dotted or slashed key counts, so the flattened
    parameter name ``data.dicom.PatientID`` matches while ``patient_count`` does not.

    Args:
        key: a key of any type; non-strings never match.

    Returns:
        ``True`` when the key (case-insensitive, separators ignored) is a PHI keyword
        or a PHI DICOM tag number.
    """
    if not isinstance(key, str):
        return False
    last = re.split(r"[./]", key)[-1]
    norm = _NON_ALNUM.sub("", last.lower())
    return norm in PHI_KEYWORDS or norm in PHI_TAG_NUMBERS


def hash_identifier(value: Any) -> str:
    """Return ``sha256:<16 hex chars>`` for a value, hashing its text form.

    Mappings and lists are hashed as canonical JSON so that equal structures hash alike.

    Args:
        value: the identifier (string, number, pydicom ``PersonName``, mapping...).

    Returns:
        The hash string; values that are already hashed are returned unchanged.
    """
    if isinstance(value, str) and value.startswith(HASH_PREFIX):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return HASH_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]


def scrub_phi(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``mapping`` whose patient identifiers are replaced by hashes.

    Nested mappings and lists are walked; the value under an identifying key is hashed
    whole (even if it is itself a mapping, e.g. a PersonName with ``Alphabetic``).
    ``None`` stays ``None``. The input is not modified.

    Args:
        mapping: any nested config, tag or header mapping.

    Returns:
        A new dict with the same structure.

    Example:
        >>> scrub_phi({"dicom": {"PatientName": "Doe^John"}})["dicom"]["PatientName"][:7]
        'sha256:'
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"scrub_phi expects a mapping, got {type(mapping).__name__}")
    return {key: _scrub_value(key, value) for key, value in mapping.items()}


def _scrub_value(key: object, value: Any) -> Any:
    if is_phi_key(key):
        return None if value is None else hash_identifier(value)
    if isinstance(value, Mapping):
        return {k: _scrub_value(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_scrub_value(None, item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value

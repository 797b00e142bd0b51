"""Patient identifiers: the one list of them, and the scrubbers that keep them in.

Every place where text built from inputs leaves medseg (file names, messages, logs,
datalists, MLflow params and tags) uses this module, so that one list decides what a
patient identifier is:

* :data:`PHI_DICOM_KEYWORDS`: the DICOM attributes that identify a patient, a study or a
  person involved with it (the DICOM PS3.15 basic de-identification profile);
* :func:`patient_identifiers`: their values in a set of DICOM headers, to be kept out of
  names and messages with :func:`redact`;
* :func:`is_phi_key` / :func:`scrub_phi`: the same attributes as keys of a mapping (a config,
  a tag dictionary), whose values are replaced by :func:`hash_identifier`;
* :func:`safe_case_id` and :func:`dicom_case_id`: the case id of an input, which names its
  output files and every line about it. ``medseg infer``, ``medseg data check`` and
  ``medseg data list`` all name a DICOM series with :func:`dicom_case_id`.

The hash is unsalted so that the same identifier gives the same value across runs (useful
to see that two runs used the same patient); the price is that a short, guessable
identifier can be recovered by brute force, so do not treat it as de-identification for
sharing outside the team.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any

from medseg.errors import InvalidTypeError

__all__ = ["HASH_PREFIX", "PHI_DICOM_KEYWORDS", "PHI_KEYWORDS", "PHI_TAG_NUMBERS", "PatientIdentifiers",
           "dicom_case_id", "hash_identifier", "is_phi_key", "patient_identifiers", "redact", "safe_case_id",
           "scrub_phi"]

# DICOM keyword -> tag number. The attributes of the PS3.15 basic profile that identify a
# patient, a study or a person involved with it; UIDs are included because they link a file
# back to the hospital's records.
_PHI_ATTRIBUTES: dict[str, int] = {
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "IssuerOfPatientID": 0x00100021,
    "PatientBirthDate": 0x00100030,
    "PatientBirthTime": 0x00100032,
    "OtherPatientIDs": 0x00101000,
    "OtherPatientNames": 0x00101001,
    "OtherPatientIDsSequence": 0x00101002,
    "PatientBirthName": 0x00101005,
    "PatientAddress": 0x00101040,
    "PatientMotherBirthName": 0x00101060,
    "MilitaryRank": 0x00101080,
    "MedicalRecordLocator": 0x00101090,
    "RegionOfResidence": 0x00102152,
    "PatientTelephoneNumbers": 0x00102154,
    "EthnicGroup": 0x00102160,
    "AccessionNumber": 0x00080050,
    "InstitutionName": 0x00080080,
    "InstitutionAddress": 0x00080081,
    "ReferringPhysicianName": 0x00080090,
    "PhysiciansOfRecord": 0x00081048,
    "PerformingPhysicianName": 0x00081050,
    "NameOfPhysiciansReadingStudy": 0x00081060,
    "OperatorsName": 0x00081070,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "StudyID": 0x00200010,
    "RequestingPhysician": 0x00321032,
}

#: The identifying DICOM attributes, by keyword (as pydicom spells them).
PHI_DICOM_KEYWORDS: tuple[str, ...] = tuple(_PHI_ATTRIBUTES)

_NON_ALNUM = re.compile(r"[^0-9a-z]")

#: The same attributes as mapping keys: lowercased, separators removed, so ``patient_id``,
#: ``PatientID`` and ``patient-id`` all match.
PHI_KEYWORDS: frozenset[str] = frozenset(_NON_ALNUM.sub("", k.lower()) for k in PHI_DICOM_KEYWORDS)

#: The same attributes by tag number, e.g. ``(0010,0020)`` or ``00100020``.
PHI_TAG_NUMBERS: frozenset[str] = frozenset(f"{tag:08x}" for tag in _PHI_ATTRIBUTES.values())

HASH_PREFIX = "sha256:"
_HASH_CHARS = 16
_MIN_IDENTIFIER_CHARS = 3  # shorter values ("2", "M") would redact half of every message
_KEEP = set("-_.+=,@ ")
_MAX_ID_CHARS = 120


class PatientIdentifiers(frozenset):
    """The identifying strings of a series: a frozenset whose ``repr`` and ``str`` never show them.

    Anything that prints or logs an object holding it (a case, a dataclass) shows
    ``PatientIdentifiers(<N hidden>)``; ``json.dumps`` refuses it.
    """

    def __repr__(self) -> str:
        return f"PatientIdentifiers(<{len(self)} hidden>)"

    __str__ = __repr__


def _is_list(value: object) -> bool:
    return isinstance(value, SequenceABC) and not isinstance(value, (str, bytes))


def patient_identifiers(headers: Iterable[Any]) -> PatientIdentifiers:
    """The values of the :data:`PHI_DICOM_KEYWORDS` attributes in ``headers``.

    Args:
        headers: pydicom datasets (or mappings keyed by DICOM keyword). Sequences such as
            ``OtherPatientIDsSequence`` are walked.

    Returns:
        Each value, and each part of a person name (split at ``^``, ``=`` and spaces), that
        is 3 characters or longer.
    """
    found: set[str] = set()

    def collect(value: Any) -> None:
        for item in value if _is_list(value) else [value]:
            if hasattr(item, "get") and not isinstance(item, str):  # a sequence item: a dataset
                visit(item)
                continue
            text = str(item).strip()
            found.add(text)
            found.update(part.strip() for part in re.split(r"[\^=\s]+", text))

    def visit(header: Any) -> None:
        for keyword in PHI_DICOM_KEYWORDS:
            value = header.get(keyword)
            if value is not None:
                collect(value)

    for header in headers:
        visit(header)
    return PatientIdentifiers(t for t in found if len(t) >= _MIN_IDENTIFIER_CHARS)


def redact(text: str, identifiers: Iterable[str]) -> str:
    """Replace every identifier in ``text`` with ``<redacted>`` (longest first, case-insensitive)."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        text = re.sub(re.escape(ident), "<redacted>", text, flags=re.IGNORECASE)
    return text


def safe_case_id(raw: str) -> str:
    """Make a case id that is one harmless file name.

    Letters and digits of any script, spaces and ``-_.+=,@`` are kept; path separators,
    control and shell-special characters become ``_``; leading dots and spaces are removed
    (no hidden files, no ``..``); the result is at most 120 characters and never empty.

    Example:
        ``safe_case_id("../../etc/passwd")`` is ``"_.._etc_passwd"``; ``safe_case_id("Müller scan")``
        is ``"Müller scan"``.
    """
    text = unicodedata.normalize("NFC", str(raw))
    cleaned = "".join(ch if (ch.isalnum() or ch in _KEEP) and ch.isprintable() else "_" for ch in text)
    cleaned = cleaned.lstrip(". ").rstrip(". ")[:_MAX_ID_CHARS].rstrip(". ")
    return cleaned or "case"


def dicom_case_id(folder: Path, root: Path, series_uid: str, identifiers: Iterable[str]) -> str:
    """The case id of the DICOM series in ``folder``, found under the input path ``root``.

    The id is the folder's path below ``root`` (``root``'s own name when they are the same),
    with ``/`` as ``_``, made safe with :func:`safe_case_id`. A folder named after the
    patient (its path below ``root`` holds one of ``identifiers``) gets
    ``series_<12 hex digits of the SHA-1 of its SeriesInstanceUID>`` instead, so that the name
    never reaches a file name, a message or a datalist.

    Args:
        folder: the series folder.
        root: the folder the user gave (``--input``, ``data check DIR``).
        series_uid: the series' ``SeriesInstanceUID``; ``""`` when the folder mixes several
            (the folder path is hashed instead).
        identifiers: the series' :func:`patient_identifiers`.
    """
    rel = folder.relative_to(root).as_posix() if folder != root else root.name
    raw = rel.replace("/", "_") or "series"
    lowered = raw.lower()
    if any(ident.lower() in lowered for ident in identifiers):
        digest = hashlib.sha1((series_uid or str(folder)).encode()).hexdigest()[:12]
        return f"series_{digest}"
    return safe_case_id(raw)


def is_phi_key(key: object) -> bool:
    """Tell whether a mapping key names a patient identifier.

    Only the last component of a dotted or slashed key counts, so the flattened
    parameter name ``data.dicom.PatientID`` matches while ``patient_count`` does not.

    Args:
        key: a key of any type; non-strings never match.

    Returns:
        ``True`` when the key (case-insensitive, separators ignored) is one of
        :data:`PHI_KEYWORDS` or :data:`PHI_TAG_NUMBERS`.
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
        raise InvalidTypeError(f"scrub_phi expects a mapping, got {type(mapping).__name__}")
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

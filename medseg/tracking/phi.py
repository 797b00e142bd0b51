"""Keep DICOM patient identifiers out of MLflow: replace them with a sha256 prefix.

Configs, case lists and DICOM headers can carry identifiers (``PatientName``,
``PatientID``, ...). MLflow params and tags are visible to everyone who can open the
tracking server, so every mapping that reaches params or tags goes through
:func:`scrub_phi` first.

The list of identifying attributes and the scrubber live in :mod:`medseg.privacy`, which
inference and the dataset commands use too, so that one list decides what an identifier
is everywhere; this module keeps the tracking-side names.
"""

from __future__ import annotations

from medseg.privacy import HASH_PREFIX, PHI_KEYWORDS, PHI_TAG_NUMBERS, hash_identifier, is_phi_key, scrub_phi

__all__ = ["HASH_PREFIX", "PHI_KEYWORDS", "PHI_TAG_NUMBERS", "hash_identifier", "is_phi_key", "scrub_phi"]

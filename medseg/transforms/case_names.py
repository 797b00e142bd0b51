"""Name MONAI-runner outputs as ``medseg infer`` names them: ``<case id>.nii.gz``.

MONAI's ``SaveImaged`` names an output after its input's first file (``BraTS2021_00000_t1_seg.nii.gz``
for a 4-modality BraTS case), so ``medseg evaluate`` could not pair it with its truth case. The
bundles' ``inference.json`` copy the datalist's ``case_id`` into the prediction's metadata
(:class:`CaseIdToMetad`) and name the file from it (:func:`case_file_name`), with no postfix.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import MapTransform

from medseg.privacy import safe_case_id

__all__ = ["CASE_ID_KEY", "CaseIdToMetad", "case_file_name"]

CASE_ID_KEY = "case_id"


class CaseIdToMetad(MapTransform):
    """Put the item's ``case_id`` into the metadata of each key's MetaTensor.

    Args:
        keys: the MetaTensors to tag (``"pred"``).
        source: the item's key holding the case id.
    """

    def __init__(self, keys: Any, source: str = CASE_ID_KEY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source = source

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = d.get(self.source)
        for key in self.key_iterator(d):
            if case_id is not None and hasattr(d[key], "meta"):
                d[key].meta[CASE_ID_KEY] = str(case_id)
        return d


def case_file_name(metadict: Mapping[str, Any] | None, saver: Any) -> dict[str, Any]:
    """``SaveImaged``'s ``output_name_formatter``: the file is named after the case id, made safe.

    Without a case id (an item from elsewhere) it falls back to MONAI's own choice, the input's
    file name.
    """
    meta = dict(metadict or {})
    case_id = meta.get(CASE_ID_KEY)
    if case_id is None:
        return {"subject": str(meta.get("filename_or_obj", "subject")), "idx": None}
    # A suffix for MONAI to strip, so that dots inside the id ("case.1") are kept.
    return {"subject": f"{safe_case_id(case_id)}.nii.gz", "idx": None}

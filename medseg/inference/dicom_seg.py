"""Write a label map as a DICOM Segmentation (DICOM-SEG) with highdicom, referencing the source series.

One segment per non-background label value of the model (for BraTS region models, the
source convention's labels: necrotic core, edema, enhancing tumour), binary, with
frames aligned to the source images. The SEG copies the patient and study of the source
series, as the standard requires; its file name is the case id, never a DICOM tag.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import medseg
from medseg.inference.geometry import DicomReference
from medseg.inference.model import InferenceModel

__all__ = ["dicom_seg_writer", "build_segmentation"]

_SERIES_NUMBER = 9901  # conventional high number for derived series
_KEYWORDS = (("edema", "79654002", "Edema"), ("necro", "6574001", "Necrosis"),
             ("enhanc", "108369006", "Neoplasm"), ("tumo", "108369006", "Neoplasm"),
             ("lesion", "52988006", "Lesion"))


def _property_type(meaning: str):
    """A SNOMED CT segmented-property type for a label meaning (``Tissue`` when nothing fits)."""
    from highdicom.sr import CodedConcept

    lowered = meaning.lower()
    for word, code, name in _KEYWORDS:
        if word in lowered:
            return CodedConcept(value=code, scheme_designator="SCT", meaning=name)
    return CodedConcept(value="85756007", scheme_designator="SCT", meaning="Tissue")


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs every module it copies at INFO; keep batch output to medseg's summary."""
    log = logging.getLogger("highdicom")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def build_segmentation(labels: np.ndarray, reference: DicomReference, model: InferenceModel):
    """Build the ``highdicom.seg.Segmentation`` of ``labels`` on the series of ``reference``.

    Args:
        labels: label map ``(X, Y, Z)`` with the model's label values, in SimpleITK's index
            order for the series (slice ``k`` is ``reference.files[k]``).
        reference: the source series.
        model: for the label values, their meanings and the algorithm name.

    Returns:
        The segmentation dataset.
    """
    import highdicom as hd
    import pydicom
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in reference.files]
    values = [v for v in model.label_values if v != 0]
    # highdicom takes segment numbers 1..N: map each label value to its segment number.
    lookup = np.zeros(max(model.label_values) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        lookup[value] = number
    frames = np.ascontiguousarray(lookup[labels.transpose(2, 1, 0)])  # (slices, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medseg {model.network_name}"[:64], version=str(medseg.__version__),
        family=codes.cid7162.ArtificialIntelligence)
    category = CodedConcept(value="49755003", scheme_designator="SCT", meaning="Morphologically Altered Structure")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=model.label_names.get(value, f"class {value}")[:64],
            segmented_property_category=category,
            segmented_property_type=_property_type(model.label_names.get(value, "")),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, value in enumerate(values, start=1)
    ]
    with _quiet_highdicom():
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg",
            manufacturer_model_name=model.network_name[:64], software_versions=str(medseg.__version__),
            device_serial_number="0", series_description="medseg segmentation")


def dicom_seg_writer(labels: np.ndarray, reference: DicomReference, model: InferenceModel) -> Callable[[Path], None]:
    """A function writing the DICOM-SEG of ``labels`` at the path it is given (for :func:`write_outputs`)."""

    def write(path: Path) -> None:
        build_segmentation(labels, reference, model).save_as(str(path))

    return write

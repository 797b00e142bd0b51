"""Write synthetic BraTS-like cases in the layouts real datasets ship in.

Formats:
    ``brats2021``: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 0/1/2/4.
    ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 0/1/2/3.
    ``brats2024``: the 2023 naming with the BraTS 2024+ labels 0/1/2/3/4: every other case
        (the even-numbered ones) is post-operative, with a resection cavity labelled 4 (RC).
    ``msd``: Task01_BrainTumour: ``dataset.json``, 4D ``imagesTr/BRATS_001.nii.gz`` with channels
        (FLAIR, T1w, t1gd, T2w) and ``labelsTr`` with 1 edema, 2 non-enhancing, 3 enhancing.
    ``nnunet``: the generic nnU-Net v2 layout, one file per channel
        (``imagesTr/case_000_0000.nii.gz``) and ``dataset.json`` with ``channel_names``/``labels``.

Every format can be written at other voxel spacings (``spacings``): each case is drawn at
1 mm as without them, then resampled (:mod:`medseg.data.synth.resample`).
:func:`write_ct_dataset` writes the synthetic CT of :mod:`medseg.data.synth.ct` in the
nnU-Net v2 layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.data.conventions import BRATS2021, BRATS2023, MSD_BRAIN, LabelConvention
from medseg.data.synth.brats import BratsCase, make_brats_case, resample_case
from medseg.data.synth.ct import CT_LABELS, DEFAULT_CT_SHAPE, check_ct_shape, make_ct_case, resample_ct_case
from medseg.data.synth.resample import check_spacings
from medseg.errors import InvalidValueError
from medseg.utils.atomic import atomic_path, atomic_write_text

BRATS_FORMATS: tuple[str, ...] = ("brats2021", "brats2023", "brats2024", "msd", "nnunet")

# Source file suffix of each canonical channel, per naming scheme.
_BRATS2023_NAMES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_MSD_ORDER = ("flair", "t1", "t1ce", "t2")  # MSD channel order: FLAIR, T1w, t1gd, T2w
_MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Save ``array`` atomically as NIfTI with ``affine`` (qform and sform both set)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _relabel(label: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Convert a BraTS-2021-valued map to ``convention``'s values via the shared regions."""
    if convention is BRATS2021:
        return label
    return convention.from_regions(BRATS2021.to_regions(label))


def _write_brats2021(case: BratsCase, out: Path, index: int) -> Path:
    cid = f"BraTS2021_{index:05d}"
    for name, image in case.images.items():
        save_nifti(image, case.affine, out / cid / f"{cid}_{name}.nii.gz")
    save_nifti(case.label, case.affine, out / cid / f"{cid}_seg.nii.gz")
    return out / cid


def _write_brats2023(case: BratsCase, out: Path, index: int) -> Path:
    cid = f"BraTS-GLI-{index:05d}-000"
    for name, image in case.images.items():
        save_nifti(image, case.affine, out / cid / f"{cid}-{_BRATS2023_NAMES[name]}.nii.gz")
    save_nifti(_relabel(case.label, BRATS2023), case.affine, out / cid / f"{cid}-seg.nii.gz")
    return out / cid


def _write_brats2024(case: BratsCase, out: Path, index: int) -> Path:
    cid = f"BraTS-GLI-{index:05d}-000"
    for name, image in case.images.items():
        save_nifti(image, case.affine, out / cid / f"{cid}-{_BRATS2023_NAMES[name]}.nii.gz")
    label = _relabel(case.label, BRATS2023)  # 1, 2, 3 mean the same in BraTS 2024+ (NETC, SNFH, ET)
    if case.cavity is not None:
        label[case.cavity] = 4
    save_nifti(label, case.affine, out / cid / f"{cid}-seg.nii.gz")
    return out / cid


def _write_msd(case: BratsCase, out: Path, index: int) -> Path:
    cid = f"BRATS_{index + 1:03d}"
    stacked = np.stack([case.images[c] for c in _MSD_ORDER], axis=-1).astype(np.float32)
    save_nifti(stacked, case.affine, out / "imagesTr" / f"{cid}.nii.gz")
    save_nifti(_relabel(case.label, MSD_BRAIN), case.affine, out / "labelsTr" / f"{cid}.nii.gz")
    return out / "imagesTr" / f"{cid}.nii.gz"


def _write_nnunet(case: BratsCase, out: Path, index: int) -> Path:
    cid = f"case_{index:03d}"
    for channel, image in enumerate(case.images.values()):
        save_nifti(image, case.affine, out / "imagesTr" / f"{cid}_{channel:04d}.nii.gz")
    save_nifti(_relabel(case.label, BRATS2023), case.affine, out / "labelsTr" / f"{cid}.nii.gz")
    return out / "imagesTr" / f"{cid}_0000.nii.gz"


_WRITERS: dict[str, Callable[[BratsCase, Path, int], Path]] = {
    "brats2021": _write_brats2021,
    "brats2023": _write_brats2023,
    "brats2024": _write_brats2024,
    "msd": _write_msd,
    "nnunet": _write_nnunet,
}


def _write_dataset_json(fmt: str, out: Path, n: int) -> None:
    if fmt == "msd":
        meta = {
            "name": "BRATS",
            "description": "Synthetic stand-in for MSD Task01_BrainTumour (medseg data synth)",
            "tensorImageSize": "4D",
            "modality": _MSD_MODALITY,
            "labels": {str(k): v for k, v in {0: "background", 1: "edema", 2: "non-enhancing tumor",
                                               3: "enhancing tumour"}.items()},
            "numTraining": n,
            "numTest": 0,
            "training": [{"image": f"./imagesTr/BRATS_{i + 1:03d}.nii.gz",
                          "label": f"./labelsTr/BRATS_{i + 1:03d}.nii.gz"} for i in range(n)],
            "test": [],
        }
    elif fmt == "nnunet":
        meta = {
            "name": "SyntheticGlioma",
            "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
            "labels": {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3},
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
    else:
        return
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))


def write_brats_dataset(
    out: str | Path,
    cases: int,
    shape: tuple[int, int, int] = (240, 240, 155),
    seed: int = 0,
    fmt: str = "brats2021",
    progress: Callable[[int, int], None] | None = None,
    spacings: Sequence[Sequence[float]] | None = None,
) -> list[Path]:
    """Generate ``cases`` synthetic cases and write them in layout ``fmt`` under ``out``.

    Case ``i`` depends only on ``(seed, i)``, so the same call always writes the same
    bytes, and the first cases of a larger set equal those of a smaller one.

    Args:
        out: output folder (created).
        cases: number of cases (>= 1).
        shape: volume shape ``(X, Y, Z)`` at 1 mm.
        seed: random seed.
        fmt: one of :data:`BRATS_FORMATS`.
        progress: optional callback ``(done, total)``.
        spacings: voxel sizes ``(SX, SY, SZ)`` in mm; case ``i`` is drawn at 1 mm on ``shape``
            and resampled to ``spacings[i % len(spacings)]`` over the same extent. ``None``
            (default): 1 mm, the bytes written without this argument.

    Returns:
        One path per case (its folder, or its image file for MSD/nnU-Net layouts).

    Raises:
        InvalidValueError: an unknown format, fewer than one case, or a spacing that
            :func:`~medseg.data.synth.resample.check_spacings` refuses (checked before writing).
    """
    if fmt not in _WRITERS:
        raise InvalidValueError(f"unknown format {fmt!r}; valid: {list(_WRITERS)}")
    if cases < 1:
        raise InvalidValueError(f"cases must be >= 1, got {cases}")
    checked = None if spacings is None else check_spacings(spacings, shape, cases)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        case = make_brats_case(rng, shape, cavity=fmt == "brats2024" and i % 2 == 0)
        if checked is not None:
            case = resample_case(case, checked[i % len(checked)])
        written.append(_WRITERS[fmt](case, out, i))
        if progress:
            progress(i + 1, cases)
    _write_dataset_json(fmt, out, cases)
    return written


def write_ct_dataset(
    out: str | Path,
    cases: int,
    shape: tuple[int, int, int] = DEFAULT_CT_SHAPE,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    spacings: Sequence[Sequence[float]] | None = None,
) -> list[Path]:
    """Generate ``cases`` synthetic CT cases and write them in the nnU-Net v2 layout under ``out``.

    Writes ``imagesTr/case_XXX_0000.nii.gz`` (int16 HU), ``labelsTr/case_XXX.nii.gz``
    (0 background, 1 organ, 2 lesion) and ``dataset.json``. Case ``i`` depends only on
    ``(seed, i)``, as in :func:`write_brats_dataset`.

    Args:
        out: output folder (created).
        cases: number of cases (>= 1).
        shape: volume shape ``(X, Y, Z)`` at 1 mm (default 96x96x48).
        seed: random seed.
        progress: optional callback ``(done, total)``.
        spacings: voxel sizes ``(SX, SY, SZ)`` in mm, cycled over the cases as in
            :func:`write_brats_dataset`; ``None`` (default): 1 mm.

    Returns:
        The image file of each case.

    Raises:
        InvalidValueError: fewer than one case, a bad shape, or a refused spacing.
    """
    if cases < 1:
        raise InvalidValueError(f"cases must be >= 1, got {cases}")
    shape = check_ct_shape(shape)
    checked = None if spacings is None else check_spacings(spacings, shape, cases)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(cases):
        case = make_ct_case(np.random.default_rng(np.random.SeedSequence([seed, i])), shape)
        if checked is not None:
            case = resample_ct_case(case, checked[i % len(checked)])
        cid = f"case_{i:03d}"
        written.append(save_nifti(case.image, case.affine, out / "imagesTr" / f"{cid}_0000.nii.gz"))
        save_nifti(case.label, case.affine, out / "labelsTr" / f"{cid}.nii.gz")
        if progress:
            progress(i + 1, cases)
    meta = {
        "name": "SyntheticCT",
        "description": "Synthetic abdominal CT, organ and lesions (medseg data synth ct)",
        "channel_names": {"0": "CT"},
        "labels": dict(CT_LABELS),
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2))
    return written

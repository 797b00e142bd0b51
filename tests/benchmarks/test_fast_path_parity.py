"""medseg's fast inference path against the stock MONAI pipeline, on real files and the same weights.

Two skull-stripped synthetic BraTS cases (128x128x112, int16 ``.nii.gz``, BraTS 2021 layout)
are segmented twice: by ``medseg.inference.run_inference`` (the default path: channels-last
on the CPU) and by ``monai.bundle.run`` of ``benchmarks/stock/brats_mri_segmentation_inference.json`` (the
model-zoo inference config; its network replaced by the same small network and weights, its
window by the volume's size). The region Dice of the two masks must agree within 0.005, with
each other and against the truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastpath_helpers import NAME, smooth_regions

from medseg.inference import InferenceOptions, load_inference_model, run_inference
from medseg.inference.inputs import expand_inputs
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import prepare_case

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import region_dice, write_brats_cases, write_shared_weights
from nonzero_box import NonzeroBoxPredictor

SHAPE = (128, 128, 112)
STOCK_CONFIG = ROOT / "benchmarks" / "stock" / "brats_mri_segmentation_inference.json"
TOLERANCE = 0.005


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_brats_cases(tmp_path_factory.mktemp("brats"), 2, SHAPE, seed=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tensors as a medseg output bundle and as the plain state_dict the stock config loads."""
    network = {"name": NAME, "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}}
    inference = {"roi_size": list(SHAPE), "sw_batch_size": 1, "sw_overlap": 0.5}
    plain, bundle = write_shared_weights(smooth_regions().state_dict(), network, inference,
                                         tmp_path_factory.mktemp("weights"))
    return bundle, plain


def _stock(data: Path, out: Path, plain: Path) -> None:
    from monai.bundle import run

    run(
        config_file=str(STOCK_CONFIG),
        dataset_dir=str(data),
        output_dir=str(out),
        ckpt_path=str(plain),
        num_workers=0,
        network_def={"_target_": "fastpath_helpers.smooth_regions"},
        **{"inferer#roi_size": list(SHAPE)},
    )


def test_fast_path_matches_stock_monai(cases, weights, tmp_path):
    bundle, plain = weights
    data = cases[0].parent
    model = load_inference_model(bundle)
    report = run_inference(model, [data], tmp_path / "medseg", InferenceOptions(device="cpu", progress=False))
    assert report.ok and len(report.written) == 2, report.format_summary()
    _stock(data, tmp_path / "stock", plain)

    for case in cases:
        mine = np.asanyarray(nib.load(str(tmp_path / "medseg" / f"{case.name}.nii.gz")).dataobj)
        stock = np.asanyarray(nib.load(str(tmp_path / "stock" / f"{case.name}_t1_seg.nii.gz")).dataobj)
        truth = np.asanyarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj)
        assert mine.shape == stock.shape == truth.shape == SHAPE
        assert (stock == 2).sum() + (stock == 4).sum() > 100, "the stock masks are empty: nothing is compared"
        agreement = region_dice(mine, stock)
        vs_truth, stock_vs_truth = region_dice(mine, truth), region_dice(stock, truth)
        assert vs_truth["WT"] > 0.3, f"{case.name}: the network misses the tumour ({vs_truth})"
        for region in ("TC", "WT", "ET"):
            assert agreement[region] >= 1 - TOLERANCE, (
                f"{case.name} {region}: medseg vs stock Dice {agreement}"
            )
            assert abs(vs_truth[region] - stock_vs_truth[region]) <= TOLERANCE, (
                case.name,
                vs_truth,
                stock_vs_truth,
            )


def test_nonzero_box_crop_pastes_back_in_place(cases, weights):
    """cpu_levers.py's crop to the non-zero box gives the same masks as the whole volume for a local network."""
    bundle, _ = weights
    model = load_inference_model(bundle)
    (case,) = expand_inputs([cases[0]], model)
    image = prepare_case(case, model).image
    masks = {}
    for crop in (False, True):
        predictor = (NonzeroBoxPredictor if crop else SlidingWindowPredictor)(
            model.network, model.roi_size, 1, device="cpu"
        )
        prediction = predictor.predict(image)
        box = getattr(prediction, "box", None)
        assert (box is not None) == crop, "the box must be smaller than the volume here"
        masks[crop] = (prediction.mean > 0.5).numpy()
    assert masks[False].any()
    for channel in range(3):
        agreement = region_dice(
            masks[True][channel].astype(np.uint8) * 4, masks[False][channel].astype(np.uint8) * 4
        )
        assert agreement["ET"] >= 1 - TOLERANCE, (channel, agreement)

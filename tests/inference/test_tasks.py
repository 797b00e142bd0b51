"""2D and 3D models are peers: one batch loop (``run_inference``) runs both, and only their task differs.

The loop asks the model's task (:func:`medseg.inference.task.task_for`) which inputs are
cases, which files a case writes, how a case is read, predicted and written, and whether
those steps may overlap. ``batch.py`` itself must not branch on the kind of model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from infer_helpers import random_volume, save_volume
from PIL import Image
from torch import nn

from medseg.checkpoint import save_checkpoint
from medseg.inference import InferenceOptions, batch, load_inference_model, run_inference
from medseg.inference.image_task import ImageTask
from medseg.inference.planar import PlanarModel
from medseg.inference.task import task_for
from medseg.inference.volume_task import VolumeTask
from medseg.networks import list_networks, register_network

BATCH_SOURCE = Path(batch.__file__).read_text()
TASK_POINTWISE_2D = "infer_test_task_pointwise2d"

if TASK_POINTWISE_2D not in list_networks():

    @register_network(TASK_POINTWISE_2D, spatial_dims=(2,), paper="test only: a 1x1 convolution", smoke_kwargs={})
    def _pointwise2d(spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)


def _bundle_2d(root: Path) -> Path:
    """A 2D bundle marking pixels whose red channel is below one half as lesion."""
    state = {"weight": torch.tensor([[[[-40.0]], [[0.0]], [[0.0]]]]), "bias": torch.tensor([20.0])}
    network = {"name": TASK_POINTWISE_2D, "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}}
    save_checkpoint(root / "models" / "model.pt", state, network=network, label_convention="isic",
                    channel_names=["R", "G", "B"], extra={"output_names": ["lesion"]},
                    preprocessing={"task": "binary", "spatial_dims": 2, "image_size": [32, 32],
                                   "resize": "stretch", "normalize": "none"})
    return root


def kind_branches(source: str) -> list[str]:
    """Where ``source`` tells 2D from 3D models: names mentioning ``planar``, or ``isinstance(model, ...)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
            names = [node.arg]
        elif isinstance(node, ast.alias):
            names = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        found += [f"line {node.lineno}: {name!r}" for name in names if "planar" in name.lower()]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "model"):
            found.append(f"line {node.lineno}: isinstance(model, ...)")
    return found


def test_the_batch_loop_has_no_2d_or_3d_branch():
    assert kind_branches(BATCH_SOURCE) == []


@pytest.mark.parametrize("snippet", [
    "planar = isinstance(model, PlanarModel)\n",
    "from medseg.inference.planar import PlanarPredictor\n",
    "if isinstance(model, InferenceModel):\n    pass\n",
    "run_stages(todo, stages, report, overlap=options.pipelined and not planar)\n",
    "plans = plan_outputs(cases, out, planar=True)\n",
])
def test_the_branch_check_finds_the_old_branches(snippet):
    # The check must be able to fail: each line of the loop as it was before issue #17 is caught.
    assert kind_branches(BATCH_SOURCE + "\n" + snippet)


def test_a_2d_and_a_3d_model_run_through_the_same_batch_loop(multiclass_bundle, tmp_path, monkeypatch):
    calls: list[tuple[str, int, bool]] = []
    real = batch.run_stages

    def spy(jobs, stages, report, overlap=True, large=None, readers=1):
        calls.append((type(stages.prepare.__self__).__name__, len(jobs), overlap))
        return real(jobs, stages, report, overlap=overlap, large=large, readers=readers)

    monkeypatch.setattr(batch, "run_stages", spy)
    volume = load_inference_model(multiclass_bundle)
    image = load_inference_model(_bundle_2d(tmp_path / "bundle2d"))
    assert isinstance(image, PlanarModel) and not isinstance(volume, PlanarModel)
    assert isinstance(task_for(volume), VolumeTask) and isinstance(task_for(image), ImageTask)

    nifti = save_volume(tmp_path / "in3d" / "scan.nii.gz", random_volume(0))
    rgb = np.zeros((24, 40, 3), dtype=np.uint8)
    rgb[:, :20] = 255  # left half white (no lesion), right half black (lesion)
    png = tmp_path / "in2d" / "mole.png"
    png.parent.mkdir()
    Image.fromarray(rgb).save(png)
    options = InferenceOptions(device="cpu", progress=False, save_prob=True)
    reports = {"3d": run_inference(volume, [nifti], tmp_path / "out3d", options),
               "2d": run_inference(image, [png], tmp_path / "out2d", options)}

    assert [o.status for r in reports.values() for o in r.outcomes] == ["written", "written"]
    assert calls == [("VolumeRun", 1, True), ("ImageRun", 1, False)]  # one loop; only the task differs
    assert sorted(p.name for p in (tmp_path / "out3d").iterdir()) == [
        "scan.nii.gz", "scan_prob.nii.gz", "scan_uncertainty.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out2d").iterdir()) == ["mole.png", "mole_overlay.png", "mole_prob.png"]
    with Image.open(tmp_path / "out2d" / "mole.png") as mask:
        values = np.asarray(mask)
    assert values.shape == (24, 40)
    assert (values[:, :18] == 0).all() and (values[:, 22:] == 255).all()

"""MONAI's bundle-workflow contract, as MONAI Label, MONAI FL and the model-zoo checks drive a bundle.

They create the workflow with the bundle's defaults and no data present, initialise it, check its
properties, and point it at data later. Nothing may be read or written for a dataset that is not
there; running the workflow without one stops with one clear error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow
from tiny_training import REPO

from medseg.errors import DataError

BUNDLES = ["brats_attention_unet3d", "brats_segresnet", "generic_3d", "isic_light_unet", "isic_deeplabv3plus"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_initialize_and_check_properties_with_no_data(bundle, tmp_path, monkeypatch, isolated_logging):
    monkeypatch.chdir(tmp_path)  # the defaults' relative paths (dataset_dir, runs/) land here
    root = REPO / "bundles" / bundle
    for kind, config in (("train", "train.json"), ("infer", "inference.json")):
        workflow = ConfigWorkflow(config_file=str(root / "configs" / config),
                                  meta_file=str(root / "configs" / "metadata.json"), workflow_type=kind)
        workflow.initialize()
        assert workflow.check_properties() == [], (bundle, kind)
        # No output folder was claimed and no dataset was read or made.
        assert not (tmp_path / "runs" / bundle).exists() and not (tmp_path / "data").exists()
        with pytest.raises(Exception) as caught:
            workflow.run()
        chain, error = [], caught.value
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        data_errors = [e for e in chain if isinstance(e, DataError)]
        assert data_errors and data_errors[0].rule == "dataset folder not found", (bundle, kind, chain)


def test_monai_bundle_run_without_data_says_what_to_set(tmp_path):
    import subprocess

    root = REPO / "bundles" / "brats_segresnet"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(root / "configs" / "train.json"), "--dataset_dir", str(tmp_path / "nowhere")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert f"{tmp_path / 'nowhere'}: dataset folder not found" in result.stderr
    assert not (tmp_path / "runs" / "brats_segresnet").exists()


def test_medseg_train_without_data_is_one_line(tmp_path):
    from tiny_training import medseg

    result = medseg("train", REPO / "bundles" / "brats_segresnet", "--no-tracking", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and "dataset folder not found" in result.stderr
    assert not Path(tmp_path / "runs" / "brats_segresnet").exists()


def test_a_typo_in_set_is_refused_with_the_nearest_ids(tmp_path):
    """``--set max_epoch=1`` used to start the default 300-epoch run; now nothing starts."""
    from tiny_training import BUNDLE, medseg

    result = medseg("train", BUNDLE, "--data", tmp_path, "--set", "max_epoch=1", "--no-tracking",
                    "--output", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--set max_epoch:" in result.stderr and "has no id 'max_epoch'; did you mean max_epochs" in result.stderr
    assert not (tmp_path / "out").exists()
    # A nested id below an existing one may add a key; its first part is what is checked.
    from medseg.engine.runner import check_override_ids

    checked = check_override_ids({"network_spec#kwargs#dropout": 0.1, "max_epochs": 1, "+my_id": 3},
                                 BUNDLE / "configs" / "train.json")
    assert checked == {"network_spec#kwargs#dropout": 0.1, "max_epochs": 1, "my_id": 3}  # '+': new on purpose

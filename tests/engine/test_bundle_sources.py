"""The bundles share their wiring through ``bundles/_shared``; each ``train.json`` is the merge, kept current.

``bundles/_shared/sync.py`` writes each bundle's ``configs/train.json`` as MONAI's merge of the
shared layers and the bundle's own ``configs/train.delta.json``, and copies the shared
``evaluate.json``, ``multi_gpu_train.json`` and ``logging.conf``. These tests hold the generated
files to their sources, check that a delta says only what differs, and that MONAI's own list
form of the same files gives a complete workflow.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow
from tiny_training import REPO

SHARED = REPO / "bundles" / "_shared"
BUNDLES = sorted(json.loads((SHARED / "bundles.json").read_text()))


def _sync_module(shared: Path = SHARED):
    spec = importlib.util.spec_from_file_location("bundle_sync", shared / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(shared: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(shared / "sync.py"), *args], capture_output=True, text=True,
                          timeout=300)


def test_every_bundle_folder_is_listed_with_its_kind():
    folders = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
    kinds = json.loads((SHARED / "bundles.json").read_text())
    assert sorted(kinds) == folders
    assert set(kinds.values()) == {"volume", "image"}


def test_generated_files_are_current():
    result = _sync(SHARED, "--check")
    assert result.returncode == 0, result.stderr


def test_a_stale_file_is_named_and_sync_rewrites_it(tmp_path):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles", bundles, ignore=shutil.ignore_patterns("__pycache__"))
    delta = bundles / "brats_segresnet" / "configs" / "train.delta.json"
    edited = {**json.loads(delta.read_text()), "learning_rate": 0.0042}
    delta.write_text(json.dumps(edited, indent=4) + "\n")
    (bundles / "isic_light_unet" / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")

    result = _sync(bundles / "_shared", "--check")  # the maintainer's command, in a process of its own
    assert result.returncode == 1
    stale = sorted(line.split(":")[0] for line in result.stderr.splitlines())
    assert stale == ["bundles/brats_segresnet/configs/train.json", "bundles/isic_light_unet/configs/logging.conf"]
    assert json.loads((bundles / "brats_segresnet/configs/train.json").read_text())["learning_rate"] == 0.0001

    sync = _sync_module(bundles / "_shared")  # the same main(), in this process (MONAI is loaded already)
    assert sync.main([], shared=bundles / "_shared") == 0
    assert json.loads((bundles / "brats_segresnet/configs/train.json").read_text())["learning_rate"] == 0.0042
    assert (bundles / "isic_light_unet/configs/logging.conf").read_bytes() == (SHARED / "logging.conf").read_bytes()
    assert sync.main(["--check"], shared=bundles / "_shared") == 0
    assert not list(bundles.rglob("*.tmp"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_delta_says_only_what_differs(bundle, tmp_path):
    """Dropping any one entry of a bundle's delta changes its config: no entry repeats the shared layers."""
    sync = _sync_module()
    shared_layers, delta_path = sync.layers(bundle)[:-1], sync.layers(bundle)[-1]
    delta = json.loads(delta_path.read_text())
    full = ConfigParser.load_config_files([str(p) for p in sync.layers(bundle)])
    assert full == json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())
    for key in delta:
        reduced = tmp_path / "reduced.json"
        reduced.write_text(json.dumps({k: v for k, v in delta.items() if k != key}))
        assert ConfigParser.load_config_files([*map(str, shared_layers), str(reduced)]) != full, (bundle, key)
    # No bundle replaces the shared handler chain, trainer or evaluator (it may extend or adjust them).
    assert not set(delta) & {"train#handlers", "train#trainer", "validate#evaluator", "validate#handlers"}, bundle


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_list_form_is_a_complete_workflow(bundle, tmp_path, monkeypatch):
    """``ConfigWorkflow`` over the shared layers and the delta, as MONAI merges a list of config files."""
    monkeypatch.chdir(tmp_path)
    sync = _sync_module()
    meta = REPO / "bundles" / bundle / "configs" / "metadata.json"
    workflow = ConfigWorkflow(config_file=[str(p) for p in sync.layers(bundle)], meta_file=str(meta),
                              logging_file=False, workflow_type="train")
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.parser.get_parsed_content("bundle_name") == bundle


def test_shared_files_are_one_source():
    """evaluate.json, multi_gpu_train.json and logging.conf are the shared file in every bundle."""
    for bundle in BUNDLES:
        for name in ("evaluate.json", "multi_gpu_train.json", "logging.conf"):
            copy = REPO / "bundles" / bundle / "configs" / name
            assert copy.read_bytes() == (SHARED / name).read_bytes(), copy

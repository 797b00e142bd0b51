"""``medseg cv --devices``: folds side by side, each a real ``medseg train`` process on one device (issue #21, item 2).

The end-to-end runs use ``--devices cpu cpu`` (two CPU processes), the tiny settings and the real
``mlflow server`` of ``test_cv.py``; the GPU test runs only with ``-m gpu`` on a machine with CUDA.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from test_cv import CV, _metadata
from tiny_training import BUNDLE, medseg, set_args

from medseg.engine.cv_parallel import FoldJob, check_devices, parse_devices, run_fold_jobs, visible_devices
from medseg.errors import MedsegError


def _cases(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.is_dir())


def _children(client: MlflowClient, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def parallel_cv(tiny_brats: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-fold cross-validation with ``--devices cpu cpu`` (2 epochs: the killed run below must match it)."""
    work = tmp_path_factory.mktemp("cv_devices")
    out = work / "cv"
    result = medseg("cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", out, "--tracking-uri",
                    mlflow_server, "--devices", "cpu", "cpu", *set_args(CV), cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"out": out, "stdout": result.stdout, "stderr": result.stderr,
            "state": json.loads((out / "cv.json").read_text())}


def test_each_fold_trains_in_its_own_medseg_train_process_side_by_side(parallel_cv):
    out, stderr = parallel_cv["out"], parallel_cv["stderr"]
    starts = {int(m[0]): int(m[1]) for m in re.findall(r"fold (\d): training on cpu in its own process \(pid (\d+)\)",
                                                        stderr)}
    assert set(starts) == {0, 1} and len(set(starts.values())) == 2, stderr[-3000:]
    # Both folds started before either finished: they ran at the same time.
    first_end = min(stderr.index(f"fold {k}: finished on cpu") for k in range(2))
    assert all(stderr.index(f"fold {k}: training on cpu") < first_end for k in range(2))
    for k in range(2):
        log = (out / "logs" / f"fold_{k}.log").read_text()
        assert f"logs/fold_{k}.log" in stderr
        header = log.splitlines()[0]
        assert f"medseg cv: fold {k} on cpu:" in header and "-m medseg train" in header and f"--fold {k}" in header
        assert f"output bundle: {out / f'fold_{k}'}" in log  # what medseg train prints as it ends
        recorded = json.loads((out / f"fold_{k}" / "configs" / "train.json").read_text())["overrides"]
        assert recorded["num_folds"] == 2 and not {"parent_run_id", "run_name"} & set(recorded)  # as in-process
    state = parallel_cv["state"]
    assert state["done"] == [0, 1] and state["devices"] == ["cpu", "cpu"]
    assert state["trained_on"] == {"0": "cpu", "1": "cpu"}
    assert "devices" not in state["options"]  # a resumed cross-validation may use other devices


def test_parallel_cv_is_one_parent_run_with_a_child_per_fold(parallel_cv, mlflow_server):
    client = MlflowClient(mlflow_server)
    parent_id = parallel_cv["state"]["parent_run_id"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert 0.0 <= client.get_run(parent_id).data.metrics["cv_dice_WT_mean"] <= 1.0
    children = _children(client, parent_id)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["fold"] for c in children) == ["0", "1"]
    assert sorted(c.info.run_name for c in children) == [f"{BUNDLE.name}-fold0", f"{BUNDLE.name}-fold1"]
    assert {_metadata(parallel_cv["out"] / f"fold_{k}")["mlflow_run_id"] for k in range(2)} == {
        c.info.run_id for c in children}


def test_parallel_cv_predicts_every_case_once_and_summarises(parallel_cv, tiny_brats):
    out = parallel_cv["out"]
    cases = _cases(tiny_brats)
    assert sorted(p.name.removesuffix(".nii.gz") for p in (out / "oof").glob("*.nii.gz")) == cases
    per_fold = [sorted(p.name.removesuffix(".nii.gz") for p in (out / f"fold_{k}" / "oof").glob("*.nii.gz"))
                for k in range(2)]
    assert sorted(per_fold[0] + per_fold[1]) == cases and not set(per_fold[0]) & set(per_fold[1])
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["cases"] == 4 and summary["folds"] == 2 and set(summary["per_fold"]) == {"0", "1"}
    assert all((out / name).is_file() for name in summary["files"].values())
    assert "2-fold cross-validation" in parallel_cv["stdout"] and "dice_WT" in parallel_cv["stdout"]


def test_a_killed_parallel_cv_resumes_its_folds_exactly(parallel_cv, tiny_brats, mlflow_server, tmp_path):
    out = tmp_path / "cv"
    args = ["cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", out, "--tracking-uri", mlflow_server,
            "--devices", "cpu,cpu", *set_args(CV)]
    # Each fold process kills itself at its third iteration: in its second epoch, after its first checkpoint.
    killed = medseg(*args, cwd=tmp_path, env={"MEDSEG_FAULT_AT": "train-iteration:3"})
    assert killed.returncode == 2, killed.stderr[-3000:]
    for k in range(2):
        assert f"fold {k} failed (killed by SIGKILL); its log {out / 'logs' / f'fold_{k}.log'} ends:" in killed.stderr
        assert (out / f"fold_{k}" / "models" / "last.pt").is_file()
    state = json.loads((out / "cv.json").read_text())
    assert state["done"] == []
    client = MlflowClient(mlflow_server)
    assert client.get_run(state["parent_run_id"]).info.status == "FAILED"

    resumed = medseg(*args, cwd=tmp_path, env={"MEDSEG_FAULT_AT": ""})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert all(f"fold {k}: resuming its interrupted training on cpu" in resumed.stderr for k in range(2))
    for k in range(2):
        log = (out / "logs" / f"fold_{k}.log").read_text()
        assert log.count(f"medseg cv: fold {k} on cpu:") == 2 and f"--resume {out / f'fold_{k}'}" in log
        a, b = _metadata(parallel_cv["out"] / f"fold_{k}"), _metadata(out / f"fold_{k}")
        keys = [key for key in a["final_metrics"] if key.startswith(("train_loss", "val_", "lr"))]
        assert keys and all(b["final_metrics"][key] == a["final_metrics"][key] for key in keys), k
    state = json.loads((out / "cv.json").read_text())
    assert state["done"] == [0, 1]
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    children = _children(client, state["parent_run_id"])
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert json.loads((out / "cv_summary.json").read_text())["overall"] == json.loads(
        (parallel_cv["out"] / "cv_summary.json").read_text())["overall"]


def test_a_fold_process_gets_every_value_the_in_process_fold_gets(tmp_path):
    """The ``medseg train`` command of a fold, read by the real parser, gives what ``run_training`` gets in-process."""
    from medseg.cli.main import build_parser
    from medseg.engine.cv import _fold_job
    from medseg.engine.runner import parse_set

    data = tmp_path / "data"
    overrides = {"max_epochs": 1, "roi_size": [16, 16, 16], "network_spec#kwargs#features": [4, 8, 16],
                 "experiment_name": "a b", "+my_id": {"x": None, "y": "1"}, "tracking_enabled": False}
    common = {"tracking_uri": "http://127.0.0.1:5005", "tracking_fallback": "local", "tracking": True,
              "trust_bundle": True, "preset": "cpu-tryout"}
    job = _fold_job(1, tmp_path, BUNDLE, data, 3, overrides, common, "parent123", save_prob=True)
    args = build_parser().parse_args(job.args)
    assert (args.command, args.bundle, args.data, args.output, args.fold) == ("train", BUNDLE, data,
                                                                           tmp_path / "fold_1", 1)
    # tracking=True wins over --set tracking_enabled, as run_training(tracking=True) does in-process
    assert parse_set(args.overrides) == {**overrides, "num_folds": 3, "tracking_enabled": True,
                                         "parent_run_id": "parent123", "run_name": f"{BUNDLE.name}-fold1"}
    assert (args.preset, args.save_prob, args.trust_bundle, args.no_tracking, args.resume) == (
        "cpu-tryout", True, True, False, None)
    assert (args.tracking_uri, args.tracking_fallback) == ("http://127.0.0.1:5005", "local")
    assert job.log == tmp_path / "logs" / "fold_1.log" and not job.resumed

    # A fold folder holding models/last.pt resumes, with the values it began with (no --set, --preset, --data).
    (tmp_path / "fold_0" / "models").mkdir(parents=True)
    (tmp_path / "fold_0" / "models" / "last.pt").write_bytes(b"")
    untracked = {**common, "tracking": False, "tracking_uri": None, "tracking_fallback": None, "trust_bundle": False}
    job = _fold_job(0, tmp_path, BUNDLE, data, 3, overrides, untracked, None, save_prob=False)
    args = build_parser().parse_args(job.args)
    assert job.resumed and (args.resume, args.fold, args.output, args.data) == (tmp_path / "fold_0", 0, None, None)
    assert (args.overrides, args.preset, args.save_prob, args.no_tracking, args.tracking_uri) == (
        None, None, False, True, None)
    # One without it (killed before its first checkpoint) is removed and trained again.
    (tmp_path / "fold_2" / "configs").mkdir(parents=True)
    job = _fold_job(2, tmp_path, BUNDLE, data, 3, overrides, untracked, None, save_prob=False)
    assert not job.resumed and not (tmp_path / "fold_2").exists()


def test_a_failed_fold_lets_the_running_ones_finish_then_names_its_status_and_log(tmp_path):
    fails = FoldJob(0, ["no-such-command"], tmp_path / "logs" / "fold_0.log")
    works = FoldJob(1, ["--version"], tmp_path / "logs" / "fold_1.log")
    done: list[tuple[int, str]] = []
    with pytest.raises(MedsegError) as raised:
        run_fold_jobs([fails, works], ["cpu", "cpu"], lambda k, device: done.append((k, device)))
    assert done == [(1, "cpu")]  # the other fold, running, finished and was recorded
    message = str(raised.value)
    assert message.startswith(f"fold 0 failed (exit status 2); its log {fails.log} ends:")
    assert "invalid choice: 'no-such-command'" in message and "fold 1" not in message
    assert "medseg cv: fold 1 on cpu" in works.log.read_text()
    # On one device, the fold after a failed one does not start.
    done.clear()
    with pytest.raises(MedsegError, match="fold 2 failed") as raised:
        run_fold_jobs([FoldJob(2, ["no-such-command"], tmp_path / "logs" / "fold_2.log"),
                       FoldJob(3, ["--version"], tmp_path / "logs" / "fold_3.log")], ["cpu"], lambda *a: done.append(a))
    assert done == [] and not (tmp_path / "logs" / "fold_3.log").exists()
    assert "not started: fold(s) 3" in str(raised.value)


def test_devices_are_read_and_checked_before_anything_starts(tiny_brats, tmp_path, monkeypatch):
    from medseg.engine.cv import run_cv

    assert parse_devices(["0", "1"]) == parse_devices(["cuda:0", "cuda:1"]) == parse_devices(["0,1"]) == [
        "cuda:0", "cuda:1"]
    assert parse_devices(["CPU", "cpu,cuda:3"]) == ["cpu", "cpu", "cuda:3"]
    for bad in (["gpu0"], ["cuda"], ["0,,1"], ["cuda:-1"], []):
        with pytest.raises(MedsegError, match="--devices"):
            parse_devices(bad)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cv"
    with pytest.raises(MedsegError, match=r"--devices cuda:0: torch sees no CUDA GPU"):
        run_cv(BUNDLE, tiny_brats, folds=2, output=out, tracking=False, devices=["cpu", "cuda:0"])
    assert not out.exists()
    check_devices(["cpu", "cpu"])  # no GPU needed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_devices(["cuda:0", "cuda:1", "cuda:1"])
    with pytest.raises(MedsegError, match=r"--devices cuda:2: torch sees 2 GPU\(s\), cuda:0 to cuda:1"):
        check_devices(["cuda:0", "cuda:2"])
    # Under a scheduler's CUDA_VISIBLE_DEVICES, cuda:N is its N-th GPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert (visible_devices("cuda:1"), visible_devices("cpu")) == ("7", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_devices("cuda:1") == "1"

    refused = medseg("cv", BUNDLE, "--data", tiny_brats, "--output", out, "--no-tracking", "--devices", "gpu0",
                     cwd=tmp_path)
    assert refused.returncode == 2 and "--devices 'gpu0': not a device" in refused.stderr
    assert not out.exists()


def test_a_cv_folder_in_use_is_refused(tiny_brats, tmp_path):
    """A second medseg cv on a folder would restart the folds the first one is training."""
    import fcntl
    import os

    from medseg.engine.cv import run_cv

    busy = tmp_path / "cv"
    busy.mkdir()
    fd = os.open(busy / ".medseg.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running medseg cv holds it
        with pytest.raises(MedsegError, match="in use by another medseg run"):
            run_cv(BUNDLE, tiny_brats, folds=2, output=busy, tracking=False, devices=["cpu", "cpu"])
    finally:
        os.close(fd)
    assert [p.name for p in busy.iterdir()] == [".medseg.lock"]


@pytest.mark.gpu
def test_folds_train_one_per_gpu(tiny_brats, tmp_path):
    """Two GPUs: a fold on each (with one GPU: a fold on it and one on the CPU), each process seeing one device."""
    devices = ["0", "1"] if torch.cuda.device_count() >= 2 else ["0", "cpu"]
    out = tmp_path / "cv"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = medseg("cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", out, "--tracking-uri", store,
                    "--devices", *devices, *set_args({**CV, "max_epochs": "1"}), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    state = json.loads((out / "cv.json").read_text())
    expected = {"cuda:0", "cuda:1"} if devices == ["0", "1"] else {"cuda:0", "cpu"}
    assert set(state["trained_on"].values()) == expected
    client = MlflowClient(store)
    children = _children(client, state["parent_run_id"])
    on = {c.data.params["fold"]: c.data.tags["medseg.device"] for c in children}
    for k, device in state["trained_on"].items():
        # Each fold process sees its one GPU as cuda:0; a CPU fold sees none.
        assert on[k].startswith("cuda:0" if device != "cpu" else "cpu"), on

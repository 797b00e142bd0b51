"""Write the run's output folder as a complete MONAI bundle that ``medseg infer`` can use directly.

At start: ``configs/`` (``train.json`` with the effective values of the run, the other
configs, ``metadata.json``, ``logging.conf``), ``docs/README.md`` and ``LICENSE`` are copied
from the source bundle. At the end: ``metadata.json`` receives the validation metrics and
the run's details. Checkpoints are written by :class:`~medseg.engine.handlers.run_state.RunStateHandler`.
After each write the configs are signed with the user's key (:func:`medseg.engine.trust.sign_bundle`),
which is what lets ``--resume`` and ``medseg infer`` trust this folder, and nothing else.
The user's overrides are kept as given under the ``overrides`` id, for ``medseg reproduce``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from medseg.checkpoint import ModelSpec
from medseg.engine.handlers.record import run_record
from medseg.engine.trust import sign_bundle, signature_valid
from medseg.errors import MedsegError
from medseg.utils.atomic import atomic_write_text

logger = logging.getLogger("medseg.train")

COPIED = ("configs/inference.json", "configs/evaluate.json", "configs/multi_gpu_train.json",
          "configs/logging.conf", "docs/README.md", "LICENSE")


def _plain(value: Any) -> Any:
    """Make config values JSON-serialisable (tuples, tensors, paths)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


# Ids that say where and how this machine runs the config, not what it trains: never recorded as overrides.
LOCAL_IDS = frozenset({"bundle_root", "dataset_dir", "output_dir", "resume_dir", "tracking_enabled", "tracking_uri",
                       "tracking_fallback", "experiment_name", "run_name", "register_name", "reproduction_of",
                       "parent_run_id", "overrides", "_meta_"})


def running_config() -> dict[str, Any] | None:
    """The raw config, as written, of the MONAI ``ConfigParser`` that is evaluating this call.

    Called from a bundle config (``"config": "$medseg.engine.handlers.output_bundle.running_config()"``)
    it returns the merged content of every config file and every override given (``--set``,
    ``python -m monai.bundle run --config_file "[a, b]" --id value``) before MONAI instantiates
    anything, which is what a reproduction must train again. MONAI gives an expression no handle
    on its parser, so the evaluating parser is found on the call stack; ``None`` outside one.
    """
    import copy
    import inspect

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return copy.deepcopy(candidate.get())
            frame = frame.f_back
    finally:
        del frame
    return None


def _written_ids(value: Any) -> Any:
    """``value`` with MONAI's id separator as bundles write it (``#``): parsing rewrites references to ``::``."""
    return json.loads(json.dumps(value, default=str).replace("::", "#"))


def resolved_train_config(bundle_root: str | Path, values: dict[str, Any], train_config: str = "configs/train.json"
                          ) -> dict[str, Any]:
    """The bundle's raw train config with ``values`` (id -> effective value) set in it."""
    parser = ConfigParser()
    parser.read_config(Path(bundle_root) / train_config)
    for key, value in values.items():
        parser[key] = _plain(value)
    return parser.get()


class OutputBundleHandler:
    """Write the output bundle's configs at start and its metrics at the end.

    Args:
        bundle_root: the source bundle folder.
        output_dir: the run's output folder (becomes a bundle).
        values: effective values of the run's top-level ids (and any other overridden ids).
        overrides: further ``id -> value`` overrides given on the command line.
        train_config: the train config file relative to ``bundle_root``.
        evaluator: the validation evaluator, whose best metric is recorded.
        is_main_process: under DDP only rank 0 writes.
        config: the run's raw merged config (:func:`running_config`): every top-level id that
            differs from the source bundle's ``train.json`` (components, extra config files,
            command-line ids) is recorded as written, in the output ``train.json`` and under its
            ``overrides`` id, so ``medseg reproduce`` retrains what was run.
    """

    def __init__(self, bundle_root: str | Path, output_dir: str | Path, values: dict[str, Any],
                 overrides: dict[str, Any] | None = None, train_config: str = "configs/train.json",
                 evaluator: Engine | None = None, is_main_process: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.is_main_process = is_main_process
        self.evaluator = evaluator
        self.bundle_root = Path(bundle_root)
        self.output_dir = Path(output_dir)
        self.values = {**dict(values), **dict(overrides or {})}
        self.overrides = dict(overrides or {})
        self.config = config
        self.train_config = train_config
        self.resolved: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Register on the trainer (nothing to do on DDP ranks other than 0)."""
        if not self.is_main_process:
            return
        engine.add_event_handler(Events.STARTED, self.write_configs)
        engine.add_event_handler(Events.COMPLETED, self.write_metadata)

    def write_configs(self, engine: Engine | None = None) -> Path:
        """Write the resolved train config and copy the bundle's other files into the output folder."""
        same = self.output_dir.resolve() == self.bundle_root.resolve()
        if same and not signature_valid(self.output_dir):
            raise MedsegError(f"{self.output_dir}: the output folder is the source bundle; medseg writes only into "
                              "an output bundle it created (give --output another folder)")
        self.resolved = resolved_train_config(self.bundle_root, self.values, self.train_config)
        # The output folder is itself the bundle root from now on.
        self.resolved["bundle_root"] = str(self.output_dir.resolve())
        # On resume the earlier overrides are in the raw config already; new ones are added to them.
        earlier = self.resolved.get("overrides") if isinstance(self.resolved.get("overrides"), dict) else {}
        differing: dict[str, Any] = {}
        if self.config is not None:
            given = self.config.get("overrides") if isinstance(self.config.get("overrides"), dict) else {}
            differing = self._differing(self.config)
            self.resolved.update(differing)
            earlier = {**earlier, **given}
        self.resolved["overrides"] = {**earlier, **_plain(self.overrides), **differing}
        out = self.output_dir / "configs" / "train.json"
        if not same:
            for rel in COPIED:
                src = self.bundle_root / rel
                if src.is_file():
                    (self.output_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, self.output_dir / rel)
            self._align_inference_config(run_record(engine).model_spec if engine is not None else None)
            meta_src = self.bundle_root / "configs" / "metadata.json"
            if meta_src.is_file() and not (self.output_dir / "configs" / "metadata.json").exists():
                shutil.copyfile(meta_src, self.output_dir / "configs" / "metadata.json")
        if isinstance(self.values.get("plan"), dict):  # a planned run: its plan and fingerprint go along
            from medseg.planning import record_plan_files

            record_plan_files(self.output_dir, self.values["plan"], self.values.get("plan_file"))
        atomic_write_text(out, json.dumps(self.resolved, indent=2) + "\n")
        sign_bundle(self.output_dir)
        return out

    def _differing(self, config: dict[str, Any]) -> dict[str, Any]:
        """The top-level ids of the run's raw config that differ from what the bundle's own files give.

        Compared with the bundle's ``train.json`` and, for a ``torchrun`` run, with it merged with
        the bundle's own ``multi_gpu_train.json`` (whose DDP settings are not the user's
        overrides): the smaller difference is the one the user made.
        """
        candidates = [self.resolved]
        multi = self.bundle_root / "configs" / "multi_gpu_train.json"
        if multi.is_file():
            parser = ConfigParser()
            parser.read_config([str(self.bundle_root / self.train_config), str(multi)])
            for key, value in self.values.items():
                parser[key] = _plain(value)
            candidates.append(parser.get())
        config = _written_ids(config)
        diffs = [{k: v for k, v in config.items()
                  if k not in LOCAL_IDS and k not in self.values and _written_ids(base.get(k)) != v}
                 for base in candidates]
        return min(diffs, key=len)

    def _align_inference_config(self, spec: ModelSpec | None) -> None:
        """Give the output bundle's inference config this run's model, so it loads ``models/model.pt``.

        Every id the model decides (network, channels, classes, spacing, label values and the
        sliding-window settings) takes the value of ``spec``, the description
        :class:`~medseg.engine.handlers.run_state.RunStateHandler` writes into the checkpoint
        (it hands it over in the run record, :mod:`medseg.engine.handlers.record`); without one only ``bundle_root`` changes.
        """
        path = self.output_dir / "configs" / "inference.json"
        if not path.is_file():
            return
        config = json.loads(path.read_text())
        for key, value in (spec.bundle_values() if spec is not None else {}).items():
            if key in config:
                config[key] = _plain(value)
        config["bundle_root"] = str(self.output_dir.resolve())
        atomic_write_text(path, json.dumps(config, indent=4) + "\n")

    def write_metadata(self, engine: Engine) -> Path:
        """Record the final and best validation metrics in ``configs/metadata.json``."""
        path = self.output_dir / "configs" / "metadata.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        record = run_record(engine)
        history = record.history
        final = {k: v[-1][1] for k, v in history.items() if v}
        meta["version"] = meta.get("version", "0.1.0")
        meta["medseg_training"] = {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "epochs": int(engine.state.epoch),
            "final_metrics": final,
            "best_metric": float(self.evaluator.state.best_metric) if self.evaluator is not None else None,
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch) if self.evaluator is not None else None,
            "mlflow_run_id": record.mlflow_run_id,
            # models/model.pt: "best" by validation, or "last" weights when no score improved
            "model": record.model_selection,
            "source_bundle": str(self.bundle_root.resolve()),
        }
        meta.setdefault("performance", {})
        for key, value in final.items():
            if key.startswith("val_"):
                meta["performance"][key] = value
        atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
        sign_bundle(self.output_dir)
        return path

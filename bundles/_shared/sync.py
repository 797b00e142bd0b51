"""Assemble every bundle's configs from the shared sources, or check that they are current.

Each bundle under ``bundles/`` stays a complete MONAI bundle: ``configs/train.json`` runs on its
own (``python -m monai.bundle run --config_file bundles/NAME/configs/train.json``,
``ConfigWorkflow(config_file=...)``, MONAI Label, MONAI FL), and a bundle folder can be copied
anywhere. What the bundles share is written once, here:

``train.json``
    the wiring every bundle shares: imports, run folders, tracking ids, the handler chain,
    trainer and evaluator.
``train_volume.json``, ``train_image.json``
    what the 3D bundles, or the 2D ones, share on top of it.
``bundles.json``
    which of the two each bundle is.
``evaluate.json``, ``multi_gpu_train.json``, ``logging.conf``
    copied byte for byte into every bundle.

A bundle's own ``configs/train.delta.json`` holds only what differs from the shared layers.
``configs/train.json`` is MONAI's merge of the three files in that order
(``ConfigParser.load_config_files``: a ``a#b`` key sets a nested id, a ``+key`` extends a list
or updates a dict), so ``python -m monai.bundle run --config_file
"['bundles/_shared/train.json','bundles/_shared/train_volume.json','bundles/NAME/configs/train.delta.json']"``
runs the same config. Edit the sources, then run::

    python bundles/_shared/sync.py          # rewrite what is stale
    python bundles/_shared/sync.py --check  # exit 1 and name each stale file (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parent
BUNDLES = SHARED.parent
COPIED = ("evaluate.json", "multi_gpu_train.json", "logging.conf")
DELTA = "train.delta.json"


def layers(bundle: str, shared: Path = SHARED) -> list[Path]:
    """The config files whose MONAI merge is ``bundle``'s ``train.json``, in merge order."""
    kinds = json.loads((shared / "bundles.json").read_text())
    if bundle not in kinds:
        raise SystemExit(f"{shared / 'bundles.json'}: no entry for bundle {bundle!r}")
    return [shared / "train.json", shared / f"train_{kinds[bundle]}.json",
            shared.parent / bundle / "configs" / DELTA]


def merged_train_config(bundle: str, shared: Path = SHARED) -> dict[str, Any]:
    """``bundle``'s full training config, merged exactly as ``monai.bundle`` merges a list of files."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files([str(p) for p in layers(bundle, shared)])


def _ordered(new: Any, old: Any) -> Any:
    """``new`` with its dict keys in ``old``'s order where ``old`` has them (a stable, readable diff)."""
    if isinstance(new, dict):
        old = old if isinstance(old, dict) else {}
        keys = [k for k in old if k in new] + [k for k in new if k not in old]
        return {k: _ordered(new[k], old.get(k)) for k in keys}
    if isinstance(new, list):
        old = old if isinstance(old, list) else []
        return [_ordered(v, old[i] if i < len(old) else None) for i, v in enumerate(new)]
    return new


def dumps(value: Any, indent: int = 0) -> str:
    """JSON with 4-space indents and short lists of plain values on one line, as the bundles are written."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 4)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and (any(isinstance(v, (dict, list)) for v in value)
                                              or len(json.dumps(value)) > 80):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 4) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def expected_files(shared: Path = SHARED) -> dict[Path, bytes]:
    """Every generated file under ``bundles/`` and the bytes it should hold."""
    out: dict[Path, bytes] = {}
    for bundle in json.loads((shared / "bundles.json").read_text()):
        configs = shared.parent / bundle / "configs"
        train = configs / "train.json"
        old = json.loads(train.read_text()) if train.is_file() else None
        out[train] = (dumps(_ordered(merged_train_config(bundle, shared), old)) + "\n").encode()
        for name in COPIED:
            out[configs / name] = (shared / name).read_bytes()
    return out


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None, shared: Path = SHARED) -> int:
    """Rewrite the stale generated files, or with ``--check`` list them and return 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    expected = expected_files(shared)
    stale = [p for p, data in expected.items() if not p.is_file() or p.read_bytes() != data]
    for path in stale:
        rel = path.relative_to(shared.parent.parent)
        if args.check:
            print(f"{rel}: stale; it is generated from bundles/_shared and {DELTA} "
                  f"(edit those, then run python bundles/_shared/sync.py)", file=sys.stderr)
        else:
            _write(path, expected[path])
            print(f"wrote {rel}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

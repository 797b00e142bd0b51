"""What leaves the machine, and how a reproduction can tell it was not changed on the server.

Every artifact medseg uploads to MLflow goes through :func:`scrubbed_view`, with the same
scrubber (:func:`medseg.tracking.phi.scrub_phi`) as params, tags and ``config/resolved.json``.
The config and manifest that ``medseg reproduce`` reads back are logged with their sha256 as
params (:data:`DIGEST_PARAMS`): MLflow params cannot be changed through its API once logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.tracking.params import log_params_batched
from medseg.tracking.phi import scrub_phi
from medseg.utils.atomic import atomic_write_text

CONFIG_ARTIFACT = "config/resolved.json"
MANIFEST_ARTIFACT = "dataset/manifest.json"
DIGEST_PARAMS = {CONFIG_ARTIFACT: "medseg.sha256.config", MANIFEST_ARTIFACT: "medseg.sha256.manifest"}


def upload_text(client: Any, run_id: str, text: str, artifact_file: str, resumed: bool = False) -> None:
    """Upload ``text`` as the artifact ``artifact_file``, recording its sha256 if it is in :data:`DIGEST_PARAMS`.

    A resumed run that uploads a changed config cannot change the param: it adds
    ``<param>.<sha256 prefix>`` beside it.
    """
    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="medseg-mlflow-") as tmp:
        local = atomic_write_text(Path(tmp) / name, text)
        client.log_artifact(run_id, str(local), folder or None)
    if artifact_file not in DIGEST_PARAMS:
        return
    key, digest = DIGEST_PARAMS[artifact_file], hashlib.sha256(text.encode("utf-8")).hexdigest()
    existing = client.get_run(run_id).data.params if resumed else {}
    if existing.get(key, digest) != digest:
        key = f"{key}.{digest[:12]}"
    if existing.get(key) != digest:
        log_params_batched(client, run_id, {key: digest})


def scrubbed_view(path: Path, into: Path, durable: bool = False, exclude: Collection[str] = ()) -> Path:
    """A copy of ``path`` under ``into`` fit to leave the machine: JSON files scrubbed of identifiers.

    Other files are linked, not copied (a bundle's checkpoints are large); hidden files and
    folders (names starting with ``.``) are left out.

    Args:
        path: the file or folder.
        into: an empty folder for the view.
        durable: hard links (copies across file systems) instead of symbolic links, so the view
            keeps today's content after the originals are replaced or deleted (the local spool,
            :mod:`medseg.tracking.spool`; medseg replaces files by renaming, so a hard link keeps
            the old content).
        exclude: for a folder, top-level entries of it left out (``("models",)``: a bundle
            without its weights).

    Returns:
        The staged file or folder.

    Raises:
        MedsegError: a JSON file cannot be parsed, so it cannot be scrubbed (it is not uploaded).
    """
    def stage(src: Path, dst: Path) -> None:
        if src.suffix.lower() == ".json":
            try:
                data = json.loads(src.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise MedsegError(f"{src}: not uploaded: not valid JSON, so it cannot be scrubbed of "
                                  f"patient identifiers ({err})") from err
            cleaned = scrub_phi(data) if isinstance(data, dict) else scrub_phi({"_": data})["_"]
            dst.write_text(json.dumps(cleaned, indent=2, default=str) + "\n", encoding="utf-8")
        elif not durable:
            dst.symlink_to(src.resolve())
        else:
            try:
                os.link(src.resolve(), dst)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(src, dst)

    target = into / path.name
    if path.is_file():
        stage(path, target)
        return target
    for src in sorted(path.rglob("*")):
        rel = src.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not src.is_file() or src.is_symlink() \
                or rel.parts[0] in exclude:
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        stage(src, target / rel)
    target.mkdir(parents=True, exist_ok=True)
    return target

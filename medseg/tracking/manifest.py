"""Dataset manifests: the relative path, size and sha256 of every file of a dataset.

A training run logs the manifest as an MLflow artifact and its ``dataset_hash`` as a tag;
a reproduction compares the manifest with the dataset on disk before retraining and
names every file that is missing, changed or extra.

Hidden files (any path component starting with ``.``: ``.DS_Store``, macOS ``._*``
resource forks, ``.git``) are skipped while walking a folder, because copying a dataset
between machines creates and drops them freely; a hidden file named explicitly in
``files`` is included.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.utils.atomic import atomic_write_text

MANIFEST_FORMAT = "medseg-manifest/1"
CHUNK_SIZE = 1 << 20  # 1 MiB: large enough that hashlib releases the GIL while hashing


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> str:
    """Hash a file in chunks, so that multi-GB volumes never sit in memory.

    Args:
        path: the file.
        chunk_size: bytes read per step (default 1 MiB).

    Returns:
        The hex sha256 digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> list[Path]:
    """Every non-hidden regular file under ``root`` (symlinks followed, loops avoided)."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            if not name.startswith(".") and path.is_file():
                found.append(path.relative_to(root))
    return found


def _listed(root: Path, files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve explicitly listed files (absolute or relative to ``root``); folders expand."""
    out: list[Path] = []
    # normpath, not resolve: datasets are often folders of symlinks into shared storage.
    root_abs = Path(os.path.normpath(root.absolute()))
    for item in files:
        full = Path(os.path.normpath(root_abs / item))  # an absolute ``item`` replaces root_abs
        try:
            rel = full.relative_to(root_abs)
        except ValueError as err:
            raise MedsegError(f"manifest: {item} is outside the dataset root {root}") from err
        if full.is_dir():
            out.extend(rel / sub for sub in _walk(full))
        elif full.is_file():
            out.append(rel)
        else:
            raise MedsegError(f"manifest: listed file {full} does not exist")
    return out


def dataset_hash(entries: list[dict[str, Any]]) -> str:
    """The sha256 over the sorted ``path<TAB>size<TAB>sha256`` lines of a manifest.

    Args:
        entries: manifest entries with ``path``, ``size`` and ``sha256``.

    Returns:
        A hex digest that changes when any file is added, removed, renamed or edited.
    """
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["path"]):
        digest.update(f"{entry['path']}\t{entry['size']}\t{entry['sha256']}\n".encode())
    return digest.hexdigest()


def build_manifest(
    root: str | os.PathLike[str],
    files: Iterable[str | os.PathLike[str]] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Describe every file of a dataset by relative path, size and sha256.

    Args:
        root: the dataset folder.
        files: only these files (absolute or relative to ``root``; folders expand);
            ``None`` walks the whole of ``root``, skipping hidden files.
        workers: threads hashing in parallel; default ``min(4, cpu_count)``.

    Returns:
        ``{"format", "root", "created", "selection": "all"|"listed", "count",
        "total_size", "dataset_hash", "files": [{"path", "size", "sha256"}, ...]}`` with
        ``files`` sorted by relative POSIX path.

    Raises:
        MedsegError: ``root`` is not a folder, or a listed file is missing or outside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedsegError(f"manifest: dataset root {root} is not a folder")
    rel_paths = _walk(root) if files is None else _listed(root, files)
    unique = sorted({p.as_posix() for p in rel_paths})
    workers = workers or min(4, os.cpu_count() or 1)

    def describe(rel: str) -> dict[str, Any]:
        full = root / rel
        return {"path": rel, "size": full.stat().st_size, "sha256": sha256_file(full)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        entries = list(pool.map(describe, unique))
    return {
        "format": MANIFEST_FORMAT,
        "root": str(root.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selection": "all" if files is None else "listed",
        "count": len(entries),
        "total_size": sum(e["size"] for e in entries),
        "dataset_hash": dataset_hash(entries),
        "files": entries,
    }


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a manifest as indented JSON, atomically.

    Args:
        manifest: the result of :func:`build_manifest`.
        path: the target ``.json`` file.

    Returns:
        The path written.
    """
    return atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=False) + "\n")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a manifest written by :func:`write_manifest`.

    Args:
        path: the ``.json`` file.

    Returns:
        The manifest dict.

    Raises:
        MedsegError: the file is missing, not JSON, or lacks ``files`` entries with
            ``path``, ``size`` and ``sha256``.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise MedsegError(f"manifest: {path} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedsegError(f"manifest: {path} is not valid JSON ({err})") from err
    validate_manifest(manifest, source=str(path))
    return manifest


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Raise :class:`MedsegError` unless ``manifest`` has well-formed ``files`` entries.

    Args:
        manifest: the parsed manifest.
        source: where it came from, for the message.
    """
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        raise MedsegError(f"manifest: {source} has no 'files' list")
    for i, entry in enumerate(files):
        if not (isinstance(entry, dict) and {"path", "size", "sha256"} <= entry.keys()):
            raise MedsegError(f"manifest: {source} entry {i} lacks path, size or sha256: {entry!r}")


@dataclass(frozen=True)
class ChangedFile:
    """A file whose size or content differs from the manifest."""

    path: str
    reason: str  # "size" or "sha256"
    expected_size: int
    actual_size: int
    expected_sha256: str
    actual_sha256: str | None  # None when the size already differed (not hashed)


@dataclass(frozen=True)
class ManifestDiff:
    """The files of a dataset that do not match its manifest."""

    missing: list[str] = field(default_factory=list)
    changed: list[ChangedFile] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when nothing is missing, changed or extra."""
        return not (self.missing or self.changed or self.extra)

    def format(self, limit: int | None = None) -> str:
        """A readable table naming every differing file (all of them unless ``limit``).

        Args:
            limit: show at most this many rows, then a count of the rest.

        Returns:
            One header line and one row per file: status, path, expected and actual.
        """
        if self.ok:
            return "dataset matches the manifest"
        rows = [("missing", p, "in manifest", "absent") for p in self.missing]
        for c in self.changed:
            if c.reason == "size":
                rows.append(("changed", c.path, f"{c.expected_size} bytes", f"{c.actual_size} bytes"))
            else:
                exp, act = c.expected_sha256[:12], (c.actual_sha256 or "")[:12]
                rows.append(("changed", c.path, f"sha256 {exp}…", f"sha256 {act}…"))
        rows += [("extra", p, "not in manifest", "present") for p in self.extra]
        rows.sort(key=lambda r: (r[1], r[0]))
        shown = rows if limit is None else rows[:limit]
        header = ("STATUS", "PATH", "EXPECTED", "FOUND")
        widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
        lines = [
            f"{len(self.missing)} missing, {len(self.changed)} changed, {len(self.extra)} extra file(s):",
            "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]
        if len(rows) > len(shown):
            lines.append(f"... and {len(rows) - len(shown)} more")
        return "\n".join(lines)


def compare_manifest(manifest: dict[str, Any], root: str | os.PathLike[str]) -> ManifestDiff:
    """Compare a dataset folder with a manifest.

    Sizes are compared first and only files of the right size are hashed. Extra files
    are looked for only when the manifest covered the whole folder (``selection`` is
    ``"all"``), since a listed subset says nothing about the other files.

    Args:
        manifest: the result of :func:`build_manifest` or :func:`read_manifest`.
        root: the dataset folder on this machine.

    Returns:
        The :class:`ManifestDiff`; check ``.ok``.

    Raises:
        MedsegError: ``root`` is not a folder or the manifest is malformed.
    """
    validate_manifest(manifest)
    root = Path(root)
    if not root.is_dir():
        raise MedsegError(f"manifest: dataset root {root} is not a folder")
    missing: list[str] = []
    changed: list[ChangedFile] = []
    to_hash: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        full = root / entry["path"]
        if not full.is_file():
            missing.append(entry["path"])
            continue
        size = full.stat().st_size
        if size != int(entry["size"]):  # a size change needs no hashing
            expected = int(entry["size"])
            changed.append(ChangedFile(entry["path"], "size", expected, size, entry["sha256"], None))
        else:
            to_hash.append(entry)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda e: sha256_file(root / e["path"]), to_hash))
    for entry, digest in zip(to_hash, digests):
        if digest != entry["sha256"]:
            size = int(entry["size"])
            changed.append(ChangedFile(entry["path"], "sha256", size, size, entry["sha256"], digest))
    extra: list[str] = []
    if manifest.get("selection", "all") == "all":
        known = {e["path"] for e in manifest["files"]}
        extra = sorted(p.as_posix() for p in _walk(root) if p.as_posix() not in known)
    changed.sort(key=lambda c: c.path)
    return ManifestDiff(missing=sorted(missing), changed=changed, extra=extra)


def verify_dataset(manifest: dict[str, Any], root: str | os.PathLike[str]) -> None:
    """Raise :class:`MedsegError` naming every differing file unless the dataset matches.

    Args:
        manifest: the manifest logged by the original run.
        root: the dataset folder on this machine.
    """
    diff = compare_manifest(manifest, root)
    if not diff.ok:
        raise MedsegError(f"dataset at {root} does not match the run's manifest; {diff.format()}")

"""Dataset manifests: build, hash, compare, read/write."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.tracking.manifest import (
    build_manifest,
    compare_manifest,
    dataset_hash,
    read_manifest,
    verify_dataset,
    write_manifest,
)

EXPECTED_PATHS = [
    "dataset.json",
    "imagesTr/case_000.nii.gz",
    "imagesTr/case_001.nii.gz",
    "labelsTr/case_000.nii.gz",
    "labelsTr/case_001.nii.gz",
]


def test_build_lists_sorted_files_with_size_and_sha256_and_skips_hidden(tiny_dataset: Path) -> None:
    manifest = build_manifest(tiny_dataset, workers=2)
    assert [e["path"] for e in manifest["files"]] == EXPECTED_PATHS
    first = manifest["files"][1]
    data = (tiny_dataset / "imagesTr" / "case_000.nii.gz").read_bytes()
    assert first["size"] == len(data) == 2048
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["count"] == 5
    assert manifest["total_size"] == sum((tiny_dataset / p).stat().st_size for p in EXPECTED_PATHS)
    assert manifest["selection"] == "all"
    assert manifest["dataset_hash"] == dataset_hash(manifest["files"])


def test_streamed_hash_matches_for_files_larger_than_one_chunk(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * (5 * 4096 + 3)  # ~5 MiB, not a multiple of the chunk size
    big.write_bytes(data)
    entry = build_manifest(tmp_path)["files"][0]
    assert entry == {"path": "big.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_dataset_hash_is_stable_and_changes_with_content(tiny_dataset: Path) -> None:
    first = build_manifest(tiny_dataset)["dataset_hash"]
    assert build_manifest(tiny_dataset)["dataset_hash"] == first
    (tiny_dataset / "dataset.json").write_text('{"name": "tinY"}\n')
    assert build_manifest(tiny_dataset)["dataset_hash"] != first


def test_explicit_files_include_hidden_and_expand_folders(tiny_dataset: Path) -> None:
    listed = build_manifest(tiny_dataset, files=["labelsTr", ".DS_Store", tiny_dataset / "dataset.json"])
    assert [e["path"] for e in listed["files"]] == [
        ".DS_Store",
        "dataset.json",
        "labelsTr/case_000.nii.gz",
        "labelsTr/case_001.nii.gz",
    ]
    assert listed["selection"] == "listed"


def test_listed_file_outside_root_or_missing_is_an_error(tiny_dataset: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    with pytest.raises(MedsegError, match="outside the dataset root"):
        build_manifest(tiny_dataset, files=[outside])
    with pytest.raises(MedsegError, match="outside the dataset root"):
        build_manifest(tiny_dataset, files=["../elsewhere.txt"])
    with pytest.raises(MedsegError, match="nope.nii.gz does not exist"):
        build_manifest(tiny_dataset, files=["nope.nii.gz"])
    with pytest.raises(MedsegError, match="is not a folder"):
        build_manifest(tmp_path / "missing")


def test_compare_detects_changed_byte_missing_and_extra_files(tiny_dataset: Path) -> None:
    manifest = build_manifest(tiny_dataset)
    assert compare_manifest(manifest, tiny_dataset).ok
    # Same size, one byte different: only the hash can see it.
    image = tiny_dataset / "imagesTr" / "case_001.nii.gz"
    data = bytearray(image.read_bytes())
    data[100] ^= 0xFF
    image.write_bytes(bytes(data))
    (tiny_dataset / "labelsTr" / "case_000.nii.gz").write_bytes(b"shorter")
    (tiny_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    (tiny_dataset / "imagesTr" / "case_002.nii.gz").write_bytes(b"new case")
    (tiny_dataset / ".hidden_new").write_bytes(b"ignored")

    diff = compare_manifest(manifest, tiny_dataset)
    assert not diff.ok
    assert diff.missing == ["labelsTr/case_001.nii.gz"]
    assert diff.extra == ["imagesTr/case_002.nii.gz"]
    changed = {c.path: c for c in diff.changed}
    assert set(changed) == {"imagesTr/case_001.nii.gz", "labelsTr/case_000.nii.gz"}
    assert changed["imagesTr/case_001.nii.gz"].reason == "sha256"
    assert changed["imagesTr/case_001.nii.gz"].actual_sha256 == hashlib.sha256(bytes(data)).hexdigest()
    assert changed["labelsTr/case_000.nii.gz"].reason == "size"
    assert changed["labelsTr/case_000.nii.gz"].actual_size == len(b"shorter")

    table = diff.format()
    assert table.startswith("1 missing, 2 changed, 1 extra file(s):")
    for path in ("labelsTr/case_001.nii.gz", "imagesTr/case_002.nii.gz", "imagesTr/case_001.nii.gz"):
        assert path in table
    assert "210 bytes" in table and "7 bytes" in table
    assert len(table.splitlines()) == 2 + 4
    assert "... and 3 more" in diff.format(limit=1)

    with pytest.raises(MedsegError, match="labelsTr/case_001.nii.gz"):
        verify_dataset(manifest, tiny_dataset)


def test_listed_manifest_does_not_report_unlisted_files_as_extra(tiny_dataset: Path) -> None:
    manifest = build_manifest(tiny_dataset, files=["imagesTr"])
    (tiny_dataset / "notes.txt").write_text("unrelated")
    assert compare_manifest(manifest, tiny_dataset).ok


def test_write_and_read_round_trip(tiny_dataset: Path, tmp_path: Path) -> None:
    manifest = build_manifest(tiny_dataset)
    path = write_manifest(manifest, tmp_path / "out" / "manifest.json")
    assert read_manifest(path) == manifest
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp file left


def test_read_rejects_missing_and_malformed_manifests(tmp_path: Path) -> None:
    with pytest.raises(MedsegError, match="does not exist"):
        read_manifest(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MedsegError, match="not valid JSON"):
        read_manifest(bad)
    bad.write_text(json.dumps({"files": [{"path": "a"}]}))
    with pytest.raises(MedsegError, match="entry 0 lacks path, size or sha256"):
        read_manifest(bad)

"""medseg's user-facing errors keep their message and fields when they cross a process boundary.

Worker processes (the fingerprint pool, cross-validation folds, ``medseg data synth``) send their
exceptions back pickled; an error class whose constructor takes more than the message cannot be
rebuilt by ``Exception``'s default pickling, and the parent then sees a ``TypeError`` or a broken
pool instead of the message that names the file.
"""

from __future__ import annotations

import errno
from concurrent.futures import ProcessPoolExecutor

import pytest

from medseg.errors import DataError, DiskFullError, InvalidValueError


def _raise(kind: str) -> None:
    if kind == "data":
        raise DataError("/data/case_007/t1.nii.gz", "not a NIfTI file", "bad magic")
    if kind == "disk":
        raise DiskFullError("/out/case_007.nii.gz", OSError(errno.ENOSPC, "No space left on device"))
    raise InvalidValueError("roi_size must be positive")


@pytest.mark.parametrize(
    ("kind", "error_type", "message"),
    [
        ("data", DataError, "/data/case_007/t1.nii.gz: not a NIfTI file (bad magic)"),
        ("disk", DiskFullError, "/out/case_007.nii.gz: cannot be written (No space left on device"),
        ("value", InvalidValueError, "roi_size must be positive"),
    ],
)
def test_an_error_raised_in_a_worker_process_reaches_the_parent_intact(kind, error_type, message):
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(error_type) as caught:
        pool.submit(_raise, kind).result()
    assert str(caught.value).startswith(message)
    if kind == "data":
        assert (caught.value.path, caught.value.rule, caught.value.detail) == (
            "/data/case_007/t1.nii.gz", "not a NIfTI file", "bad magic")
    if kind == "disk":
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == "/out/case_007.nii.gz"

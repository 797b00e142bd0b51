"""The fast gzip decoder reads the same NIfTI as zlib, and medseg still writes the bytes zlib writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from medseg.utils import fastgzip

EXAMPLE = Path(data_path) / "example4d.nii.gz"  # a real file shipped with nibabel


def _read(path: Path) -> tuple[np.ndarray, bytes]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.header.binaryblock


_SCRIPT = """
import sys, hashlib
import nibabel as nib, numpy as np
from medseg.utils.fastgzip import use_fast_gzip
backend = use_fast_gzip()
img = nib.load(sys.argv[1])
data = np.asarray(img.dataobj)
nib.save(nib.Nifti1Image(data, img.affine, img.header), sys.argv[2])
print(backend, hashlib.sha256(data.tobytes()).hexdigest(), hashlib.sha256(open(sys.argv[2], 'rb').read()).hexdigest())
"""


@pytest.mark.skipif(fastgzip.fast_gzip_backend() is None, reason="isal is not installed")
def test_fast_reads_equal_zlib_reads_and_writes_stay_zlibs(tmp_path):
    runs = {}
    for flag in ("0", "1"):
        out = tmp_path / f"copy{flag}.nii.gz"
        result = subprocess.run([sys.executable, "-c", _SCRIPT, str(EXAMPLE), str(out)], capture_output=True,
                                text=True, timeout=120, check=False,
                                env={**__import__("os").environ, fastgzip.FAST_GZIP_ENV: flag})
        assert result.returncode == 0, result.stderr[-2000:]
        runs[flag] = result.stdout.split()
    assert runs["0"][0] == "None" and runs["1"][0] == "isal"
    assert runs["0"][1] == runs["1"][1]  # the same voxels decoded
    assert runs["0"][2] == runs["1"][2]  # and the same file written (still zlib)


@pytest.mark.skipif(fastgzip.fast_gzip_backend() is None, reason="isal is not installed")
def test_in_process_reads_are_identical_and_idempotent(tmp_path):
    before = _read(EXAMPLE)
    assert fastgzip.use_fast_gzip() == "isal" and fastgzip.use_fast_gzip() == "isal"
    from nibabel import openers

    assert getattr(openers.ImageOpener.compress_ext_map[".gz"][0], "medseg_fast", False)
    after = _read(EXAMPLE)
    assert np.array_equal(before[0], after[0]) and before[1] == after[1]
    # Broken files fail as they did with zlib: truncated -> EOFError, corrupt -> zlib.error, so the
    # readers still name the file and the rule.
    from medseg.data.readers import read_nifti
    from medseg.errors import DataError

    data = EXAMPLE.read_bytes()
    truncated, corrupt = tmp_path / "truncated.nii.gz", tmp_path / "corrupt.nii.gz"
    truncated.write_bytes(data[:-200])
    corrupt.write_bytes(data[:300] + bytes(40) + data[340:])
    with pytest.raises(EOFError):
        np.asarray(nib.load(truncated).dataobj)
    import zlib

    with pytest.raises(zlib.error):
        np.asarray(nib.load(corrupt).dataobj)
    for path in (truncated, corrupt):
        with pytest.raises(DataError, match=f"{path.name}: "):
            read_nifti(path)


@pytest.mark.skipif(fastgzip.fast_gzip_backend() is None, reason="isal is not installed")
def test_use_zlib_gzip_undoes_the_fast_decoder_and_it_can_come_back():
    from nibabel import openers

    def fast() -> list[bool]:
        return [getattr(cls.compress_ext_map[".gz"][0], "medseg_fast", False)
                for cls in (openers.Opener, openers.ImageOpener)]

    original = _read(EXAMPLE)
    fastgzip.use_fast_gzip()
    assert fast() == [True, True]
    fastgzip.use_zlib_gzip()
    assert fast() == [False, False]
    after = _read(EXAMPLE)
    assert np.array_equal(original[0], after[0]) and original[1] == after[1]
    assert fastgzip.use_fast_gzip() == "isal" and fast() == [True, True]

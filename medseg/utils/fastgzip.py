"""Read ``.nii.gz`` files with a faster gzip decoder: ISA-L's igzip (the ``isal`` package).

Decoding is most of reading a BraTS case (four int16 volumes of 240x240x155, about 18 MB
compressed): nibabel decompresses with Python's ``gzip`` (zlib). ``isal.igzip`` decodes the
same streams to the same bytes several times faster (``benchmarks/gzip_decoding.py``).
:func:`use_fast_gzip` makes nibabel (and so MONAI's ``LoadImage``, which reads through it) use
it for **reading**; files are still **written** by zlib through nibabel, so the bytes medseg
writes are those it always wrote. Without ``isal`` (a platform with no wheel) nothing changes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("medseg.io")

__all__ = ["FAST_GZIP_ENV", "fast_gzip_backend", "use_fast_gzip", "use_zlib_gzip"]

#: ``MEDSEG_FAST_GZIP=0`` keeps Python's gzip (to compare, or to rule the decoder out).
FAST_GZIP_ENV = "MEDSEG_FAST_GZIP"
_installed: str | None = None


def fast_gzip_backend() -> str | None:
    """``"isal"`` when ISA-L's igzip can be imported, else ``None``."""
    try:
        import isal.igzip  # noqa: F401
    except ImportError:
        return None
    return "isal"


def _reader_class() -> type:
    """``isal.igzip.IGzipFile`` whose corrupt-stream errors are ``zlib.error``, as Python's gzip raises,
    so every caller that names a broken file (:mod:`medseg.data.readers`) still does."""
    import zlib

    from isal import igzip
    from isal.igzip_lib import IsalError

    class IGzipReader(igzip.IGzipFile):
        def _same_errors(self, method: str, *args: Any) -> Any:
            try:
                return getattr(super(), method)(*args)
            except IsalError as err:
                raise zlib.error(str(err)) from err

        def read(self, size: int = -1) -> bytes:
            return self._same_errors("read", size)

        def readinto(self, buffer: Any) -> int:
            return self._same_errors("readinto", buffer)

        def seek(self, offset: int, whence: int = 0) -> int:
            return self._same_errors("seek", offset, whence)

    return IGzipReader


def _opener(original: Any) -> Any:
    """nibabel's gzip opener with reads going to ``isal.igzip`` (writes unchanged)."""
    reader = _reader_class()

    def gzip_open(filename: Any, mode: str = "rb", compresslevel: int = 9, mtime: int = 0,
                  keep_open: bool = False) -> Any:
        if mode in ("r", "rb"):
            return reader(filename, "rb")
        return original(filename, mode, compresslevel, mtime, keep_open)

    gzip_open.medseg_fast = True  # type: ignore[attr-defined]
    gzip_open.medseg_original = original  # type: ignore[attr-defined]
    return gzip_open


def use_fast_gzip() -> str | None:
    """Make nibabel read ``.gz`` with the fast decoder, once per process; return its name (``None``: zlib).

    Idempotent. ``MEDSEG_FAST_GZIP=0`` turns it off.
    """
    global _installed
    if _installed is not None or os.environ.get(FAST_GZIP_ENV, "1") == "0":
        return _installed
    backend = fast_gzip_backend()
    if backend is None:
        return None
    from nibabel import openers

    for cls in {openers.Opener, openers.ImageOpener}:
        func, names = cls.compress_ext_map[".gz"]
        if not getattr(func, "medseg_fast", False):
            cls.compress_ext_map[".gz"] = (_opener(func), names)
    _installed = backend
    logger.debug("reading .gz with %s", backend)
    return backend


def use_zlib_gzip() -> None:
    """Undo :func:`use_fast_gzip`: nibabel reads ``.gz`` with Python's gzip (zlib) again, in this process.

    For comparisons in one process that must read as another program does (the benchmarks time
    stock MONAI, which reads with zlib, beside medseg); a later :func:`use_fast_gzip` installs
    the fast decoder again.
    """
    global _installed
    from nibabel import openers

    for cls in {openers.Opener, openers.ImageOpener}:
        func, names = cls.compress_ext_map[".gz"]
        if getattr(func, "medseg_fast", False):
            cls.compress_ext_map[".gz"] = (func.medseg_original, names)
    _installed = None

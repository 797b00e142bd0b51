"""Which bundles may run: MONAI configs execute Python (``$`` expressions, ``_target_``).

A bundle runs without ``--trust-bundle`` only if it lies inside medseg's own ``bundles/``
folder, inside the runs folder medseg writes its output bundles to, or inside a folder
listed in the ``MEDSEG_TRUSTED_BUNDLES`` environment variable (``os.pathsep``-separated).
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import MedsegError


def trusted_roots(runs_dir: str | Path = "runs") -> list[Path]:
    """The folders whose bundles run without ``--trust-bundle``."""
    import medseg

    roots = [Path(medseg.__file__).resolve().parents[1] / "bundles", Path(runs_dir).resolve()]
    roots += [Path(p).expanduser().resolve() for p in os.environ.get("MEDSEG_TRUSTED_BUNDLES", "").split(os.pathsep) if p]
    return roots


def check_bundle_trust(bundle: str | Path, trust: bool = False, runs_dir: str | Path = "runs") -> None:
    """Refuse to run a bundle from an untrusted folder unless ``trust`` is set.

    Raises:
        MedsegError: naming the bundle and saying why.
    """
    if trust:
        return
    path = Path(bundle).resolve()
    for root in trusted_roots(runs_dir):
        if path == root or root in path.parents:
            return
    raise MedsegError(
        f"{bundle}: not a trusted bundle. MONAI bundle configs run arbitrary Python ('$' expressions and "
        "'_target_'), so medseg only runs bundles from its own bundles/ folder, its runs folder, or folders listed "
        "in MEDSEG_TRUSTED_BUNDLES. If you trust this bundle's author, pass --trust-bundle."
    )

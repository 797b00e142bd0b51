"""Which bundles may run: MONAI configs execute Python (``$`` expressions, ``_target_``).

A bundle runs without ``--trust-bundle`` only if it lies inside medseg's own ``bundles/``
folder, inside the runs folder medseg writes its output bundles to, inside a folder listed
in the ``MEDSEG_TRUSTED_BUNDLES`` environment variable (``os.pathsep``-separated), or is an
output bundle that medseg itself wrote on this machine (recorded in
``$MEDSEG_HOME/trusted_outputs.txt``, ``~/.medseg`` by default, like SSH's known hosts).
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import MedsegError


def _record_file() -> Path:
    return Path(os.environ.get("MEDSEG_HOME", Path.home() / ".medseg")) / "trusted_outputs.txt"


def record_trusted_output(output_dir: str | Path) -> None:
    """Remember that medseg wrote the output bundle ``output_dir`` (so ``--resume`` needs no flag)."""
    path = _record_file()
    entry = str(Path(output_dir).resolve())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = path.read_text().splitlines() if path.exists() else []
        if entry not in known:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(entry + "\n")
    except OSError:
        pass  # a read-only home only means --resume will ask for --trust-bundle


def trusted_roots(runs_dir: str | Path = "runs") -> list[Path]:
    """The folders whose bundles run without ``--trust-bundle``."""
    import medseg

    roots = [Path(medseg.__file__).resolve().parents[1] / "bundles", Path(runs_dir).resolve()]
    roots += [Path(p).expanduser().resolve() for p in os.environ.get("MEDSEG_TRUSTED_BUNDLES", "").split(os.pathsep) if p]
    try:
        roots += [Path(line) for line in _record_file().read_text().splitlines() if line.strip()]
    except OSError:
        pass
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

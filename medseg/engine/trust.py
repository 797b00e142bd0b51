"""Which bundles may run: MONAI configs execute Python (``$`` expressions, ``_target_``, ``%`` macros).

Trust is decided by content, never by where a folder lies (a cloned repository or an unpacked
archive can put anything in ``./runs``):

* medseg's own bundles, the ``bundles/`` folder beside the installed package, are trusted;
  so are folders that whoever installed medseg listed in ``MEDSEG_TRUSTED_BUNDLES``
  (``os.pathsep``-separated; the Docker image lists its baked-in bundles there);
* an output bundle that medseg wrote carries ``medseg-signature.json``: an HMAC-SHA256 of every
  file under its ``configs/`` under a per-user key, ``$MEDSEG_HOME/key`` (``~/.medseg/key``,
  created with mode 0600 on first use). A bundle whose configs were edited, or that another
  user or machine wrote, fails the check;
* anything else needs ``--trust-bundle``.

A tracking server is never trusted: ``medseg reproduce`` retrains the installed bundle named in
the run with the run's plain-data overrides (:func:`refuse_code_values`), and never executes a
config downloaded from the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

SIGNATURE_FILE = "medseg-signature.json"
_KEY_BYTES = 32
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def medseg_home() -> Path:
    """medseg's per-user folder: ``$MEDSEG_HOME``, else ``~/.medseg``."""
    return Path(os.environ.get("MEDSEG_HOME") or Path.home() / ".medseg")


def user_key() -> bytes:
    """The per-user signing key, created (32 random bytes, mode 0600) on first use.

    Raises:
        MedsegError: the key file exists but is not private to the user, or is malformed.
    """
    path = medseg_home() / "key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it just now
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise MedsegError(f"{path}: signing key readable by others (mode {mode:o}); run 'chmod 600 {path}'")
    key = path.read_bytes()
    if len(key) < _KEY_BYTES:
        raise MedsegError(f"{path}: signing key is {len(key)} bytes, expected {_KEY_BYTES}; delete it to make a new one "
                          "(output bundles signed with the old key will then need --trust-bundle)")
    return key


def _config_files(bundle: Path) -> Iterator[Path]:
    configs = bundle / "configs"
    if configs.is_dir():
        yield from sorted(p for p in configs.rglob("*") if p.is_file() or p.is_symlink())


def _digest(bundle: Path, key: bytes) -> tuple[str, list[str]]:
    """HMAC over the relative names and contents of every file under ``configs/``."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    names = []
    for path in _config_files(bundle):
        if path.is_symlink():
            raise MedsegError(f"{path}: a symbolic link in a bundle's configs is not signed or trusted")
        name = path.relative_to(bundle).as_posix()
        data = path.read_bytes()
        names.append(name)
        mac.update(len(name).to_bytes(8, "big") + name.encode("utf-8") + len(data).to_bytes(8, "big") + data)
    return mac.hexdigest(), names


def sign_bundle(bundle: str | Path) -> Path:
    """Sign an output bundle's ``configs/`` with the user's key (medseg calls this after writing them).

    Returns:
        The signature file.
    """
    from medseg.utils.atomic import atomic_write_text

    bundle = Path(bundle)
    digest, names = _digest(bundle, user_key())
    record = {"format": 1, "algorithm": "hmac-sha256", "files": names, "hmac": digest}
    return atomic_write_text(bundle / SIGNATURE_FILE, json.dumps(record, indent=1) + "\n")


def signature_valid(bundle: str | Path) -> bool:
    """Whether ``bundle`` carries a valid signature of this user's key over its current configs."""
    bundle = Path(bundle)
    try:
        record = json.loads((bundle / SIGNATURE_FILE).read_text(encoding="utf-8"))
        expected = record["hmac"]
        digest, _ = _digest(bundle, user_key())
    except (OSError, ValueError, KeyError, TypeError, MedsegError):
        return False
    return isinstance(expected, str) and hmac.compare_digest(digest, expected)


def trusted_roots() -> list[Path]:
    """The folders of installed bundles: medseg's own ``bundles/`` and ``MEDSEG_TRUSTED_BUNDLES``."""
    import medseg

    roots = [Path(medseg.__file__).resolve().parents[1] / "bundles"]
    roots += [Path(p).expanduser().resolve() for p in os.environ.get("MEDSEG_TRUSTED_BUNDLES", "").split(os.pathsep) if p]
    return roots


def is_trusted(bundle: str | Path) -> bool:
    """Whether ``bundle`` may run without ``--trust-bundle`` (installed, or signed by this user)."""
    path = Path(bundle).resolve()
    if any(path == root or root in path.parents for root in trusted_roots()):
        return True
    return signature_valid(path)


def check_bundle_trust(bundle: str | Path, trust: bool = False) -> None:
    """Refuse to evaluate a bundle's configs unless it is trusted or ``trust`` is set.

    Raises:
        MedsegError: naming the bundle and saying why.
    """
    if trust or is_trusted(bundle):
        return
    raise MedsegError(
        f"{bundle}: not a trusted bundle. MONAI bundle configs run arbitrary Python ('$' expressions and "
        "'_target_'), so medseg only evaluates its own installed bundles and output bundles it wrote and signed "
        f"with your key ({SIGNATURE_FILE}; editing their configs voids it). If you trust this bundle's author, "
        "pass --trust-bundle."
    )


def installed_bundle(name: str) -> Path:
    """The installed bundle folder called ``name`` (medseg's ``bundles/`` or ``MEDSEG_TRUSTED_BUNDLES``).

    Raises:
        MedsegError: ``name`` is not a plain folder name, or no installed bundle has it.
    """
    if not isinstance(name, str) or not _BUNDLE_NAME.fullmatch(name) or ".." in name:
        raise MedsegError(f"bundle name {name!r} is not a plain folder name")
    for root in trusted_roots():
        candidate = root / name
        if (candidate / "configs" / "train.json").is_file():
            return candidate
    raise MedsegError(f"no installed bundle called {name!r} (looked in {', '.join(map(str, trusted_roots()))})")


def code_in_value(value: Any, where: str = "") -> str | None:
    """The config id path of the first value that MONAI's parser would execute or expand, if any.

    ``$`` strings are Python expressions, ``%`` strings pull in other files, and mappings with
    ``_target_`` or ``_requires_`` instantiate arbitrary classes.
    """
    if isinstance(value, str):
        return where or "<value>" if value.lstrip().startswith(("$", "%")) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key) in ("_target_", "_requires_", "_disabled_"):
                return f"{where}#{key}" if where else str(key)
            found = code_in_value(item, f"{where}#{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = code_in_value(item, f"{where}#{i}" if where else str(i))
            if found:
                return found
    return None


def refuse_code_values(values: dict[str, Any], source: str, trust: bool = False) -> None:
    """Refuse config values from outside (e.g. a tracking server) that would run code, unless ``trust``.

    Raises:
        MedsegError: naming the source and the id of the value.
    """
    if trust:
        return
    for key, value in values.items():
        found = code_in_value(value, str(key))
        if found:
            raise MedsegError(f"{source}: value of {found!r} would run code when the config is parsed "
                              "('$' expression, '%' macro or '_target_' component); pass --trust-bundle if you "
                              "trust whoever can write to that tracking server")

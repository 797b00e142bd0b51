"""Exception types that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class MedsegError(Exception):
    """A user-facing error: bad input, a bad path or a bad config.

    The CLI prints ``str(error)`` on one line and exits with status 2 (or 1 for
    data problems), unless ``--debug`` is given, in which case the traceback is shown.
    """


class DataError(MedsegError):
    """A file or dataset that cannot be used. The message names the file and the rule broken."""

    def __init__(self, path: object, rule: str, detail: str = "") -> None:
        self.path = str(path)
        self.rule = rule
        self.detail = detail
        message = f"{self.path}: {rule}" + (f" ({detail})" if detail else "")
        super().__init__(message)

    def __reduce__(self) -> tuple:
        """Rebuild from the constructor's arguments, so the error crosses a process pool intact."""
        return type(self), (self.path, self.rule, self.detail)


class DiskFullError(MedsegError, OSError):
    """A file could not be written for lack of space (full disk, quota, file-size limit).

    Raised by :mod:`medseg.utils.atomic` after it removed its temporary file, so the message
    can promise that nothing partial was left under the target name. It is an ``OSError``
    too (same ``errno``), so code that handles write failures keeps working.
    """

    def __init__(self, path: object, error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        message = (f"{path}: cannot be written ({reason}: the disk, the quota or the file-size limit is "
                   "full); nothing was written under that name")
        super().__init__(error.errno, message)
        self.filename = str(path)
        self._cause = error

    def __reduce__(self) -> tuple:
        """Rebuild from the constructor's arguments, so the error crosses a process pool intact."""
        return type(self), (self.filename, self._cause)

    def __str__(self) -> str:
        return str(self.strerror)


class InvalidValueError(MedsegError, ValueError):
    """An argument or config value that breaks a documented rule (a constructor's or a function's check).

    A ``ValueError`` too, so callers that catch ``ValueError`` keep working; being a
    :class:`MedsegError`, the CLI prints it on one line. Any other ``ValueError`` reaching the
    CLI is a bug in medseg and is shown with its traceback.
    """


class InvalidTypeError(MedsegError, TypeError):
    """An argument or config value of the wrong type (see :class:`InvalidValueError`)."""

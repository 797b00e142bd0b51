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

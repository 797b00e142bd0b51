"""Entry point of the ``medseg`` console script.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module
parses arguments and calls library functions, nothing more. User errors
(:class:`medseg.errors.MedsegError`, missing files, a failing value of the bundle config) are
printed on one line (exit status 2); ``--debug`` shows the traceback instead. Anything else is a
bug in medseg: its traceback is printed with a line saying so (exit status 3).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from medseg import __version__
from medseg.errors import MedsegError

# Subcommand modules, in the order shown by ``medseg --help``. Each imports its heavy
# dependencies (torch, MONAI, MLflow) inside its functions, so ``--help`` stays fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "medseg.cli.data_cmd",
    "medseg.cli.plan_cmd",
    "medseg.cli.train_cmd",
    "medseg.cli.cv_cmd",
    "medseg.cli.evaluate_cmd",
    "medseg.cli.infer_cmd",
    "medseg.cli.demo_cmd",
    "medseg.cli.export_cmd",
    "medseg.cli.tracking_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Medical-image segmentation with MONAI: data, training, inference, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit status.

    Output piped into a reader that stops early (``medseg plan DATA | head``) ends the command
    quietly with status 141 (128 + SIGPIPE), as shell tools do, not with a traceback.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141


def _main(argv: Sequence[str] | None = None) -> int:
    """:func:`main` without the broken-pipe handling.

    Args:
        argv: the arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 on success, 1 when the command found problems (bad data, failed cases),
        2 for usage and input errors.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except Exception as err:
        cause = user_error(err)
        if args.debug:
            raise
        if cause is None:
            traceback.print_exc()
            print(f"medseg {args.command}: {BUG_REPORT}", file=sys.stderr)
            return 3
        print(f"medseg {args.command}: error: {cause}", file=sys.stderr)
        return 2


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> int:
    """Say what stopped the command and how to continue a training run.

    SIGTERM exits with 143. Ctrl-C ends the process by SIGINT itself, after the message, as a
    program that cleaned up should (the shell then knows it was interrupted: status 130): CPython
    does the same on its own whenever the interrupt passed through code that ``eval`` ran, such
    as a bundle's ``$`` expressions, so doing it always keeps the outcome one and the same.
    """
    import os
    import signal

    from medseg.engine.handlers.interrupt import RunInterrupted, interruption_reason

    output_dir = getattr(err, "output_dir", None)
    print(f"medseg {args.command}: stopped by {interruption_reason(err)}", file=sys.stderr)
    if output_dir is not None and args.command == "train":
        print(f"the newest checkpoint is kept; continue with: medseg train {args.bundle} --resume {output_dir}",
              file=sys.stderr)
    elif args.command == "cv":
        print(f"finished folds are kept; continue with the same command (medseg cv {args.bundle} --data {args.data} "
              f"--output {getattr(err, 'cv_dir', args.output)} ...): the interrupted fold(s) resume", file=sys.stderr)
    elif output_dir is not None and args.command == "demo":
        print(f"the newest checkpoint is kept; continue with: medseg demo --workdir {args.workdir} --resume",
              file=sys.stderr)
    if isinstance(err, RunInterrupted):
        return err.exit_status
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    return 130  # not reached


BUG_REPORT = ("this is a bug in medseg, not a problem with your input: please report it on the project's issue "
              "tracker with the traceback above and the output of 'medseg --version'")

# medseg's own errors, and the operating system's word on a path the user gave.
_USER_ERRORS = (MedsegError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# What MONAI's config parser raises when an expression or component of the user's config fails.
_CONFIG_FAILURE = ("Failed to evaluate", "Failed to instantiate")


def user_error(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err``, or ``None`` when ``err`` is a bug in medseg.

    User-facing: medseg's own :class:`~medseg.errors.MedsegError` (argument and input checks,
    ``InvalidValueError``/``InvalidTypeError`` included), a missing or unreadable path, and any
    ``ValueError``/``TypeError`` raised while MONAI evaluated the bundle config (the config is
    the user's input: ``--set roi_size=abc``). MONAI wraps those in ``RuntimeError("Failed to
    evaluate ...")``; the message shown is the innermost user error of the chain. Anything
    else, a bare ``ValueError`` from medseg's own code included, is a bug.
    """
    found = None
    seen = set()
    in_config = False
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RuntimeError) and str(current).startswith(_CONFIG_FAILURE):
            in_config = True
        if isinstance(current, _USER_ERRORS) or (in_config and isinstance(current, (ValueError, TypeError))):
            found = current
        current = current.__cause__ or current.__context__
    return found


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    sys.exit(main())

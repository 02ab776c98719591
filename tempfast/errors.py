"""Errors the command line reports as one line (exit status 2, no traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """A bad flag, a missing file, a refused overwrite: the user can fix it (exit status 2)."""


class OutputError(Exception):
    """A result could not be written (a full disk, a read-only file system) after work had
    started; what was written before is intact and the message says where (exit status 1)."""


def os_reason(exc: OSError) -> str:
    """The cause of an OSError in a few words (``No space left on device``)."""
    return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__


def print_usage_error(command: str, message: object) -> None:
    """Print ``tempfast COMMAND: error: MESSAGE`` as one line on stderr."""
    print(f"tempfast {command}: error: {message}", file=sys.stderr)


def one_line_parser_error(command: str) -> Callable[[str], NoReturn]:
    """A replacement for an argparse parser's ``error``: the one line of
    :func:`print_usage_error`, then exit status 2 (argparse would print the usage too)."""
    def error(message: str) -> NoReturn:
        print_usage_error(command, message)
        raise SystemExit(2)
    return error

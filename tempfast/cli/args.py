"""What every subcommand shares: argument parsers for numbers and lists, the one-line error
format, and the mapping of library setting names to flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import NoReturn


def number(text: str) -> float:
    """A float, also written as a fraction: ``0.03``, ``8/255``."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def names(text: str) -> list[str]:
    """Comma-separated names (attacks, corruptions): ``pgd-ce, square`` -> two names."""
    return [t.strip() for t in text.split(",") if t.strip()]


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


def shift_examples(text: str) -> int | str:
    """``all`` or a count (checked by the trainer's settings)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all or a count, got {text!r}") from None

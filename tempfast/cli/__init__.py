"""The ``tempfast`` command line (also ``python -m tempfast``).

Each subcommand lives in its own module, which provides ``add_parser(subparsers)``; the parser
it adds sets ``func`` (called with the parsed arguments, returns an exit status). A
:class:`tempfast.errors.SettingError` from the library (naming the argument) is printed as
one line naming the flag, a :class:`tempfast.errors.UsageError` as one line, both with exit
status 2; an :class:`tempfast.errors.OutputError` (a write that failed after work started)
with exit status 1. No subcommand module imports another's: what they share is in
:mod:`tempfast.cli.args`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .._version import __version__
from ..errors import OutputError, SettingError, UsageError
from .args import print_usage_error

try:
    from .calibrate import add_parser as _add_calibrate
    from .evaluate import add_parser as _add_eval
    from .train import add_parser as _add_train
except ModuleNotFoundError as _exc:  # a package of the [train] extra is not installed
    if (_exc.name or "tempfast").split(".")[0] == "tempfast":
        raise
    _MISSING: str | None = _exc.name
else:
    _MISSING = None

# Library argument names that a subcommand spells differently as a flag (the rest are
# ``--`` + the name with ``-`` for ``_``).
FLAG_NAMES = {"eval": {"train_temperature": "--temperature"}}


def _info(args: argparse.Namespace) -> int:
    from .info import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def _add_info(sub) -> None:
    info = sub.add_parser("info", help="versions, devices and active backends")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempfast",
        description="Temperature-scaled softmax kernels, training and robustness evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"tempfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_calibrate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if _MISSING is not None:
        print(f"tempfast: the command line needs the [train] extra (no module named "
              f"'{_MISSING}'): pip install 'tempfast[train]'", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for a relaunch in K processes
    # Under DDP every rank raises the same error (they agree on it); rank 0 says it.
    speaks = os.environ.get("RANK", "0") == "0"
    try:
        return int(args.func(args) or 0)
    except SettingError as exc:  # the library names the argument; the user typed the flag
        if speaks:
            print_usage_error(args.command, exc.for_flag(FLAG_NAMES.get(args.command)))
        return 2
    except UsageError as exc:
        if speaks:
            print_usage_error(args.command, exc)
        return 2
    except OutputError as exc:
        if speaks:
            print_usage_error(args.command, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

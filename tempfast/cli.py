"""The ``tempfast`` command line (also ``python -m tempfast``).

Each subcommand lives in its own module, which provides ``add_parser(subparsers)``; the parser
it adds sets ``func`` (called with the parsed arguments, returns an exit status). A
:class:`tempfast.errors.UsageError` anywhere below is printed as one line on stderr with exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UsageError, print_usage_error
from .eval_cli import add_parser as _add_eval
from .train_cli import add_parser as _add_train


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
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info(sub)
    _add_train(sub)
    _add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print_usage_error(args.command, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())

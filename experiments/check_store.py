"""What the one-off checks (:mod:`experiments.masking_check`,
:mod:`experiments.torchattacks_check`) share: their folder's ``results.json``, rewritten with
``REPORT.md`` after every finished item, so an interruption loses only the item in progress and
a rerun skips the finished ones; and the command line that made them, with the code revision
and versions."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tempfast.train.checkpoint import atomic_write_text

from .rows import code_revision


class CheckStore:
    """``out/results.json`` (a list of row dicts) and ``out/REPORT.md`` written from them by
    ``render(rows, command)``."""

    def __init__(self, out: Path, render: Callable[[list[dict], str], str], command: str) -> None:
        self.out, self.render, self.command = out, render, command
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        self.rows: list[dict] = json.loads(path.read_text()) if path.exists() else []

    def add(self, row: dict) -> None:
        """Append ``row`` and rewrite both files (atomically)."""
        self.rows.append(row)
        atomic_write_text(self.out / "results.json", json.dumps(self.rows, indent=1))
        atomic_write_text(self.out / "REPORT.md", self.render(self.rows, self.command))


def command_line(module: str, argv: list[str] | None, threads: int, **versions: str) -> str:
    """``python -m MODULE ARGS  # at REV, torch X, ..., N thread(s)``."""
    given = sys.argv[1:] if argv is None else argv
    extra = "".join(f", {name} {version}" for name, version in versions.items())
    return (f"python -m {module} {' '.join(given)}  # at {code_revision()}, torch "
            f"{torch.__version__}{extra}, {threads} thread(s)")

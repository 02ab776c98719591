"""The trainer's output folder (timm's manner).

===============  ==========================================================================
file             content
===============  ==========================================================================
config.yaml      the resolved configuration (every flag, defaults filled in)
metrics.jsonl    one JSON object per finished epoch (the columns of summary.csv)
summary.csv      the same rows as CSV
last.pt          checkpoint after the last finished epoch
best.pt          checkpoint of the best evaluated epoch (robust accuracy under --adv pgd,
                 else clean test accuracy)
recovery.pt      written when Ctrl-C stops a run inside an epoch; --resume continues from it
summary.json     the final result: clean, robust, worst-case and corruption accuracy,
                 gradient-masking diagnostics, final temperature, wall time
===============  ==========================================================================

A folder holding a run (it has ``config.yaml``) is never reused silently: ``--resume``
continues it (only if the run-defining settings match), ``--overwrite`` replaces its run files
(other files are left alone). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from .checkpoint import atomic_write_text, load_checkpoint
from .errors import UsageError

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.csv", "summary.json", "last.pt", "best.pt",
             "recovery.pt")
# Settings a resumed run may change: they do not alter what is being trained.
RESUMABLE = frozenset({
    "epochs", "eval_every", "output", "resume", "overwrite", "device", "workers", "data_dir",
    "download", "final_eval", "eval_examples", "eval_steps", "eval_restarts", "eval_attacks",
    "eval_corruptions", "eval_adv_examples", "compile", "channels_last", "threads",
})


def _progress(ckpt: dict) -> tuple[int, int]:
    return int(ckpt["epoch"]), int(ckpt["step"])


class RunFolder:
    """Paths and writers of one run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, config: dict, resume: bool, overwrite: bool) -> str | None:
        """Decide how to use the folder; writes nothing.

        Returns the checkpoint to resume from (the newer of ``recovery.pt`` and ``last.pt``),
        or None for a fresh start.

        Raises:
            UsageError: the path is a file; the folder holds a run and neither ``--resume`` nor
                ``--overwrite`` was given; ``--resume`` into a different run; a corrupt
                checkpoint or config.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output {self.path} exists and is not a folder")
        present = [n for n in RUN_FILES if self.file(n).exists()]
        if not present or overwrite:
            return None
        if "config.yaml" not in present or not resume:
            raise UsageError(f"{self.path} already holds a run ({', '.join(present)}); pass "
                             f"--resume to continue it, --overwrite to replace it, or choose "
                             f"another --output")
        old = self._read_config()
        for key, value in config.items():
            if key not in RESUMABLE and old.get(key) != value:
                raise UsageError(f"{self.path} holds a different run ({key}: {old.get(key)!r} "
                                 f"there, {value!r} now); use --overwrite or another --output")
        candidates = []
        for name in ("last.pt", "recovery.pt"):
            if self.file(name).exists():
                candidates.append((_progress(load_checkpoint(self.file(name))), name))
        return str(self.file(max(candidates)[1])) if candidates else None

    def _read_config(self) -> dict:
        try:
            old = yaml.safe_load(self.file("config.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read {self.file('config.yaml')}: "
                             f"{str(exc).splitlines()[0]}") from None
        if not isinstance(old, dict):
            raise UsageError(f"{self.file('config.yaml')} is not a tempfast config")
        return old

    def start(self, config: dict, resumed_epoch: int | None) -> None:
        """Create the folder and write config.yaml. Fresh run: remove old run files (only
        reachable with ``--overwrite``). Resumed: keep the metric rows of finished epochs."""
        self.path.mkdir(parents=True, exist_ok=True)
        if resumed_epoch is None:
            for name in RUN_FILES:
                self.file(name).unlink(missing_ok=True)
            self.rows = []
        else:
            self.rows = [r for r in self._read_rows() if r["epoch"] <= resumed_epoch]
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def _read_rows(self) -> list[dict]:
        path = self.file("metrics.jsonl")
        if not path.exists():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None

    def add_row(self, row: dict) -> None:
        """Append an epoch's metrics to metrics.jsonl and summary.csv."""
        self.rows.append(row)
        atomic_write_text(self.file("metrics.jsonl"),
                          "".join(json.dumps(r) + "\n" for r in self.rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.file("summary.csv"), buf.getvalue())

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.file("summary.json"), json.dumps(summary, indent=2) + "\n")

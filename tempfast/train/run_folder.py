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

A folder holding finished work (a checkpoint or an epoch's metrics) is never reused silently:
``--resume`` continues it (only if the run-defining settings match), ``--overwrite`` replaces
its run files (other files are left alone). A folder whose run stopped before its first epoch
finished holds only ``config.yaml``: a plain rerun starts it again (nothing is lost), and
``--resume`` says it starts from scratch. ``--resume`` where there is no run at all is refused.
Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..errors import OutputError, UsageError, os_reason
from .checkpoint import (
    RESUME_KEYS,
    atomic_write_text,
    check_writable,
    load_checkpoint,
    save_checkpoint,
)

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.csv", "summary.json", "last.pt", "best.pt",
             "recovery.pt")
# Settings a resumed run may change: they do not alter what is being trained.
RESUMABLE = frozenset({
    "epochs", "eval_every", "output", "resume", "overwrite", "device", "workers", "data_dir",
    "download", "final_eval", "eval_preset", "eval_examples", "eval_steps", "eval_restarts",
    "eval_attacks", "eval_corruptions", "eval_adv_examples", "compile", "channels_last", "threads",
})


def _progress(ckpt: dict) -> tuple[int, int]:
    return int(ckpt["epoch"]), int(ckpt["step"])


class RunFolder:
    """Paths and writers of one run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        self.note: str | None = None  # what check() decided, when the user should hear it
        self.saved_epoch: int | None = None  # epoch of the last.pt this process wrote

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, config: dict, resume: bool, overwrite: bool) -> str | None:
        """Decide how to use the folder; writes nothing.

        Returns the checkpoint to resume from (the newer of ``recovery.pt`` and ``last.pt``),
        or None for a fresh start.

        Raises:
            UsageError: the path is a file; the folder holds finished work and neither
                ``--resume`` nor ``--overwrite`` was given; ``--resume`` where there is no run
                or into a different run; a corrupt checkpoint or config.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output {self.path} exists and is not a folder")
        check_writable(self.path, "--output")
        present = [n for n in RUN_FILES if self.file(n).exists()]
        if overwrite:
            return None
        if resume and "config.yaml" not in present:
            where = "does not exist" if not self.path.exists() else "holds no run (no config.yaml)"
            raise UsageError(f"--resume: {self.path} {where}; drop --resume to start a run there")
        if not resume and present in ([], ["config.yaml"]):
            return None  # nothing here, or a run that stopped before its first epoch
        if not resume:
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
                ckpt = load_checkpoint(self.file(name), RESUME_KEYS)
                candidates.append((_progress(ckpt), name))
        if not candidates:
            self.note = f"--resume: {self.path} has no checkpoint yet; starting from epoch 1"
            return None
        return str(self.file(max(candidates)[1]))

    def _read_config(self) -> dict:
        try:
            old = yaml.safe_load(self.file("config.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read {self.file('config.yaml')}: "
                             f"{str(exc).splitlines()[0]}") from None
        if not isinstance(old, dict):
            raise UsageError(f"{self.file('config.yaml')} is not a tempfast config")
        return old

    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """Turn an OSError while writing ``path`` into a one-line :class:`OutputError` that
        says what survived (the atomic writes leave the previous file whole)."""
        try:
            yield
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {os_reason(exc)}; {self.kept()}") from None

    def kept(self) -> str:
        """Where the finished work is, for a message about a failed write."""
        if self.saved_epoch is not None:
            return (f"the checkpoint of epoch {self.saved_epoch} ({self.file('last.pt')}) is "
                    "intact: free space, then continue with --resume")
        if self.file("last.pt").exists():
            return (f"the last good checkpoint {self.file('last.pt')} is intact: free space, "
                    "then continue with --resume")
        return "no epoch had finished, so nothing is lost"

    def start(self, config: dict, resumed_epoch: int | None) -> None:
        """Create the folder and write config.yaml. Fresh run: remove old run files (only
        reachable with ``--overwrite``). Resumed: keep the metric rows of finished epochs."""
        with self.writing(self.file("config.yaml")):
            self.path.mkdir(parents=True, exist_ok=True)
            if resumed_epoch is None:
                for name in RUN_FILES:
                    self.file(name).unlink(missing_ok=True)
                self.rows = []
            else:
                self.rows = [r for r in self._read_rows() if r["epoch"] <= resumed_epoch]
            atomic_write_text(self.file("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def save(self, name: str, state: dict) -> Path:
        """Write checkpoint ``name`` atomically (a failure raises :class:`OutputError`)."""
        path = self.file(name)
        with self.writing(path):
            save_checkpoint(path, state)
        if name == "last.pt":
            self.saved_epoch = int(state["epoch"])
        return path

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
        with self.writing(self.file("metrics.jsonl")):
            atomic_write_text(self.file("metrics.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in self.rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with self.writing(self.file("summary.csv")):
            atomic_write_text(self.file("summary.csv"), buf.getvalue())

    def write_summary(self, summary: dict) -> None:
        with self.writing(self.file("summary.json")):
            atomic_write_text(self.file("summary.json"), json.dumps(summary, indent=2) + "\n")

    def remove(self, name: str) -> None:
        with self.writing(self.file(name)):
            self.file(name).unlink(missing_ok=True)

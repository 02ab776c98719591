"""The sweep's results table: one CSV row per run (``results.csv``), its columns and types.

Rows are written by :mod:`experiments.sweep` and read by :mod:`experiments.report`; accuracies
and fractions are in [0, 1]. An empty cell is a value that was not measured (``None``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tempfast.robust.attacks import ATTACKS
from tempfast.train.checkpoint import atomic_write_text

RESULTS = "results.csv"


def robust_column(attack: str) -> str:
    """Column of an attack's robust accuracy: ``pgd-ce-t`` -> ``robust_pgd_ce_t``."""
    return "robust_" + attack.replace("-", "_")


ZERO_GRAD_LOSSES = ("ce", "ce_at_T", "ce_adaptive", "cw", "dlr")

TEXT = ("run", "data", "model", "adv", "compensation", "masking_kind", "masking_reasons",
        "eps_curve", "torch_version", "triton_version", "device_kind", "git_rev", "command",
        "sweep_command", "finished_at")
BOOL = ("learn_temp", "masking_suspected", "attacks_converged", "resumed")
INT = ("seed", "epochs", "train_subset", "eval_examples", "eval_steps", "eval_restarts",
       "square_queries", "cal_examples", "threads", "n_test", "convergence_rounds",
       "shift_examples")
PERTURBATION_COLUMNS = ("perturb_rotation", "perturb_translation", "perturb_scaling",
                        "perturb_elastic")

COLUMNS = (
    "run", "data", "model", "adv", "temp", "learn_temp", "compensation", "final_temp", "seed",
    "epochs", "train_subset",
    "test_acc", "n_test", "clean_acc", "corruption_acc", "perturbation_acc",
    *PERTURBATION_COLUMNS, "shift_examples",
    *(robust_column(a) for a in ATTACKS), "worst_case_acc",
    "masking_suspected", "masking_kind", "attacks_converged", "convergence_rounds",
    *(f"zero_grad_{loss}" for loss in ZERO_GRAD_LOSSES), "masking_reasons",
    "logit_norm", "margin", "logit_grad_norm_at_T", "input_grad_norm_at_T",
    "neg_entropy_norm_at_T", "p_true_at_T",
    "ece_before", "ece_after", "nll_before", "nll_after", "cal_temperature",
    "effective_temperature", "cal_examples", "eps_curve",
    "eps", "eval_examples", "eval_steps", "eval_restarts", "square_queries",
    "clean_change_last2", "robust_change_last2",
    "train_time_s", "eval_time_s", "wall_time_s", "process_s",
    "torch_version", "triton_version", "device_kind", "threads",
    "git_rev", "resumed", "command", "sweep_command", "finished_at",
)
"""Every column, in file order (see the README section of the experiments for each one)."""
OPTIONAL = ("perturbation_acc", *PERTURBATION_COLUMNS, "shift_examples",
            robust_column("pgd-targeted"), "attacks_converged", "convergence_rounds",
            "clean_change_last2", "robust_change_last2")
"""Columns added after the first sweeps were committed: empty (None) when a file lacks them."""


def _parse(column: str, text: str):
    if text == "":
        return None
    if column in TEXT:
        return text
    if column in BOOL:
        if text not in ("true", "false"):
            raise ValueError(f"column {column}: expected true or false, got {text!r}")
        return text == "true"
    if column in INT:
        return int(text)
    return float(text)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a results CSV, typed (floats, ints, bools, text; ``None`` for empty).

    Raises:
        ValueError: a column is missing or a cell does not parse.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])
                   and c not in OPTIONAL]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        return [{c: _parse(c, row.get(c, "")) for c in COLUMNS} for row in reader]


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with every column of :data:`COLUMNS`) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _format(row.get(c)) for c in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def parse_curve(text: str | None) -> dict[float, float]:
    """The ``eps_curve`` cell ``eps:acc;eps:acc`` as ``{eps: accuracy}`` (empty when not
    measured)."""
    if not text:
        return {}
    return {float(e): float(a) for e, a in (part.split(":") for part in text.split(";"))}


PER_EXAMPLE = "per_example.jsonl"


def read_results(csv_path: str | Path) -> list[dict]:
    """The rows of a results CSV (:func:`read_rows`), each with its run's per-example record
    from ``per_example.jsonl`` beside it under ``per_example`` (None where none was kept).

    Raises:
        ValueError: a column is missing, a cell does not parse, or the file holds no rows.
    """
    rows = read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no runs")
    masks = read_per_example(Path(csv_path).parent / PER_EXAMPLE)
    for row in rows:
        row["per_example"] = masks.get(row["run"])
    return rows


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line to ``path`` and flush it to disk (a crash loses at most this
    line; a torn last line is skipped by :func:`read_per_example`)."""
    import os

    with open(path, "a") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_per_example(path: str | Path) -> dict[str, dict]:
    """The per-example records of ``per_example.jsonl`` by run name (the last one of a run
    wins; a torn or unparsable line is skipped). Empty when the file does not exist."""
    out: dict[str, dict] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "run" in record:
            out[record["run"]] = record
    return out

"""One verdict table over several sweeps (data sets): ``python -m experiments.summary DIR
[DIR ...]``.

For each sweep folder (its ``results.csv``) and each compensation arm, the same verdicts as the
"Verdicts at a glance" table of that folder's REPORT.md (``experiments.report``), one row per
(sweep, arm, claim, metric), so the data sets and models can be read side by side. Printed as
markdown (or written with ``--output``); every number comes from the CSVs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempfast.train.checkpoint import atomic_write_text

from . import report, table

SHORT_ARMS = {"none": "plain CE(z / T)", "loss": "loss x T", "lr": "lr x T"}
HEADER = ["sweep", "data / model", "arm", "claim", "training", "metric", "attack family", "verdict",
          "best T > 1 vs T = 1 (%)", "test, p, detectable effect (80% power), trend in log T"]


def summary_rows(folder: str | Path) -> list[list[str]]:
    """The verdict rows of one sweep folder, each led by the folder's name (two sweeps of the
    same data and model differ in budget) and its data set and model.

    Raises:
        ValueError: the folder's CSV is missing columns or holds no rows.
    """
    csv_path = Path(folder) / table.RESULTS
    rows = table.read_results(csv_path)
    sweep = Path(folder).resolve().name
    setup = ", ".join(sorted({f"{r['data']} / {r['model']}" for r in rows}))
    out = []
    for arm in report.compensation_arms(rows):
        _, verdicts = report.claim_sections(report.arm_rows(rows, arm))
        out += [[sweep, setup, SHORT_ARMS.get(arm, arm), *v] for v in verdicts]
    return out


def render(folders: list[str | Path]) -> str:
    """The markdown table over ``folders``, in the order given."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for folder in folders:
        lines += ["| " + " | ".join(r) + " |" for r in summary_rows(folder)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.summary",
                                description="One verdict table over several sweep folders.")
    p.add_argument("folders", nargs="+", help="sweep --out folders (each holds results.csv)")
    p.add_argument("--output", help="write the table here instead of printing it")
    args = p.parse_args(argv)
    try:
        text = render(args.folders)
        if args.output:
            atomic_write_text(Path(args.output), text)
        else:
            sys.stdout.write(text)
    except (OSError, ValueError) as e:
        print(f"experiments.summary: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

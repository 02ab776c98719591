"""``python -m bench.static``: the static cost model of the headline cases.

    python -m bench.static [--out bench/results] [--date YYYY-MM-DD] [--name SUFFIX]
                           [--jobs 2] [--json PATH] [--quick]

Writes ``<out>/static-<date>[-SUFFIX].json`` and ``.md`` and prints the markdown. ``--json PATH``
writes only that JSON file (the GPU script's prediction column). ``--quick``: bf16, C = 32000
and 262144 only (else every headline case, the language-model cases and the contrastive
losses). Must run without
``TRITON_INTERPRET`` (the real compiler); set ``TRITON_CACHE_DIR`` to keep compiled kernels
between runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from . import analysis, report, workloads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--name", default="", help="suffix of the report's file name")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-host-time", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the model reads what the real compiler builds",
              file=sys.stderr)
        return 2
    ws = workloads.headline_workloads(("bf16",), (32000, 262144)) if args.quick \
        else (workloads.headline_workloads() + workloads.lm_workloads()
              + workloads.contrastive_workloads())
    data = analysis.run(ws, jobs=args.jobs, with_host_time=not args.no_host_time)
    data["meta"]["date"] = args.date
    text = json.dumps(data, indent=1, sort_keys=False, default=str)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
        print(f"wrote {args.json}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"static-{args.date}" + (f"-{args.name}" if args.name else ""))
    stem.with_suffix(".json").write_text(text)
    md = report.render(data)
    stem.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

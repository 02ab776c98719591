"""The CPU cross-entropy beside another process: ``python -m bench.under_load``.

    python -m bench.under_load [--classes 10 1000 32000 262144] [--dtypes float32 bfloat16]
                               [--elements 67108864] [--reps 5] [--out bench/results]

For each class count ``C`` (rows ``N = elements // C``) and dtype it times forward + backward
of ``tempfast.cross_entropy(z, y, 2)`` at torch's default threads and at 1 thread, and eager
``F.cross_entropy(z / 2, y)`` at the default threads, first on the quiet machine, then beside
:func:`bench.load.competitor` (medians of ``--reps`` calls, the three interleaved call by call
so that they see the same load; all in one run). The conditions
(issue 23): beside the competitor, tempfast at the default threads takes at most 1.2x its own
1-thread time and is no slower than eager; on the quiet machine it is no slower than eager.
Writes ``under-load-<date>.json`` and ``.md`` and prints the markdown; exits 1 when a condition
fails. Run nothing else meanwhile: the machine's other load is part of what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tempfast

from .load import DESCRIPTION, competitor

RATIO_TO_ONE_THREAD = 1.2


def _fwd_bwd(fn, x: torch.Tensor, y: torch.Tensor) -> None:
    z = x.detach().requires_grad_(True)
    fn(z, y).backward()


def median_seconds(runs: dict, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds of each ``name -> (fn, threads)`` in ``runs``, its calls interleaved
    (one call of each per round): every run sees the same load."""
    saved = torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for round_ in range(reps + 1):  # round 0: warm-up
            for name, (fn, threads) in runs.items():
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                _fwd_bwd(fn, x, y)
                if round_:
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(classes: int, dtype: torch.dtype, elements: int, reps: int, threads: int) -> dict:
    """One shape's times (seconds): ``{"quiet": {...}, "loaded": {...}}``, each with
    ``tempfast``, ``tempfast_1t`` and ``eager``."""
    n = max(1, elements // classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, classes, generator=g).to(dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    runs = {"tempfast": (lambda z, t: tempfast.cross_entropy(z, t, 2.0), threads),
            "tempfast_1t": (lambda z, t: tempfast.cross_entropy(z, t, 2.0), 1),
            "eager": (lambda z, t: F.cross_entropy(z / 2.0, t), threads)}
    out = {}
    for condition in ("quiet", "loaded"):
        with competitor() if condition == "loaded" else contextlib.nullcontext():
            out[condition] = median_seconds(runs, x, y, reps)
    return {"classes": classes, "rows": n, "dtype": str(dtype).removeprefix("torch."), **out}


def verdicts(row: dict) -> dict[str, bool]:
    q, ld = row["quiet"], row["loaded"]
    return {"loaded_vs_1_thread": ld["tempfast"] <= RATIO_TO_ONE_THREAD * ld["tempfast_1t"],
            "loaded_vs_eager": ld["tempfast"] <= ld["eager"],
            "quiet_vs_eager": q["tempfast"] <= q["eager"]}


def render(report: dict) -> str:
    m = report["meta"]
    lines = [f"# CPU cross-entropy beside another process ({m['date']})", "",
             f"Forward + backward, N x C = {m['elements']} elements, T = 2, medians of "
             f"{m['reps']} calls; default threads = {m['threads']} (torch's), on {m['cpus']} "
             f"CPUs; loaded: {DESCRIPTION}. Times in ms; ratios of one run.", "",
             "| C | dtype | quiet: tempfast | quiet: eager | loaded: tempfast | loaded: "
             "tempfast 1 thread | loaded: eager | loaded tempfast / 1 thread | loaded "
             "tempfast / eager | quiet tempfast / eager | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        q, ld, v = r["quiet"], r["loaded"], r["verdicts"]
        missed = [k for k, ok in v.items() if not ok]
        lines.append(
            f"| {r['classes']} | {r['dtype']} | {q['tempfast'] * 1e3:.0f} | "
            f"{q['eager'] * 1e3:.0f} | {ld['tempfast'] * 1e3:.0f} | "
            f"{ld['tempfast_1t'] * 1e3:.0f} | {ld['eager'] * 1e3:.0f} | "
            f"{ld['tempfast'] / ld['tempfast_1t']:.2f} | {ld['tempfast'] / ld['eager']:.2f} | "
            f"{q['tempfast'] / q['eager']:.2f} | "
            f"{'no: ' + ', '.join(missed) if missed else 'yes'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.under_load",
                                description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10, 1000, 32000, 262144])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=("float32", "bfloat16", "float16"))
    p.add_argument("--elements", type=int, default=1 << 26)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="", help="suffix of the report's file name")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    rows = []
    for dtype in args.dtypes:
        for c in args.classes:
            row = measure(c, getattr(torch, dtype), args.elements, args.reps, threads)
            row["verdicts"] = verdicts(row)
            rows.append(row)
            print(f"C={c} {dtype}: {row['verdicts']}", file=sys.stderr, flush=True)
    report = {"meta": {"date": datetime.date.today().isoformat(), "elements": args.elements,
                       "reps": args.reps, "threads": threads, "cpus": os.cpu_count(),
                       "torch": torch.__version__, "competitor": DESCRIPTION},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"under-load-{report['meta']['date']}"
                       + (f"-{args.name}" if args.name else ""))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    md = render(report)
    stem.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0 if all(all(r["verdicts"].values()) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

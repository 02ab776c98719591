"""pytest plugin of ``bench/gpu_run.sh``: cross-entropy first, one JSON line per finished case,
CUDA-event time beside the wall time, and the static model's prediction beside both.

Loaded with ``-p bench.gpu_plugin``. Environment:

* ``TEMPFAST_CASES_JSONL``: the file each case's result is appended to as soon as it finishes
  (a run killed at its limit keeps every finished case);
* ``TEMPFAST_STATIC_JSON``: the static model's report (``python -m bench.static``; default: the
  newest ``bench/results/static-*.json``) whose predictions fill the ``predicted_*`` fields.

Per case: ``wall_s`` (pytest-benchmark's median, timed to finished work), ``event_s`` (CUDA
events around ``EVENT_STEPS`` back-to-back steps after the timing: the GPU timeline per step,
launch gaps included, host time excluded when the queue stays full) and, where the static
report has the same op, provider, dtype, N and C, ``predicted_<GPU>_s`` and
``measured / predicted``. ``python -m bench.gpu_plugin CASES.jsonl`` prints them as markdown.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

EVENT_STEPS = 20
RESULTS = Path(__file__).parent / "results"
STATIC_PROVIDERS = {"tempfast": "tempfast", "liger_t1": "liger_t1",
                    "liger_x_div_t": "liger_x_div_t", "copy": "copy"}


def _static_report() -> dict | None:
    path = os.environ.get("TEMPFAST_STATIC_JSON", "").strip()
    if not path:
        found = sorted(RESULTS.glob("static-*.json"))
        path = str(found[-1]) if found else ""
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def predictions(report: dict | None) -> dict[tuple, dict[str, float]]:
    """``(op, provider, dtype, rows, classes) -> {GPU: seconds}`` from a static report."""
    out: dict[tuple, dict[str, float]] = {}
    if report is None:
        return out
    for case in report.get("cases", []) + report.get("peers", []):
        op = "ce_fwd_bwd" if case["provider"] == "copy" else case["op"]
        key = (op, case["provider"], case["dtype"], case["rows"], case["classes"])
        out[key] = {gpu: p["t"] for gpu, p in case["predicted"].items()}
    return out


_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    _STATE["predictions"] = predictions(_static_report())
    _STATE["jsonl"] = os.environ.get("TEMPFAST_CASES_JSONL", "").strip() or None
    _wrap_time_step()


def _wrap_time_step() -> None:
    """After pytest-benchmark has timed a CUDA step, time ``EVENT_STEPS`` more with events."""
    from . import run_case

    original = run_case.time_step

    def time_step(step, device, benchmark, **kwargs):
        timed = original(step, device, benchmark, **kwargs)
        if timed and device == "cuda":
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(EVENT_STEPS):
                step()
            end.record()
            end.synchronize()
            benchmark.extra_info["event_s"] = start.elapsed_time(end) / 1e3 / EVENT_STEPS
        return timed

    run_case.time_step = time_step


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Cross-entropy op cases first (headline shapes first among them), then the rest in the
    suite's order."""
    from .cases import Spec, is_headline

    def rank(item) -> int:
        spec = getattr(item, "callspec", None) and item.callspec.params.get("spec")
        if isinstance(spec, Spec) and spec.op.startswith("ce_"):
            return 0 if spec.op == "ce_fwd_bwd" and is_headline(spec) else 1
        return 2

    items[:] = sorted(items, key=rank)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or _STATE.get("jsonl") is None:
        return
    bench = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
    spec = getattr(item, "callspec", None) and item.callspec.params.get("spec")
    row: dict[str, object] = {"nodeid": item.nodeid, "outcome": report.outcome,
                              "finished_at": time.time()}
    if spec is not None and hasattr(spec, "provider"):
        row.update({k: getattr(spec, k) for k in ("op", "provider", "dtype", "device")
                    if hasattr(spec, k)})
        row["rows"] = getattr(spec, "rows", None)
        row["classes"] = getattr(spec, "classes", None)
        row["id"] = spec.id
    if bench is not None and getattr(bench, "stats", None) is not None:
        row["wall_s"] = bench.stats.stats.median
        row.update({k: v for k, v in bench.extra_info.items()
                    if isinstance(v, (int, float, str, bool)) or v is None})
    key = (row.get("op"), STATIC_PROVIDERS.get(str(row.get("provider"))), row.get("dtype"),
           row.get("rows"), row.get("classes"))
    for gpu, seconds in _STATE["predictions"].get(key, {}).items():
        row[f"predicted_{gpu}_s"] = seconds
        measured = row.get("event_s") or row.get("wall_s")
        if measured:
            row[f"measured_over_predicted_{gpu}"] = measured / seconds
    with open(_STATE["jsonl"], "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def render(path: str) -> str:
    """The JSON lines as a markdown table."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    head = ["case", "outcome", "wall ms", "event ms", "H100 model ms", "H200 model ms",
            "measured / H200 model"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(v):
        return "-" if v is None else f"{v * 1e3:.3f}"

    for r in rows:
        ratio = r.get("measured_over_predicted_H200")
        out.append("| " + " | ".join([
            str(r.get("id", r["nodeid"])), r["outcome"], ms(r.get("wall_s")),
            ms(r.get("event_s")), ms(r.get("predicted_H100_s")), ms(r.get("predicted_H200_s")),
            "-" if ratio is None else f"{ratio:.2f}"]) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(sys.argv[1]))

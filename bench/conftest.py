"""pytest wiring of the benchmark suite: fixtures, the time budget, and the JSON extras.

Environment:

* ``TEMPFAST_BENCH_DEVICE``: ``cpu`` or ``cuda`` (default: ``cuda`` when available);
* ``TEMPFAST_BENCH_CASE_S``: timed seconds per case (default 0.3 on CPU, 0.15 on CUDA);
* ``TEMPFAST_BENCH_THREADS``: ``torch.set_num_threads`` for the session and the CPU memory
  worker (default: torch's choice);
* ``TEMPFAST_BENCH_BUDGET_S``: once this many seconds have passed since the session started,
  the remaining cases are skipped (headline shapes run first; default: no budget);
* ``TEMPFAST_BENCH_COMPETITOR``: ``1`` runs the session beside a competing process
  (:func:`bench.load.competitor`: small two-thread PyTorch ops in a loop), started before the
  first case and stopped after the last; recorded in the JSON (``competitor``).
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import tempfast

from . import summary
from .cases import Spec, is_headline, liger_functions
from .linear import LinearSpec
from .load import DESCRIPTION, competitor, competitor_requested
from .memory import RssProbe, rss_supported
from .timing import apply_threads

_SESSION: dict[str, object] = {"start": time.monotonic(), "skips": Counter()}


def pytest_sessionstart(session: pytest.Session) -> None:
    apply_threads()
    if competitor_requested():
        _SESSION["competitor"] = competitor()
        _SESSION["competitor"].__enter__()
    _SESSION["start"] = time.monotonic()
    _SESSION["load_start"] = os.getloadavg()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    running = _SESSION.pop("competitor", None)
    if running is not None:
        running.__exit__(None, None, None)


def _priority(item: pytest.Item) -> int:
    """Headline op cases, the fused head at its target shape, the trainer cases, the other
    op and fused-head cases, then the rest (the CPU memory case at the issue's size)."""
    spec = getattr(item, "callspec", None) and item.callspec.params.get("spec")
    if isinstance(spec, Spec):
        return 0 if is_headline(spec) else 3
    if isinstance(spec, LinearSpec):
        return 1 if spec.headline else 3
    return 2 if type(spec).__name__ == "TrainerSpec" else 4


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run this suite's cases by priority (a time budget then cuts the least important) after
    any other collected tests, whose order is kept."""
    here = Path(__file__).parent
    ours = [i for i in items if here in Path(i.path).parents]
    others = [i for i in items if here not in Path(i.path).parents]
    if config.getoption("benchmark_disable", False):
        ours = _one_compiled_case_per_op(config, ours)
    items[:] = others + sorted(ours, key=_priority)


COMPILED = "torch_compile"


def _one_compiled_case_per_op(config: pytest.Config,
                              items: list[pytest.Item]) -> list[pytest.Item]:
    """A correctness-only run (``--benchmark-disable``, as CI runs the suite) keeps the
    ``torch.compile`` baseline at the first shape of each op: compiling one takes seconds on
    a CPU, and every shape of it runs the same harness code. A timed run
    (``--benchmark-only``) checks every shape before timing it, as for every provider."""
    kept, seen, dropped = [], set(), []
    for item in sorted(items, key=lambda i: _spec_order(i)):
        spec = getattr(item, "callspec", None) and item.callspec.params.get("spec")
        if getattr(spec, "provider", None) == COMPILED:
            if spec.op in seen:
                dropped.append(item)
                continue
            seen.add(spec.op)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    order = {id(i): n for n, i in enumerate(items)}
    return sorted(kept, key=lambda i: order[id(i)])


def _spec_order(item: pytest.Item) -> tuple:
    """Smallest shapes first: the compiled case kept for an op is its cheapest."""
    spec = getattr(item, "callspec", None) and item.callspec.params.get("spec")
    return (getattr(spec, "classes", 0) * getattr(spec, "rows", 0), item.nodeid)


def _budget_seconds() -> float | None:
    value = os.environ.get("TEMPFAST_BENCH_BUDGET_S", "").strip()
    return float(value) if value else None


@pytest.fixture
def within_budget() -> None:
    """Skip the test once ``TEMPFAST_BENCH_BUDGET_S`` seconds of the session have passed."""
    budget = _budget_seconds()
    if budget is not None and time.monotonic() - _SESSION["start"] > budget:
        pytest.skip(f"time budget exhausted (TEMPFAST_BENCH_BUDGET_S={budget:g})")


@pytest.fixture(autouse=True)
def _release_cuda_memory() -> Iterator[None]:
    """Give the CUDA cache back after each case, so one case's buffers never crowd the next
    (also after a failure: pytest keeps the failed test's frames in ``sys.last_*``)."""
    yield
    if torch.cuda.is_initialized():
        for name in ("last_exc", "last_type", "last_value", "last_traceback"):
            if hasattr(sys, name):
                delattr(sys, name)
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def rss_probe() -> Iterator[RssProbe | None]:
    """The CPU peak-RSS worker (None where /proc/self/clear_refs is missing)."""
    probe = RssProbe() if rss_supported() else None
    yield probe
    if probe is not None:
        probe.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "test_bench_" in report.nodeid and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        _SESSION["skips"][reason] += 1


def _versions() -> dict[str, object]:
    liger = liger_functions()
    info: dict[str, object] = {
        "tempfast": tempfast.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "liger_kernel": None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if liger is not None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            info["liger_kernel"] = version("liger-kernel")
        except PackageNotFoundError:
            info["liger_kernel"] = "unknown"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["tempfast_bench"] = _versions()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    """Derived numbers (:mod:`bench.summary`) into each case's extra_info; skip reasons and
    the load average before and after the run into the file. Each case keeps its statistics
    (min, median, quartiles, ...) but not every round's time (``stats.data``): the report
    needs only the statistics, and the rounds made the file megabytes."""
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
    summary.derive(output_json["benchmarks"])
    output_json["tempfast_bench"] = {
        "skipped": [{"reason": r, "count": n} for r, n in _SESSION["skips"].most_common()],
        "load_average_start": _SESSION.get("load_start"),
        "competitor": DESCRIPTION if competitor_requested() else None,
        "load_average_end": os.getloadavg(),
        "seconds": time.monotonic() - _SESSION["start"],
    }

"""One timed case, the same for every group: check, time, then measure peak memory.

A case object has ``spec`` (with ``device``), ``check()``, ``step()`` and ``reset()``
(:class:`bench.cases.Case`, :class:`bench.linear.LinearCase`).
"""

from __future__ import annotations

from collections.abc import Callable

from . import memory, timing


def check_time_measure(case, benchmark, rss_probe: memory.RssProbe | None) -> None:
    """Assert the case's result against the reference, then time ``case.step`` (rounds
    chosen by :func:`bench.timing.plan`; one untimed step with ``--benchmark-disable``), then
    record its peak extra memory in ``benchmark.extra_info``. The caller sets the group and
    the spec's extra_info."""
    spec = case.spec
    case.check()
    if not time_step(case.step, spec.device, benchmark):
        return
    if spec.device == "cuda":
        benchmark.extra_info["peak_extra_bytes"] = memory.cuda_peak_extra_bytes(case)
        benchmark.extra_info["memory_method"] = "torch.cuda.max_memory_allocated delta"
    elif rss_probe is not None:
        benchmark.extra_info["peak_extra_bytes"] = rss_probe.measure(spec)["peak_extra_bytes"]
        benchmark.extra_info["memory_method"] = "peak RSS delta in a subprocess"


def time_step(step: Callable[[], object], device: str, benchmark, *, min_rounds: int = 1,
              warmup_rounds: int = 1) -> bool:
    """Time ``step`` with pytest-benchmark: at least ``min_rounds`` rounds of the iterations
    :func:`bench.timing.plan` chooses (synchronised on CUDA), after ``warmup_rounds``; rounds
    and iterations go into ``extra_info``. With ``--benchmark-disable`` one untimed step runs
    instead and the result is False."""
    if benchmark.disabled:
        benchmark.pedantic(step)
        return False
    if device == "cuda":
        # pytest-benchmark has no per-test timer option: time finished GPU work.
        benchmark._timer = timing.synchronized_perf_counter
    plan = timing.plan(step, device)
    rounds = max(plan.rounds, min_rounds)
    benchmark.extra_info.update(rounds=rounds, iterations=plan.iterations)
    benchmark.pedantic(step, rounds=rounds, iterations=plan.iterations,
                       warmup_rounds=warmup_rounds)
    return True

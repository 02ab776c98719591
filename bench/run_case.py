"""One timed case, the same for every group: check, time, then measure peak memory.

A case object has ``spec`` (with ``device``), ``check()``, ``step()`` and ``reset()``
(:class:`bench.cases.Case`, :class:`bench.linear.LinearCase`).
"""

from __future__ import annotations

from . import memory, timing


def check_time_measure(case, benchmark, rss_probe: memory.RssProbe | None) -> None:
    """Assert the case's result against the reference, then time ``case.step`` (rounds
    chosen by :func:`bench.timing.plan`; one untimed step with ``--benchmark-disable``), then
    record its peak extra memory in ``benchmark.extra_info``. The caller sets the group and
    the spec's extra_info."""
    spec = case.spec
    case.check()
    if benchmark.disabled:
        benchmark.pedantic(case.step)
        return
    if spec.device == "cuda":
        # pytest-benchmark has no per-test timer option: time finished GPU work.
        benchmark._timer = timing.synchronized_perf_counter
    plan = timing.plan(case.step, spec.device)
    benchmark.extra_info.update(rounds=plan.rounds, iterations=plan.iterations)
    benchmark.pedantic(case.step, rounds=plan.rounds, iterations=plan.iterations,
                       warmup_rounds=1)
    if spec.device == "cuda":
        benchmark.extra_info["peak_extra_bytes"] = memory.cuda_peak_extra_bytes(case)
        benchmark.extra_info["memory_method"] = "torch.cuda.max_memory_allocated delta"
    elif rss_probe is not None:
        benchmark.extra_info["peak_extra_bytes"] = rss_probe.measure(spec)["peak_extra_bytes"]
        benchmark.extra_info["memory_method"] = "peak RSS delta in a subprocess"

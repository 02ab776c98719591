"""Softmax and cross-entropy at temperature T = 8: every provider, shape and dtype.

Each case first checks its provider's result against ``tempfast.reference`` (fails the test
otherwise), then times it with pytest-benchmark and records the floor bytes and the peak
extra memory of one step in ``extra_info``. See :mod:`bench.cases` for the ops, the shapes,
the providers and the tolerances.
"""

from __future__ import annotations

import pytest

from . import cases, memory, timing

SPECS = cases.all_specs(cases.bench_device())


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_op_matches_reference_then_times(spec: cases.Spec, benchmark, within_budget,
                                         rss_probe) -> None:
    reason = cases.skip_reason(spec)
    if reason is not None:
        pytest.skip(reason)
    case = cases.Case(spec)
    case.check()
    benchmark.group = spec.group_name
    benchmark.extra_info.update(spec.extra_info())
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
        del case
        benchmark.extra_info["peak_extra_bytes"] = rss_probe.measure(spec)
        benchmark.extra_info["memory_method"] = "peak RSS delta in a subprocess"

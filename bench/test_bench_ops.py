"""Softmax and cross-entropy at temperature T = 8: every provider, shape and dtype.

Each case first checks its provider's result against ``tempfast.reference`` (fails the test
otherwise), then times it with pytest-benchmark and records the floor bytes and the peak
extra memory of one step in ``extra_info``. See :mod:`bench.cases` for the ops, the shapes,
the providers and the tolerances.
"""

from __future__ import annotations

import pytest

from . import cases
from .run_case import check_time_measure

SPECS = cases.all_specs(cases.bench_device())


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_op_matches_reference_then_times(spec: cases.Spec, benchmark, within_budget,
                                         rss_probe) -> None:
    reason = cases.skip_reason(spec)
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = spec.group_name
    benchmark.extra_info.update(spec.extra_info())
    check_time_measure(cases.Case(spec), benchmark, rss_probe)

"""The fused linear head (``linear_ce_fwd_bwd``): every provider and shape, then the issue's
CPU memory case.

Each timed case first checks the loss and the gradients of h, W (and b) against
``tempfast.reference.linear_cross_entropy`` in fp32 (fails the test otherwise), then times the
step, then records its peak extra memory. See :mod:`bench.linear` for the shapes, the
providers and the flop count.
"""

from __future__ import annotations

import dataclasses

import pytest

from . import linear, memory
from .cases import bench_device
from .run_case import check_time_measure

DEVICE = bench_device()
SPECS = linear.all_specs(DEVICE)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_linear_head_matches_reference_then_times(spec: linear.LinearSpec, benchmark,
                                                  within_budget, rss_probe) -> None:
    reason = linear.skip_reason(spec)
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = spec.group_name
    benchmark.extra_info.update(spec.extra_info())
    check_time_measure(linear.LinearCase(spec), benchmark, rss_probe)


def test_linear_head_memory_at_issue_size(benchmark, within_budget, rss_probe) -> None:
    """N = 8192, H = 1024, C = 65536, fp32 on CPU: one step of eager, then one of tempfast,
    each in the memory worker; tempfast's loss and gradients (norms and 4096 entries each) must
    match eager's, and its peak extra RSS is recorded with eager's. The timed round is
    tempfast's request to the worker; ``step_s`` is the step alone."""
    ours, eager = linear.MEMORY_SPECS["tempfast"], linear.MEMORY_SPECS["torch_eager"]
    if DEVICE != "cpu":
        pytest.skip("the CPU memory case runs with TEMPFAST_BENCH_DEVICE=cpu")
    if benchmark.disabled:
        pytest.skip("one step per provider at the issue's size takes about a minute; it runs "
                    "with --benchmark-only (tests/ pins the memory bound at half the size)")
    if rss_probe is None:
        pytest.skip("peak RSS needs Linux's /proc/self/clear_refs")
    reason = linear.skip_reason(ours)
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = ours.group_name
    benchmark.extra_info.update(ours.extra_info())
    reference = rss_probe.measure(eager)
    answer = benchmark.pedantic(rss_probe.measure, args=(ours,), rounds=1, iterations=1)
    linear.assert_same_fingerprint(ours, answer["fingerprint"], reference["fingerprint"])
    benchmark.extra_info.update(
        peak_extra_bytes=answer["peak_extra_bytes"],
        step_s=answer["step_s"], eager_peak_extra_bytes=reference["peak_extra_bytes"],
        eager_step_s=reference["step_s"], memory_method="peak RSS delta in a subprocess")


@pytest.mark.skipif(not memory.rss_supported(), reason="peak RSS needs /proc/self/clear_refs")
def test_memory_worker_measures_and_fingerprints_a_memory_only_case() -> None:
    """The memory case's machinery at a small size (the case itself runs only with
    --benchmark-only): the worker answers peaks, step times and fingerprints that agree
    between tempfast and eager, and a perturbed fingerprint fails the comparison."""
    small = {p: dataclasses.replace(s, rows=256, hidden=64, classes=2048)
             for p, s in linear.MEMORY_SPECS.items()}
    probe = memory.RssProbe()
    try:
        eager, ours = (probe.measure(small[p]) for p in ("torch_eager", "tempfast"))
    finally:
        probe.close()
    assert eager["peak_extra_bytes"] > 0 and ours["step_s"] > 0
    assert set(ours["fingerprint"]) == {"loss", "h.grad", "h.grad norm", "W.grad",
                                        "W.grad norm", "b.grad", "b.grad norm"}
    linear.assert_same_fingerprint(small["tempfast"], ours["fingerprint"], eager["fingerprint"])
    wrong = {**ours["fingerprint"], "W.grad norm": [ours["fingerprint"]["W.grad norm"][0] * 1.01]}
    with pytest.raises(AssertionError, match=r"W\.grad norm differs"):
        linear.assert_same_fingerprint(small["tempfast"], wrong, eager["fingerprint"])

"""The contrastive losses (``contrastive_fwd_bwd``, ``nt_xent_fwd_bwd``): tempfast against the usual
composition of PyTorch ops, eager and compiled.

Each case first checks the loss and the gradients of a, b and t against the float64
reference (fails the test otherwise), then times the step, then records its peak extra
memory; a baseline that runs out of CUDA memory is skipped as out of memory, which the report
shows as ``OOM``. A correctness-only run (``--benchmark-disable``, as CI runs the suite) checks
the smallest batch of the device only. See :mod:`bench.contrastive` for the shapes, the
providers and the flop counts.
"""

from __future__ import annotations

import pytest
import torch

from . import contrastive, report
from .cases import bench_device
from .run_case import check_time_measure

DEVICE = bench_device()
SPECS = contrastive.all_specs(DEVICE)
SMALLEST_BATCH = min(contrastive.BATCHES[DEVICE])


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_contrastive_loss_matches_reference_then_times(spec: contrastive.ContrastiveSpec,
                                                       benchmark, within_budget,
                                                       rss_probe) -> None:
    reason = contrastive.skip_reason(spec)
    if reason is None and benchmark.disabled and spec.batch > SMALLEST_BATCH:
        reason = (f"a correctness-only run (--benchmark-disable) checks B = {SMALLEST_BATCH}; "
                  f"B = {spec.batch} runs with --benchmark-only")
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = spec.group_name
    benchmark.extra_info.update(spec.extra_info())
    try:
        check_time_measure(contrastive.ContrastiveCase(spec), benchmark, rss_probe)
    except torch.OutOfMemoryError as error:
        if spec.provider not in contrastive.BASELINES:
            raise
        reason = contrastive.out_of_memory_reason(spec, error)
    else:
        return
    # Skipped outside the handler, so the skip does not keep the error's frames (and their
    # tensors) alive while pytest reports it.
    pytest.skip(reason)


@pytest.mark.parametrize("op", contrastive.OPS)
def test_check_fails_on_a_wrong_temperature(op: str) -> None:
    """The check passes the eager composition and fails it at a temperature 2.5% off (a
    small CPU shape: B = 64, D = 32, fp32)."""
    spec = contrastive.ContrastiveSpec(op, "torch_eager", 64, 32, "fp32", "cpu")
    case = contrastive.ContrastiveCase(spec)
    case.check()
    composition = case.loss
    case.loss = lambda a, b, t: composition(a, b, t * 1.025)
    with pytest.raises(AssertionError, match="differs from the reference"):
        case.check()


def test_report_shows_an_out_of_memory_baseline_as_oom() -> None:
    """A baseline skipped as out of memory reads ``OOM`` in the contrastive table, beside the
    providers that ran."""
    ours, compiled, eager = (
        contrastive.ContrastiveSpec("nt_xent_fwd_bwd", p, 65536, 768, "bf16", "cuda")
        for p in ("tempfast", "torch_compile", "torch_eager"))
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 32.00 GiB. GPU 0 has "
                                   "a total capacity of 79.19 GiB of which 9.50 GiB is free. "
                                   "Including non-PyTorch memory, this process has ...")
    reason = contrastive.out_of_memory_reason(eager, error)
    assert reason.endswith("(CUDA out of memory. Tried to allocate 32.00 GiB. GPU 0 has a total "
                           "capacity of 79.19 GiB of which 9.50 GiB is free)")
    benches = [{"group": s.group_name, "name": s.id, "stats": {"median": t, "min": t},
                "extra_info": {**s.extra_info(), "peak_extra_bytes": peak}}
               for s, t, peak in ((ours, 0.5, 1 << 30), (compiled, 1.0, 40 << 30))]
    data = {"benchmarks": benches,
            "tempfast_bench": {"skipped": [{"reason": reason, "count": 1}]}}
    text = report.to_markdown(report.build(data))
    assert ("| nt_xent_fwd_bwd | 65536 | 768 | bf16 | cuda | 500 ms | 106 | OOM | 2.00x | "
            "1024.0 | OOM | 40960.0 |") in text
    assert f"| {reason} | 1 |" in text


"""Every kernel path (rows on chip, slices: cooperative and two-phase) and the launch heuristics.

The heuristics pick a path from the shape; here each path is also forced on shapes that would
normally take another one, so the interpreter runs all of them with every feature flag:
``rows`` (whole rows on chip), ``slices`` (rows cut into several slices: under the interpreter,
where one program runs at a time, the two-phase fallback) and ``one_slice`` (the cooperative
one-read kernel, which the interpreter can run when a row is one slice: the ticket loop, the
row counters and the combine of partials run; only the wait never has to).
"""

from __future__ import annotations

import pytest
import torch

import tempfast
from tempfast.kernels import heuristics
from tempfast.kernels.heuristics import (
    LaunchConfig,
    cdiv,
    next_pow2,
    resident_programs,
    row_config,
    row_limit,
    slices_phases,
)
from tempfast.ops import triton_impl

from ._util import LOSS_TOL, REL_TOL, assert_close, logits_like


def forced(path: str, n_cols: int, block_c: int = 256) -> LaunchConfig:
    if path == "rows":
        return LaunchConfig("rows", 2, max(16, next_pow2(n_cols)), 1, 4)
    if path == "one_slice":
        return LaunchConfig("slices", 1, max(16, next_pow2(n_cols)), 1, 4)
    return LaunchConfig("slices", 1, block_c, cdiv(n_cols, block_c), 4)


PATHS = ("rows", "slices", "one_slice")


@pytest.fixture
def force_path(monkeypatch):
    def apply(path: str, n_cols: int) -> None:
        monkeypatch.setattr(triton_impl, "config_for",
                            lambda x, n_inputs=1, *others: forced(path, n_cols))
    return apply


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_paths_agree_with_reference(force_path, path, probs, label_smoothing,
                                                  weighted, reduction):
    n, c = 5, 1000
    force_path(path, c)
    g = torch.Generator().manual_seed(4)
    logits = logits_like(n, c, torch.bfloat16)
    if probs:
        target = torch.softmax(torch.randn(n, c, generator=g), 1)
    else:
        target = torch.randint(0, c, (n,), generator=g)
        target[2] = -100
    weight = torch.rand(c, generator=g) + 0.5 if weighted else None
    t = torch.linspace(0.5, 3.0, n)
    x = logits.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    with tempfast.use_backend("triton"):
        loss = tempfast.cross_entropy(x, target, tt, weight=weight, reduction=reduction,
                                      label_smoothing=label_smoothing)
    loss.backward(torch.full(loss.shape, 1.5))
    x64 = logits.double().requires_grad_(True)
    t64 = t.double().requires_grad_(True)
    expected = tempfast.reference.cross_entropy(
        x64, target.double() if probs else target, t64,
        weight=weight.double() if weighted else None, reduction=reduction,
        label_smoothing=label_smoothing)
    expected.backward(torch.full(expected.shape, 1.5, dtype=torch.float64))
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(x.grad, x64.grad, REL_TOL[torch.bfloat16], "grad", floor=1e-3)
    assert_close(tt.grad, t64.grad, 1e-4, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("t_grad", [False, True])
def test_softmax_paths_agree_with_reference(force_path, path, log, t_grad):
    n, c = 4, 1000
    force_path(path, c)
    logits = logits_like(n, c, torch.float32)
    logits[1, :700] = float("-inf")  # a masked prefix: the online max starts at -inf
    t = torch.linspace(0.5, 3.0, n)
    x = logits.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(t_grad)
    op = tempfast.log_softmax if log else tempfast.softmax
    ref = tempfast.reference.log_softmax if log else tempfast.reference.softmax
    with tempfast.use_backend("triton"):
        y = op(x, tt)
    upstream = torch.randn(n, c, generator=torch.Generator().manual_seed(0))
    if log:
        upstream[1, :700] = 0.0  # keep -inf * 0 out of the oracle
    y.backward(upstream)
    x64 = logits.double().requires_grad_(True)
    t64 = t.double().requires_grad_(t_grad)
    expected = ref(x64, t64)
    expected.backward(upstream.double())
    assert_close(y, expected, REL_TOL[torch.float32], "output")
    finite = torch.isfinite(x64.grad)
    assert_close(x.grad[finite], x64.grad[finite], REL_TOL[torch.float32], "grad", floor=1.0)
    if t_grad and not log:
        # Autograd's dL/dT through x = -inf is 0 * inf = NaN; the masked classes contribute 0
        # (exp(-inf) = 0), so the oracle uses a finite stand-in that underflows the same way.
        t64 = t.double().requires_grad_(True)
        ref(logits.double().clamp(min=-1e30), t64).backward(upstream.double())
        assert_close(tt.grad, t64.grad, 1e-4, "grad temperature", floor=1e-3)


def test_heuristics_choose_rows_and_slices():
    assert row_config(8192, 1000, 2).path == "rows"
    assert row_config(8192, 1000, 2).block_n == 1, "a program per row of 1000 classes"
    assert row_config(8192, 10, 4).block_n > 1, "short rows share a program"
    assert row_config(8192, row_limit(), 2).path == "rows"
    wide = row_config(8192, 32000, 2)
    assert wide.path == "slices" and wide.n_slices == 4 and wide.block_c == row_limit()
    few = row_config(4, 262144, 2, num_sms=132)
    assert few.path == "slices" and few.block_c < row_limit(), "narrower slices fill the SMs"
    assert 4 * few.n_slices >= 2 * 132
    assert row_config(64, 32000, 2, n_inputs=2).block_c == row_limit(2)


@pytest.mark.parametrize("n_rows", [1, 3, 100, 600, 8192])
@pytest.mark.parametrize("n_cols", [1, 10, 1000, 4097, 32769, 131072, 262144, 1 << 20])
@pytest.mark.parametrize("n_inputs", [1, 2, 3])
def test_heuristics_are_consistent(n_rows, n_cols, n_inputs):
    cfg = row_config(n_rows, n_cols, 2, num_sms=132, n_inputs=n_inputs)
    limit = row_limit(n_inputs)
    if cfg.path == "rows":
        assert cfg.block_c >= n_cols and cfg.n_slices == 1
        assert cfg.block_n * cfg.block_c <= max(heuristics.TILE_ELEMENTS, cfg.block_c) <= limit
    else:
        assert cfg.block_c & (cfg.block_c - 1) == 0
        assert heuristics.MIN_SLICE <= cfg.block_c <= limit
        assert cfg.n_slices * cfg.block_c >= n_cols > (cfg.n_slices - 1) * cfg.block_c
        assert cfg.block_s >= cfg.n_slices
    per_thread = cfg.block_n * cfg.block_c * next_pow2(n_inputs) / (32 * cfg.num_warps)
    assert per_thread <= heuristics.ELEMENTS_PER_THREAD or cfg.num_warps == heuristics.MAX_WARPS
    assert cfg.num_warps in (1, 2, 4, 8)


def test_residency_is_the_occupancy_limit_of_the_compiled_kernel():
    """Registers are allocated per warp in units of 256, shared memory with 1 KiB reserved
    per block; the tightest of registers, threads, shared memory and blocks wins."""
    assert resident_programs(64, 1024, 8, sms=132) == 4 * 132  # 65536 / (8 * 32 * 64)
    assert resident_programs(65, 1024, 8, sms=132) == 3 * 132  # 72 registers allocated
    assert resident_programs(32, 100 * 1024, 4, sms=132) == 2 * 132  # shared memory
    assert resident_programs(16, 0, 1, sms=2) == 32 * 2  # the block limit
    assert slices_phases(16, 528) == 1 and slices_phases(16, 15) == 2
    assert slices_phases(1, 1) == 1 and slices_phases(2, 1) == 2  # the interpreter: one


class _FakeKernel:
    """Stands in for a Triton kernel: records ``kernel[grid](...)`` calls."""

    def __init__(self, name: str, calls: list) -> None:
        self.fn = type("fn", (), {"__name__": name})
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, kwargs))


@pytest.mark.parametrize(("resident", "phases"), [(1, (1, 2)), (3, (1, 2)), (4, (0,)),
                                                  (1000, (0,))])
def test_the_one_read_launch_runs_only_when_every_slice_of_a_row_fits(monkeypatch, resident,
                                                                      phases):
    """Four slices per row: the cooperative launch (PHASE 0, a grid of at most the resident
    programs) needs four resident programs; otherwise the two phases run, each over every
    work item."""
    calls: list = []
    monkeypatch.setattr(triton_impl.ce_kernels, "ce_slices_kernel",
                        _FakeKernel("ce_slices_kernel", calls))
    monkeypatch.setattr(triton_impl.ce_kernels, "ce_prep_kernel", _FakeKernel("prep", []))
    monkeypatch.setattr(triton_impl, "resident_override", lambda kernel, args, kw: resident)
    monkeypatch.setattr(triton_impl, "config_for",
                        lambda x, n_inputs=1, *others: LaunchConfig("slices", 1, 256, 4, 4))
    x = torch.zeros(10, 1000)
    triton_impl.ce_reduced(x, torch.zeros(10, dtype=torch.int64), None, 2.0, None, -100, 0.0,
                           "mean", torch.empty_like(x), False, False)
    assert tuple(kw["PHASE"] for _, kw in calls) == phases
    items = 10 * 4
    expected_grid = min(resident, items) if phases == (0,) else items
    assert all(grid == (expected_grid,) for grid, _ in calls)


def test_out_of_range_target_gives_nan_row_on_the_kernel_path_without_reading_out_of_bounds():
    """The CUDA path cannot raise without a sync: the row's loss and gradient become NaN."""
    n, c = 4, 50
    logits = logits_like(n, c, torch.float32)
    target = torch.tensor([3, c + 1000, -7, -100])
    grad = torch.empty_like(logits)
    t = torch.ones(1)
    loss, _, _ = triton_impl.ce_rows(logits, target, t, None, -100, 0.0, torch.ones(1), grad,
                                     False)
    assert torch.isfinite(loss[0]) and loss[3] == 0
    assert torch.isnan(loss[1]) and torch.isnan(loss[2])
    assert torch.isnan(grad[1]).all() and torch.isnan(grad[2]).all()
    assert torch.isfinite(grad[0]).all() and torch.all(grad[3] == 0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_gives_nan_row_on_the_kernel_path(bad):
    n, c = 3, 20
    logits = logits_like(n, c, torch.float32)
    t = torch.tensor([1.0, bad, 2.0])
    loss, _, _ = triton_impl.ce_rows(logits, torch.tensor([1, 2, 3]), t, None, -100, 0.0,
                                     None, None, False)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    y = triton_impl.softmax_forward(logits, t, False)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("path", ("torch", *PATHS))
@pytest.mark.parametrize("target_kind", ["index", "smoothed", "weighted_smoothed", "probs"])
@pytest.mark.parametrize(("scale", "temperature"), [(100.0, 1.0), (1e4, 0.01), (30.0, 0.05)])
def test_confident_rows_have_a_non_negative_loss_at_float64_precision(
        force_path, path, target_kind, scale, temperature):
    """``lse - z_y / T`` subtracts two numbers of size ``|z| / T``: computed that way, rows
    whose target is the argmax came out negative (-0.5 at scale 1e4, T = 0.01). The loss is
    never negative and matches a float64 reference to fp32 precision of its own size."""
    n, c = 16, 1000
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(n, c, generator=g) * scale
    argmax = logits.argmax(1)
    weight = torch.rand(c, generator=g) + 0.5 if target_kind == "weighted_smoothed" else None
    eps = 0.0 if target_kind in ("index", "probs") else 0.1
    if target_kind == "probs":
        target = torch.nn.functional.one_hot(argmax, c).float()
        target[::2] = 0.9 * target[::2] + 0.1 / c  # some rows not one-hot
    else:
        target = argmax.clone()
        target[::4] = (argmax[::4] + 1) % c  # some rows far from their target: a large loss
    if path == "torch":
        with tempfast.use_backend("torch"):
            loss = tempfast.cross_entropy(logits, target, temperature, weight=weight,
                                          label_smoothing=eps, reduction="none")
    else:
        force_path(path, c)
        with tempfast.use_backend("triton"):
            loss = tempfast.cross_entropy(logits, target, temperature, weight=weight,
                                          label_smoothing=eps, reduction="none")
    expected = tempfast.reference.cross_entropy(
        logits.double(), target.double() if target_kind == "probs" else target, temperature,
        weight=None if weight is None else weight.double(), label_smoothing=eps,
        reduction="none")
    assert float(loss.min()) >= 0.0, f"negative loss {float(loss.min())}"
    # fp32 rounds z / T to 2^-24 of its size (eager torch does too): a gap between two logits
    # is known to a few such units; the loss is off by no more, plus fp32 rounding of itself.
    rounding = 8 * 2.0 ** -24 * (logits.double() / temperature).abs().amax(1)
    error = (loss.double() - expected).abs()
    assert torch.all(error <= 1e-6 * expected.abs() + rounding), float(error.max())
    # Rows whose target is a far-ahead argmax have a loss of about exp(-gap) = log2(s) ln 2
    # with s = 1 + tiny: right to fp32's rounding of s (2^-23), not to that of |z| / T.
    sure = expected < 1e-4
    assert torch.all(error[sure] <= 2.0 ** -22), float(error[sure].max())

"""Every kernel path (single pass, streaming, split row) and the launch heuristics.

The heuristics pick a path from the shape; here each path is also forced on shapes that would
normally take another one, so the interpreter runs all of them with every feature flag.
"""

from __future__ import annotations

import pytest
import torch

import tempfast
from tempfast.kernels.heuristics import LaunchConfig, cdiv, row_config, single_pass_limit
from tempfast.ops import triton_impl

from ._util import LOSS_TOL, REL_TOL, assert_close, logits_like


def forced(path: str, n_cols: int, block_c: int = 256, chunks_per_split: int = 2):
    if path == "single":
        block = max(16, 1 << (n_cols - 1).bit_length())
        return LaunchConfig("single", 2, block, 1, 4)
    if path == "stream":
        return LaunchConfig("stream", 1, block_c, 1, 4)
    splits = cdiv(cdiv(n_cols, block_c), chunks_per_split)
    return LaunchConfig("split", 1, block_c, splits, 4, chunks_per_split)


PATHS = ("single", "stream", "split")


@pytest.fixture
def force_path(monkeypatch):
    def apply(path: str, n_cols: int) -> None:
        monkeypatch.setattr(triton_impl, "config_for",
                            lambda x, n_inputs=1: forced(path, n_cols))
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


def test_heuristics_choose_single_stream_and_split():
    assert row_config(8192, 1000, 2).path == "single"
    assert row_config(8192, 32000, 2).path == "single"
    assert row_config(8192, 32000, 4).path == "stream"
    assert row_config(8192, 262144, 2).path == "stream"
    few = row_config(4, 262144, 2, num_sms=132)
    assert few.path == "split" and few.splits > 1
    assert few.splits * few.cols_per_split >= 262144
    assert (few.splits - 1) * few.cols_per_split < 262144, "no empty split"


@pytest.mark.parametrize("n_rows", [1, 3, 100, 600, 8192])
@pytest.mark.parametrize("n_cols", [1, 10, 1000, 4097, 32769, 131072, 262144, 1 << 20])
@pytest.mark.parametrize("elem_size", [2, 4])
def test_heuristics_are_consistent(n_rows, n_cols, elem_size):
    cfg = row_config(n_rows, n_cols, elem_size, num_sms=132)
    if cfg.path == "single":
        assert cfg.block_c >= n_cols
        assert cfg.block_c <= single_pass_limit(elem_size)
        assert cfg.block_n * cfg.block_c <= max(4096, cfg.block_c)
    elif cfg.path == "stream":
        assert cfg.block_c & (cfg.block_c - 1) == 0 and cfg.splits == 1
    else:
        assert cfg.block_c & (cfg.block_c - 1) == 0
        assert cfg.splits * cfg.cols_per_split >= n_cols
        assert 2 <= cfg.splits <= 64
    assert cfg.num_warps in (4, 8, 16, 32)


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

"""tempfast.cross_entropy: every route and path against the float64 oracle
(``tempfast.reference.cross_entropy``), the kernel paths forced, the numerics, the properties,
the bad inputs and the custom op's registration.

Each comparison computes the loss and the gradients of the logits (and of the temperature / the
probability target where they require grad) for a random upstream gradient, and compares them
with autograd through the oracle evaluated in float64 on the same inputs. ``path`` is a path of
:mod:`tests.harness` (``torch``: the chunked PyTorch path, ``triton``: the kernels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import tempfast
from tempfast import reference
from tempfast.kernels.heuristics import LaunchConfig
from tempfast.ops import cross_entropy as ce
from tempfast.ops.cross_entropy import triton_path
from tempfast.ops.cross_entropy.op import cross_entropy_2d

from . import harness
from .harness import LOSS_TOL, PATHS, REL_TOL, assert_close, logits_like, raises_one_line, run_path

SIZES = (1, 2, 10, 1000, 4097, 32769, 131072)
TEMPERATURES = (0.05, 0.5, 1.0, 8.0, 64.0)
T_GRAD_TOL = 1e-4


def _tensor_t(temperature, requires_grad: bool):
    if isinstance(temperature, torch.Tensor):
        return temperature.clone().requires_grad_(requires_grad)
    return temperature


def check_against_reference(path, logits, target, temperature=1.0, *, t_grad=False,
                            target_grad=False, upstream=None, **kwargs):
    """Run tempfast and the float64 oracle; compare loss and every gradient."""
    dtype = logits.dtype
    x = logits.clone().requires_grad_(True)
    t = _tensor_t(temperature, t_grad)
    tgt = target.clone().requires_grad_(target_grad) if target_grad else target
    loss = run_path(path, tempfast.cross_entropy, x, tgt, t, **kwargs)
    assert loss.dtype == torch.float32
    if upstream is None:
        upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(7)) + 0.5
    loss.backward(upstream)

    x64 = logits.double().requires_grad_(True)
    t64 = _tensor_t(temperature.double() if isinstance(temperature, torch.Tensor)
                    else temperature, t_grad)
    tgt64 = target.double().requires_grad_(target_grad) if target.dtype.is_floating_point \
        else target
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()
            if k != "inplace_backward"}
    expected = reference.cross_entropy(x64, tgt64, t64, **kw64)
    expected.backward(upstream.double())

    assert_close(loss, expected, LOSS_TOL, "loss")
    assert x.grad.dtype == dtype
    assert_close(x.grad, x64.grad, REL_TOL[dtype], "grad logits", floor=1e-2)
    if t_grad:
        assert_close(t.grad, t64.grad, T_GRAD_TOL, "grad temperature", floor=1e-3)
    if target_grad:
        assert tgt.grad.dtype == tgt.dtype
        rel = max(REL_TOL[dtype], REL_TOL.get(tgt.dtype, 0.0))
        assert_close(tgt.grad, tgt64.grad, rel + LOSS_TOL, "grad target", floor=1e-3)
    return loss


# The longest row (64 slices) runs once on the kernels, in bf16: the other dtypes take the
# same slices path at 32769 classes.
CLASS_COUNT_CASES = [(path, dtype, c) for path in PATHS for dtype in harness.DTYPES for c in SIZES
                     if not (path == "triton" and c == SIZES[-1] and dtype != torch.bfloat16)]


@pytest.mark.parametrize(("path", "dtype", "num_classes"), CLASS_COUNT_CASES, ids=str)
def test_matches_reference_for_every_class_count_and_dtype(path, dtype, num_classes):
    n = 2 if num_classes > 4096 else 6
    temperature = TEMPERATURES[SIZES.index(num_classes) % len(TEMPERATURES)]
    logits = logits_like(n, num_classes, dtype)
    target = harness.targets(n, num_classes)
    check_against_reference(path, logits, target, temperature)
    per_row = torch.linspace(0.3, 5.0, n)
    check_against_reference(path, logits, target, per_row, t_grad=True,
                            label_smoothing=0.1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [*TEMPERATURES, "rows", "scalar_tensor"])
def test_matches_reference_across_temperatures_with_learnable_t(path, temperature):
    n, c = 5, 1000
    if temperature == "rows":
        temperature = torch.tensor([0.05, 0.5, 1.0, 8.0, 64.0])
    elif temperature == "scalar_tensor":
        temperature = torch.tensor(2.5)
    else:
        temperature = torch.tensor(temperature)
    check_against_reference(path, logits_like(n, c, torch.float32), harness.targets(n, c),
                            temperature, t_grad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n_rows", [0, 1, 7])
@pytest.mark.parametrize("num_classes", [10, 4097])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_handles_zero_one_and_several_rows(path, n_rows, num_classes, reduction):
    logits = logits_like(n_rows, num_classes, torch.float32)
    target = harness.targets(n_rows, num_classes)
    loss = check_against_reference(path, logits, target, 2.0, reduction=reduction)
    if n_rows == 0 and reduction == "mean":
        assert torch.isnan(loss)


def _option_cases(reductions, smoothing):
    """Every combination on rows that fit on chip (10, 4097 classes); the slices path of a
    real wide row (40000) with every option at once: each option alone on that path is in
    the forced-path tests."""
    return [(c, r, ls, w) for c in (10, 4097, 40000) for r in reductions for ls in smoothing
            for w in (False, True) if c < 40000 or (w and ls)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("num_classes", "reduction", "label_smoothing", "weighted"),
                         _option_cases(("mean", "sum", "none"), (0.0, 0.2)), ids=str)
def test_options_match_torch_semantics(path, num_classes, reduction, label_smoothing,
                                       weighted):
    n = 4
    target = harness.targets(n, num_classes)
    target[1] = -1  # a custom ignore_index
    weight = torch.rand(num_classes, generator=torch.Generator().manual_seed(3)) + 0.1 \
        if weighted else None
    check_against_reference(path, logits_like(n, num_classes, torch.float32), target,
                            torch.tensor(1.7), t_grad=True, weight=weight, ignore_index=-1,
                            reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_in_16_bit(path, dtype, reduction):
    """Weights, label smoothing, an ignored row and a learnable T together, in fp16 / bf16."""
    n, c = 5, 1000
    target = harness.targets(n, c)
    target[2] = -100
    weight = torch.rand(c, generator=torch.Generator().manual_seed(4)) + 0.1
    check_against_reference(path, logits_like(n, c, dtype), target, torch.tensor(1.7),
                            t_grad=True, weight=weight, reduction=reduction,
                            label_smoothing=0.2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", harness.DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_rows_ignored_gives_what_torch_gives(path, dtype, reduction, weighted):
    """NaN mean (0 / 0), and gradients exactly 0 for the logits AND a learnable T (a single
    all-padding batch must not turn a learned temperature into NaN)."""
    n, c = 3, 10
    logits = logits_like(n, c, dtype)
    target = torch.full((n,), -100)
    weight = torch.rand(c).to(dtype) if weighted else None
    x = logits.clone().requires_grad_(True)
    t = torch.tensor(4.0, requires_grad=True)
    loss = run_path(path, tempfast.cross_entropy, x, target, t, weight=weight,
                       reduction=reduction)
    x_ref = logits.float().requires_grad_(True)
    t_ref = torch.tensor(4.0, requires_grad=True)
    expected = F.cross_entropy(x_ref / t_ref, target, reduction=reduction,
                               weight=None if weight is None else weight.float())
    assert torch.equal(torch.isnan(loss), torch.isnan(expected))
    assert_close(loss, expected, LOSS_TOL, "loss")
    loss.sum().backward()
    expected.sum().backward()
    assert torch.equal(x_ref.grad, torch.zeros_like(x_ref)) and float(t_ref.grad) == 0.0
    assert torch.equal(x.grad, torch.zeros_like(logits))
    assert float(t.grad) == 0.0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("num_classes", "reduction", "label_smoothing", "weighted"),
                         _option_cases(("mean", "none"), (0.0, 0.3)), ids=str)
def test_probability_targets_with_gradients(path, num_classes, label_smoothing, weighted,
                                            reduction):
    n = 3
    g = torch.Generator().manual_seed(11)
    probs = torch.softmax(torch.randn(n, num_classes, generator=g) * 2, dim=1)
    weight = torch.rand(num_classes, generator=g) + 0.5 if weighted else None
    check_against_reference(path, logits_like(n, num_classes, torch.float32), probs,
                            torch.tensor(3.0), t_grad=True, target_grad=True, weight=weight,
                            reduction=reduction, label_smoothing=label_smoothing)
    # Without target gradients the fused path runs.
    check_against_reference(path, logits_like(n, num_classes, torch.bfloat16), probs, 0.5,
                            weight=weight, reduction=reduction,
                            label_smoothing=label_smoothing)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("logits_dtype", "target_dtype"), [
    (torch.float32, torch.float64), (torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)], ids=str)
def test_probability_targets_in_another_dtype(path, logits_dtype, target_dtype):
    n, c = 4, 300
    probs = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(5)), 1)
    probs = probs.to(target_dtype)
    check_against_reference(path, logits_like(n, c, logits_dtype), probs, 2.0,
                            label_smoothing=0.1)
    check_against_reference(path, logits_like(n, c, logits_dtype), probs, 2.0,
                            target_grad=True, reduction="sum")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", harness.DTYPES, ids=str)
def test_language_model_shaped_logits_with_class_dim_last(path, dtype):
    b, s, c = 2, 5, 257
    logits = logits_like(b * s, c, dtype).reshape(b, s, c)
    target = harness.targets(b * s, c).reshape(b, s)
    target[1, 3:] = -100  # padding
    per_position = torch.rand(b, s, generator=torch.Generator().manual_seed(2)) + 0.5
    check_against_reference(path, logits, target, per_position, t_grad=True, class_dim=-1)
    loss = check_against_reference(path, logits, target, 8.0, reduction="none",
                                   class_dim=-1)
    assert loss.shape == (b, s)
    assert torch.all(loss[1, 3:] == 0)
    reshaped = F.cross_entropy(logits.double().reshape(-1, c) / 8.0, target.reshape(-1),
                               reduction="none").reshape(b, s)
    assert_close(loss, reshaped, LOSS_TOL, "loss")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_three_dimensional_logits_take_torch_layout_by_default(path, reduction):
    """``(N, C, d)`` logits mean what they mean to ``F.cross_entropy``: classes at dim 1. The
    call that used to be read class-last, logits (2, 5, 5) with target (2, 5), gave 1.9796
    where torch gives 2.2445."""
    logits = logits_like(10, 5, torch.float32, seed=3).reshape(2, 5, 5)
    target = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    ours = run_path(path, tempfast.cross_entropy, logits, target, 2.0,
                       reduction=reduction)
    theirs = F.cross_entropy(logits / 2.0, target, reduction=reduction)
    assert ours.shape == theirs.shape
    assert_close(ours, theirs, LOSS_TOL, "loss")
    check_against_reference(path, logits, target, 2.0, reduction=reduction)


@pytest.mark.parametrize("path", PATHS)
def test_image_shaped_logits_with_every_option(path):
    """Segmentation-shaped ``(N, C, H, W)`` logits: per-pixel temperatures of the target's
    shape, probability targets of the logits' shape, weights, smoothing, ignored pixels."""
    n, c, h, w = 2, 7, 3, 4
    logits = logits_like(n * h * w, c, torch.float32, seed=5).reshape(n, h, w, c)
    logits = logits.permute(0, 3, 1, 2)  # (N, C, H, W), classes strided as a conv gives them
    g = torch.Generator().manual_seed(6)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, 1, :2] = -100
    weight = torch.rand(c, generator=g) + 0.5
    per_pixel = torch.rand(n, h, w, generator=g) + 0.5
    check_against_reference(path, logits, target, per_pixel, t_grad=True, weight=weight,
                            label_smoothing=0.1)
    loss = run_path(path, tempfast.cross_entropy, logits, target, 2.0, reduction="none")
    assert loss.shape == (n, h, w)
    assert_close(loss, F.cross_entropy(logits / 2.0, target, reduction="none"), LOSS_TOL, "loss")
    probs = torch.softmax(torch.randn(n, c, h, w, generator=g), 1)
    check_against_reference(path, logits, probs, 1.5, target_grad=True)
    assert_close(run_path(path, tempfast.cross_entropy, logits, probs, 1.5),
                 F.cross_entropy(logits / 1.5, probs), LOSS_TOL, "loss")


def test_class_last_target_without_class_dim_names_the_argument():
    logits = torch.randn(2, 5, 7)
    with pytest.raises(ValueError, match="class_dim=-1"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(IndexError, match="class_dim"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long), class_dim=3)
    with pytest.raises(TypeError, match="class_dim"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long), class_dim=1.0)


@pytest.mark.parametrize("path", PATHS)
def test_single_example_without_batch_dim(path):
    check_against_reference(path, logits_like(1, 33, torch.float32)[0],
                            torch.tensor(4), 2.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["transposed", "column_slice", "row_stride", "expanded_t"])
def test_non_contiguous_inputs(path, layout):
    n, c = 6, 300
    base = logits_like(2 * max(n, c), 2 * max(n, c), torch.float32)
    if layout == "transposed":
        logits = base[:c, :n].t()
    elif layout == "column_slice":
        logits = base[:n, 5:5 + c]
    elif layout == "row_stride":
        logits = base[: 2 * n : 2, :c]
    else:
        logits = base[:n, :c]
    assert not logits.is_contiguous() or layout == "expanded_t"
    temperature = torch.tensor(1.5).expand(n) if layout == "expanded_t" else 1.5
    target = harness.targets(n, c)
    check_against_reference(path, logits, target, temperature)
    probs = torch.softmax(base[:c, n:2 * n], 0).t()
    assert not probs.is_contiguous()
    check_against_reference(path, logits, probs, 2.0, reduction="sum")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("num_classes", "reduction"), [
    (10, "mean"), (10, "sum"), (10, "none"), (4097, "mean"), (4097, "sum"), (4097, "none"),
    (40000, "mean"), (40000, "none")], ids=str)  # 40000: the fused and the custom-op route
def test_inplace_backward_overwrites_logits_with_the_gradient(path, num_classes, reduction):
    n = 4
    logits = logits_like(n, num_classes, torch.bfloat16)
    target = harness.targets(n, num_classes)
    target[0] = -100
    t = torch.tensor(2.0)
    x_ref = logits.clone().requires_grad_(True)
    t_ref = t.clone().requires_grad_(True)
    expected = run_path(path, tempfast.cross_entropy, x_ref, target, t_ref,
                           reduction=reduction, label_smoothing=0.1)
    upstream = torch.full(expected.shape, 3.0)
    expected.backward(upstream)

    leaf = logits.float().requires_grad_(True)
    x = leaf.to(torch.bfloat16)  # a non-leaf buffer, as a linear layer's output would be
    grads = []
    x.register_hook(lambda grad: grads.append(grad))
    t_in = t.clone().requires_grad_(True)
    loss = run_path(path, tempfast.cross_entropy, x, target, t_in, reduction=reduction,
                       label_smoothing=0.1, inplace_backward=True)
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert not torch.equal(x.detach(), logits), "the logits buffer holds the gradient"
    loss.backward(upstream)
    assert_close(grads[0], x_ref.grad, REL_TOL[torch.bfloat16], "grad", floor=1e-3)
    assert grads[0].data_ptr() == x.data_ptr(), "the gradient lives in the logits buffer"
    assert_close(t_in.grad, t_ref.grad, T_GRAD_TOL, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_twice_through_a_retained_graph(path, inplace, reduction):
    """Each backward call gets the gradient for its own upstream gradient; the first result is
    not modified by the later calls."""
    n, c = 3, 10
    logits = logits_like(n, c, torch.float32)
    target = harness.targets(n, c)
    leaf = logits.clone().requires_grad_(True)
    x = leaf * 1.0
    loss = run_path(path, tempfast.cross_entropy, x, target, 2.0, reduction=reduction,
                       inplace_backward=inplace)
    shape = loss.shape
    (first,) = torch.autograd.grad(loss, leaf, torch.full(shape, 2.0), retain_graph=True)
    first_copy = first.clone()
    (second,) = torch.autograd.grad(loss, leaf, torch.full(shape, -0.5), retain_graph=True)
    (third,) = torch.autograd.grad(loss, leaf, torch.full(shape, 1.0))
    ref = logits.double().requires_grad_(True)
    expected = reference.cross_entropy(ref, target, 2.0, reduction=reduction)
    (unit,) = torch.autograd.grad(expected, ref, torch.ones(shape, dtype=torch.float64))
    assert_close(first, 2.0 * unit, REL_TOL[torch.float32], "first", floor=1e-3)
    assert_close(second, -0.5 * unit, REL_TOL[torch.float32], "second", floor=1e-3)
    assert_close(third, unit, REL_TOL[torch.float32], "third", floor=1e-3)
    assert torch.equal(first, first_copy)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("upstream", [1.0, 0.0, -2.5, 65536.0])
def test_fused_gradient_is_rescaled_by_any_upstream_gradient(path, upstream):
    n, c = 5, 77
    check_against_reference(path, logits_like(n, c, torch.float16), harness.targets(n, c), 3.0,
                            upstream=torch.tensor(upstream), label_smoothing=0.05)


@pytest.mark.parametrize("path", PATHS)
def test_no_grad_and_frozen_logits_compute_only_what_is_needed(path):
    logits = logits_like(4, 50, torch.float32)
    target = harness.targets(4, 50)
    with torch.no_grad():
        loss = run_path(path, tempfast.cross_entropy, logits, target, 2.0)
    assert_close(loss, reference.cross_entropy(logits.double(), target, 2.0), LOSS_TOL, "loss")
    # Temperature calibration: only T learns, the logits are data.
    check_against_reference(path, logits, target, torch.tensor(1.3), t_grad=True)


def test_torch_path_gradcheck_in_float64():
    # nondet_tol: a second backward through the retained graph rescales the first result by
    # g2 / g1, which can differ from the direct product in the last bit.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0.7, 1.1, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 7, (4,), generator=g)
    probs = torch.softmax(torch.randn(4, 7, dtype=torch.float64, generator=g), 1)
    probs.requires_grad_(True)
    weight = torch.rand(7, dtype=torch.float64, generator=g) + 0.5
    with harness.on_path("torch"):
        for reduction in ("mean", "sum", "none"):
            assert torch.autograd.gradcheck(
                lambda x, tt, r=reduction: tempfast.cross_entropy(
                    x, target, tt, weight=weight, reduction=r, label_smoothing=0.1),
                (logits, t), nondet_tol=1e-12)
            assert torch.autograd.gradcheck(
                lambda x, tt, q, r=reduction: tempfast.cross_entropy(
                    x, q, tt, reduction=r, label_smoothing=0.2), (logits, t, probs),
                nondet_tol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_matches_torch_in_the_input_dtype(path):
    """Against torch's own bf16 / fp16 computation (which rounds x / T to the dtype first)."""
    for dtype in (torch.bfloat16, torch.float16):
        logits = logits_like(8, 1000, dtype)
        target = harness.targets(8, 1000)
        ours = run_path(path, tempfast.cross_entropy, logits, target, 2.0)
        theirs = F.cross_entropy(logits / 2.0, target)
        assert_close(ours, theirs.float(), 2 * REL_TOL[dtype], f"loss {dtype}")


@pytest.mark.parametrize("path", PATHS)
def test_fused_backward_allocates_no_logits_sized_buffer(path):
    """The gradient was written in the forward pass; the backward pass only applies the
    upstream gradient (here 1: nothing to do), so it allocates nothing of size N x C."""
    from torch.profiler import ProfilerActivity, profile

    n, c = 64, 4097
    x = logits_like(n, c, torch.float32).requires_grad_(True)
    loss = run_path(path, tempfast.cross_entropy, x, harness.targets(n, c), 2.0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    assert allocated < n * c * 4 // 8, f"backward allocated {allocated} bytes"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("num_classes", [10, 4097, 40000])
def test_ignored_rows_with_non_finite_logits_contribute_nothing(path, num_classes):
    """A padding position (ignored) may hold -inf or +inf logits, and a masked class (-inf)
    may be the one an ignored row's clamped index points at: the loss stays finite and the
    ignored rows' gradients are exactly 0, as in torch."""
    n = 4
    logits = logits_like(n, num_classes, torch.float32)
    logits[:, 0] = float("-inf")  # a masked class, e.g. the pad token
    logits[1] = float("-inf")  # an ignored row of -inf
    logits[3, 5] = float("inf")  # an ignored row holding +inf
    target = torch.tensor([2, -100, 7, -100])
    x = logits.clone().requires_grad_(True)
    t = torch.tensor(2.0, requires_grad=True)
    loss = run_path(path, tempfast.cross_entropy, x, target, t)
    loss.backward()
    x64 = logits.double().requires_grad_(True)
    expected = F.cross_entropy(x64 / 2.0, target)
    expected.backward()
    assert torch.isfinite(loss) and torch.isfinite(t.grad)
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert torch.all(x.grad[[1, 3]] == 0)
    assert_close(x.grad[[0, 2]], x64.grad[[0, 2]], REL_TOL[torch.float32], "grad", floor=1e-2)
    none = run_path(path, tempfast.cross_entropy, logits, target, 2.0, reduction="none")
    assert torch.equal(none[[1, 3]], torch.zeros(2))


@pytest.mark.parametrize("path", PATHS)
def test_fp16_gradient_survives_a_loss_scaler(path):
    """fp16 gradients of a mean over many rows are tiny before the loss scaler's factor
    arrives (``(p - q) / (T N)``: about ``1e-3 / 16384`` here, under fp16's subnormals); the
    fused path must not round them to zero first."""
    n, c, t, scale = 256, 1000, 64.0, 65536.0
    logits = logits_like(n, c, torch.float16, scale=t)
    target = harness.targets(n, c)
    x = logits.clone().requires_grad_(True)
    (run_path(path, tempfast.cross_entropy, x, target, t) * scale).backward()
    x64 = logits.double().requires_grad_(True)
    (reference.cross_entropy(x64, target, t) * scale).backward()
    expected = x64.grad
    representable = expected.abs() > 6e-5  # fp16's smallest normal number
    assert_close(x.grad, expected, REL_TOL[torch.float16], "grad", floor=1e-3)
    lost = (x.grad == 0) & representable
    assert lost.sum() == 0, f"{int(lost.sum())} representable gradients flushed to zero"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_is_refused_not_silently_wrong(path, reduction):
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    loss = run_path(path, tempfast.cross_entropy, x, harness.targets(3, 10), 2.0,
                    reduction=reduction)
    harness.assert_refuses_double_backward(loss, x)


def test_small_cpu_calls_differentiate_twice_like_torch():
    """The small CPU route is stock aten ops: double backward is right, not refused."""
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    target = harness.targets(3, 10)
    with harness.on_path("aten"):
        loss = tempfast.cross_entropy(x, target, 2.0, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    expected = reference.cross_entropy(x64, target, 2.0, label_smoothing=0.1)
    (g64,) = torch.autograd.grad(expected, x64, create_graph=True)
    (gg64,) = torch.autograd.grad(g64.square().sum(), x64)
    assert_close(gg, gg64, 1e-5, "second derivative", floor=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_retained_graph_after_a_zero_upstream_gradient_raises(path):
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    loss = run_path(path, tempfast.cross_entropy, x * 1.0, harness.targets(3, 10), 2.0)
    (zero,) = torch.autograd.grad(loss, x, torch.tensor(0.0), retain_graph=True)
    assert torch.all(zero == 0)
    with pytest.raises(RuntimeError, match="zero upstream"):
        torch.autograd.grad(loss, x, torch.tensor(1.0))


def test_float64_with_smoothing_and_weights_is_exact_to_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, dtype=torch.float64, generator=g)
    target = torch.randint(0, 9, (6,), generator=g)
    target[2] = -100
    weight = torch.rand(9, dtype=torch.float64, generator=g) + 0.5
    for reduction in ("mean", "sum", "none"):
        ours = tempfast.cross_entropy(logits, target, 1.7, weight=weight, reduction=reduction,
                                      label_smoothing=0.3)
        theirs = F.cross_entropy(logits / 1.7, target, weight=weight, reduction=reduction,
                                 label_smoothing=0.3)
        assert ours.dtype == torch.float64
        assert torch.allclose(ours, theirs, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("path", PATHS)
def test_masked_classes_give_a_finite_temperature_gradient(path):
    x = logits_like(4, 12, torch.float32)
    x[:, 5:8] = float("-inf")
    target = torch.tensor([0, 3, 9, 11])
    t = torch.tensor(1.7, requires_grad=True)
    run_path(path, tempfast.cross_entropy, x, target, t).backward()
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    reference.cross_entropy(x.double().clamp(min=-1e30), target, t64).backward()
    assert torch.isfinite(t.grad)
    assert_close(t.grad, t64.grad, 1e-5, "grad temperature", floor=1e-3)


# --------------------------------------------------------------------------------------------
# Routes: each one taken (tempfast.ops.cross_entropy.route says which) and right.
# --------------------------------------------------------------------------------------------
class _Traced(TorchDispatchMode):
    """A pass-through dispatch mode: the ops see a traced call, as under torch.compile."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _route_case(route: str):
    """``(logits, target, temperature, kwargs)`` of a call that takes ``route``."""
    logits = logits_like(5, 37, torch.float32, seed=8)
    target = harness.targets(5, 37, seed=8)
    target[1] = -100
    if route == "aten":
        return logits, target, 2.0, {"label_smoothing": 0.1}
    if route == "fused":
        return logits, target, torch.tensor(2.0), {"weight": torch.rand(37) + 0.5}
    if route == "fused_inplace":
        return logits, target, 2.0, {"inplace_backward": True}
    if route == "inplace_op":
        return logits, target, 2.0, {"inplace_backward": True, "reduction": "none"}
    probs = torch.softmax(logits_like(5, 37, torch.float32, seed=9), 1)
    return logits, probs.requires_grad_(True), 1.5, {"reduction": "sum"}


ROUTE_CASES = [("aten", "aten")] + [(route, path) for route in
                                    ("fused", "fused_inplace", "inplace_op", "custom_op")
                                    for path in PATHS]


@pytest.mark.parametrize(("route", "path"), ROUTE_CASES)
def test_every_route_is_taken_and_matches_the_reference(route, path):
    """Each route of ``tempfast.ops.cross_entropy.route`` (the aten route only exists on the
    default torch path, for small calls) on each path it can run on."""
    logits, target, t, kwargs = _route_case(route)
    leaf = logits.clone().requires_grad_(True)
    with harness.on_path(path):
        x = leaf * 1.0  # inplace_backward needs a non-leaf
        call = ce.normalise(x, target, t, weight=kwargs.get("weight"), ignore_index=-100,
                            reduction=kwargs.get("reduction", "mean"),
                            label_smoothing=kwargs.get("label_smoothing", 0.0), class_dim=None,
                            inplace_backward=kwargs.get("inplace_backward", False))
        assert ce.route(call) == route
        loss = tempfast.cross_entropy(x, target, t, **kwargs)
    loss.backward(torch.ones(loss.shape))
    x64 = logits.double().requires_grad_(True)
    kw64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
            if k != "inplace_backward"}
    target64 = target.detach().double() if target.dtype.is_floating_point else target
    expected = reference.cross_entropy(x64, target64, t, **kw64)
    expected.backward(torch.ones(expected.shape, dtype=torch.float64))
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(leaf.grad, x64.grad, REL_TOL[torch.float32], "grad", floor=1e-3)


@pytest.mark.parametrize(("route", "path"), ROUTE_CASES)
@pytest.mark.parametrize("per_row", [False, True])
def test_the_temperature_is_checked_once_per_call(monkeypatch, route, path, per_row):
    """Its shape and type once, where the call is normalised (the plain small call checks a
    number inline there); its values once, where they are read: a tensor's in the op, a
    number's with its type, forward and backward together. (The custom ops take the
    temperature as a tensor, so a number becomes one and the op checks it as it checks any
    tensor: a traced or direct call reaches the op without ``normalise``.)"""
    from tempfast import _checks
    from tempfast.ops.cross_entropy import op as ce_op

    calls = {"normalise": 0, "values": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(_checks, "temperature_of_rows",
                        counted("normalise", _checks.temperature_of_rows))
    values = counted("values", _checks.check_temperature_values)
    monkeypatch.setattr(_checks, "check_temperature_values", values)
    monkeypatch.setattr(ce_op, "check_temperature_values", values)
    logits, target, t, kwargs = _route_case(route)
    if per_row:
        t = torch.linspace(0.5, 2.0, logits.shape[0])
    with harness.on_path(path):
        loss = tempfast.cross_entropy(logits.clone().requires_grad_(True) * 1.0, target, t,
                                      **kwargs)
    loss.sum().backward()
    number = not isinstance(t, torch.Tensor)
    assert calls["normalise"] == (0 if number and route == "aten" else 1)
    assert calls["values"] == (0 if number and route in ("aten", "fused_inplace") else 1)


@pytest.mark.parametrize("path", PATHS)
def test_traced_calls_take_the_custom_op(path):
    logits, target = logits_like(4, 30, torch.float32), harness.targets(4, 30)
    x = logits.clone().requires_grad_(True)
    t = torch.tensor(1.5, requires_grad=True)
    with harness.on_path(path), _Traced():
        call = ce.normalise(x, target, t, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, class_dim=None, inplace_backward=False)
        assert ce.route(call) == "custom_op"
        loss = tempfast.cross_entropy(x, target, t)
        loss.backward()
    x64 = logits.double().requires_grad_(True)
    t64 = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    reference.cross_entropy(x64, target, t64).backward()
    assert_close(x.grad, x64.grad, REL_TOL[torch.float32], "grad", floor=1e-3)
    assert_close(t.grad, t64.grad, T_GRAD_TOL, "grad temperature", floor=1e-3)


# --------------------------------------------------------------------------------------------
# Kernel paths, forced on shapes that would take another (the interpreter runs them all).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_path", harness.KERNEL_PATHS)
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_kernel_paths_agree_with_reference(monkeypatch, kernel_path, probs, label_smoothing,
                                           weighted, reduction):
    n, c = 5, 1000
    harness.force_config(monkeypatch, triton_path, harness.forced(kernel_path, c))
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
    loss = run_path("triton", tempfast.cross_entropy, x, target, tt, weight=weight,
                    reduction=reduction, label_smoothing=label_smoothing)
    loss.backward(torch.full(loss.shape, 1.5))
    x64 = logits.double().requires_grad_(True)
    t64 = t.double().requires_grad_(True)
    expected = reference.cross_entropy(
        x64, target.double() if probs else target, t64,
        weight=weight.double() if weighted else None, reduction=reduction,
        label_smoothing=label_smoothing)
    expected.backward(torch.full(expected.shape, 1.5, dtype=torch.float64))
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(x.grad, x64.grad, REL_TOL[torch.bfloat16], "grad", floor=1e-3)
    assert_close(tt.grad, t64.grad, 1e-4, "grad temperature", floor=1e-3)


class _FakeKernel:
    """Stands in for a Triton kernel: records ``kernel[grid](...)`` calls."""

    def __init__(self, name: str, calls: list) -> None:
        self.fn = type("fn", (), {"__name__": name})
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, kwargs))


@pytest.mark.parametrize(("resident", "phases"), [(1, (1, 2)), (3, (1, 2)), (4, (0, 2)),
                                                  (1000, (0, 2))])
def test_the_one_read_launch_runs_only_when_every_slice_of_a_row_fits(monkeypatch, resident,
                                                                      phases):
    """Four slices per row: the cooperative launch (PHASE 0, a grid of at most the resident
    programs, then its repair launch on the same grid) needs four resident programs;
    otherwise the two phases run, each over every work item."""
    from tempfast.ops import launch

    calls: list = []
    monkeypatch.setattr(triton_path.kernels, "ce_slices_kernel",
                        _FakeKernel("ce_slices_kernel", calls))
    monkeypatch.setattr(triton_path.kernels, "ce_prep_kernel", _FakeKernel("prep", []))
    monkeypatch.setattr(launch, "resident_override", lambda kernel, args, kw: resident)
    harness.force_config(monkeypatch, triton_path, LaunchConfig("slices", 1, 256, 4, 4))
    x = torch.zeros(10, 1000)
    triton_path.ce_reduced(x, torch.zeros(10, dtype=torch.int64), None, 2.0, None, -100, 0.0,
                           "mean", torch.empty_like(x), False, False)
    assert tuple(kw["PHASE"] for _, kw in calls) == phases
    items = 10 * 4
    expected_grid = min(resident, items) if phases[0] == 0 else items
    assert all(grid == (expected_grid,) for grid, _ in calls)


def test_out_of_range_target_gives_nan_row_on_the_kernel_path_without_reading_out_of_bounds():
    """The CUDA path cannot raise without a sync: the row's loss and gradient become NaN."""
    n, c = 4, 50
    logits = logits_like(n, c, torch.float32)
    target = torch.tensor([3, c + 1000, -7, -100])
    grad = torch.empty_like(logits)
    t = torch.ones(1)
    loss, _, _ = triton_path.ce_rows(logits, target, t, None, -100, 0.0, torch.ones(1), grad,
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
    loss, _, _ = triton_path.ce_rows(logits, torch.tensor([1, 2, 3]), t, None, -100, 0.0,
                                     None, None, False)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


@pytest.mark.parametrize("path", ("torch", *harness.KERNEL_PATHS))
@pytest.mark.parametrize("target_kind", ["index", "smoothed", "weighted_smoothed", "probs"])
@pytest.mark.parametrize(("scale", "temperature"), [(100.0, 1.0), (1e4, 0.01), (30.0, 0.05)])
def test_confident_rows_have_a_non_negative_loss_at_float64_precision(
        monkeypatch, path, target_kind, scale, temperature):
    """``lse - z_y / T`` subtracts two numbers of size ``|z| / T``: computed that way, rows
    whose target is the argmax came out negative (-0.5 at scale 1e4, T = 0.01). The loss is
    never negative and matches a float64 reference to fp32 precision of its own size."""
    n, c = 8, 1000
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
    if path != "torch":
        harness.force_config(monkeypatch, triton_path, harness.forced(path, c))
    loss = run_path("torch" if path == "torch" else "triton", tempfast.cross_entropy, logits,
                    target, temperature, weight=weight, label_smoothing=eps, reduction="none")
    expected = reference.cross_entropy(
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


# --------------------------------------------------------------------------------------------
# Properties (hypothesis): identities that hold for any input.
# --------------------------------------------------------------------------------------------
PATH = st.sampled_from(PATHS)
SHAPES = st.tuples(st.integers(0, 6), st.integers(1, 300))
TEMPERATURE = st.floats(0.05, 64.0)
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _data(n, c, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


@PROPERTY_SETTINGS
@given(PATH, SHAPES, TEMPERATURE, st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_temperature_is_a_division_of_the_logits(path, shape, t, eps, seed):
    x, y = _data(*shape, seed)
    with harness.on_path(path):
        scaled = tempfast.cross_entropy(x, y, t, label_smoothing=eps, reduction="sum")
        divided = tempfast.cross_entropy(x / t, y, 1.0, label_smoothing=eps, reduction="sum")
    assert torch.allclose(scaled, divided, rtol=1e-4, atol=1e-4)


@PROPERTY_SETTINGS
@given(PATH, SHAPES, TEMPERATURE, st.integers(0, 2**16))
def test_one_hot_probabilities_equal_class_indices(path, shape, t, seed):
    x, y = _data(*shape, seed)
    one_hot = torch.nn.functional.one_hot(y, shape[1]).float()
    with harness.on_path(path):
        a = tempfast.cross_entropy(x, y, t, reduction="none")
        b = tempfast.cross_entropy(x, one_hot, t, reduction="none")
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@PROPERTY_SETTINGS
@given(PATH, st.integers(1, 6), st.integers(2, 300), TEMPERATURE, st.floats(0.0, 1.0),
       st.integers(0, 2**16))
def test_unweighted_gradient_rows_sum_to_zero_and_scale_with_one_over_t(path, n, c, t, eps,
                                                                        seed):
    x, y = _data(n, c, seed)
    x.requires_grad_(True)
    with harness.on_path(path):
        tempfast.cross_entropy(x, y, t, label_smoothing=eps, reduction="sum").backward()
    assert torch.allclose(x.grad.sum(-1), torch.zeros(n), atol=1e-5 / min(t, 1.0))
    # |grad| <= 2 / T: (p - q) / T with p, q probability vectors.
    assert float(x.grad.abs().max()) <= 2.0 / t + 1e-6


# --------------------------------------------------------------------------------------------
# Bad inputs: a one-line error naming the argument, before any launch.
# --------------------------------------------------------------------------------------------
X = torch.randn(4, 10)
Y = torch.randint(0, 10, (4,))


@pytest.mark.parametrize("path", ["aten", *PATHS])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_float_temperature(path, bad):
    with harness.on_path(path):
        raises_one_line(ValueError, "^temperature", tempfast.cross_entropy, X, Y, bad)


@pytest.mark.parametrize("path", ["aten", *PATHS])
@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_tensor_temperature_on_cpu(path, bad):
    per_row = torch.tensor([1.0, bad, 2.0, 3.0])
    with harness.on_path(path):
        raises_one_line(ValueError, "^temperature", tempfast.cross_entropy, X, Y, per_row)
        raises_one_line(ValueError, "^temperature", tempfast.cross_entropy, X, Y,
                        torch.tensor(bad))


def test_temperature_of_wrong_shape_or_type():
    raises_one_line(ValueError, "^temperature: expected a scalar or one value per row",
                    tempfast.cross_entropy, X, Y, torch.ones(3))
    raises_one_line(TypeError, "^temperature", tempfast.cross_entropy, X, Y, True)
    raises_one_line(TypeError, "^temperature", tempfast.cross_entropy, X, Y, "8")
    raises_one_line(TypeError, "^temperature", tempfast.cross_entropy, X, Y, torch.tensor(2))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_integer_or_complex_logits(dtype):
    raises_one_line(TypeError, "^logits", tempfast.cross_entropy, torch.zeros(4, 10, dtype=dtype),
                    Y)


def test_shape_mismatches():
    raises_one_line(ValueError, "^target: expected shape", tempfast.cross_entropy, X, Y[:3])
    raises_one_line(ValueError, "^target: expected shape", tempfast.cross_entropy, X,
                    torch.rand(4, 9))
    raises_one_line(ValueError, "^logits", tempfast.cross_entropy, torch.tensor(1.0),
                    torch.tensor(0))
    raises_one_line(ValueError, "^logits", tempfast.cross_entropy, torch.zeros(4, 0),
                    torch.zeros(4, dtype=torch.long))
    raises_one_line(TypeError, "^target", tempfast.cross_entropy, X, [1, 2, 3, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_class_targets(dtype):
    raises_one_line(TypeError, "^target: class-index targets", tempfast.cross_entropy, X,
                    Y.to(dtype))


@pytest.mark.parametrize("path", ["aten", *PATHS])
@pytest.mark.parametrize("bad", [10, 1000, -1, -101])
def test_class_index_out_of_range_on_cpu_names_the_value(path, bad):
    target = Y.clone()
    target[2] = bad
    with harness.on_path(path):
        message = raises_one_line(ValueError, "^target: class index", tempfast.cross_entropy, X,
                                  target)
    assert str(bad) in message


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval(value):
    raises_one_line(ValueError, "^label_smoothing", tempfast.cross_entropy, X, Y,
                    label_smoothing=value)
    raises_one_line(TypeError, "^label_smoothing", tempfast.cross_entropy, X, Y,
                    label_smoothing="0.1")


def test_unknown_reduction():
    raises_one_line(ValueError, "^reduction", tempfast.cross_entropy, X, Y, reduction="avg")


def test_weight_of_wrong_length_or_type():
    raises_one_line(ValueError, "^weight: expected shape", tempfast.cross_entropy, X, Y,
                    weight=torch.ones(9))
    raises_one_line(ValueError, "^weight", tempfast.cross_entropy, X, Y,
                    weight=torch.ones(10, 1))
    raises_one_line(TypeError, "^weight", tempfast.cross_entropy, X, Y,
                    weight=torch.ones(10, dtype=torch.long))


def test_ignore_index_must_be_an_int():
    raises_one_line(TypeError, "^ignore_index", tempfast.cross_entropy, X, Y, ignore_index=1.5)


def test_inplace_backward_needs_a_viewable_unit_stride_buffer():
    leaf = torch.randn(4, 10, requires_grad=True)
    raises_one_line(ValueError, "^inplace_backward: logits is a leaf", tempfast.cross_entropy,
                    leaf, Y, inplace_backward=True)
    logits = torch.randn(10, 4).t().requires_grad_(True)
    raises_one_line(ValueError, "^inplace_backward", tempfast.cross_entropy, logits * 1, Y,
                    inplace_backward=True)
    probs = torch.softmax(torch.randn(4, 10), 1).requires_grad_(True)
    raises_one_line(ValueError, "^inplace_backward", tempfast.cross_entropy,
                    torch.randn(4, 10, requires_grad=True) * 1, probs, inplace_backward=True)
    # torch's (N, C, d) layout has no unit-stride class dimension to write the gradient into
    raises_one_line(ValueError, "^inplace_backward: logits must be viewable",
                    tempfast.cross_entropy, torch.randn(4, 10, 3, requires_grad=True) * 1,
                    torch.zeros(4, 3, dtype=torch.long), inplace_backward=True)


def test_probability_targets_refuse_a_custom_ignore_index():
    probs = torch.softmax(torch.randn(4, 10), 1)
    raises_one_line(ValueError, "^ignore_index", tempfast.cross_entropy, X, probs,
                    ignore_index=3)


def test_class_weights_that_require_grad_are_refused():
    weight = torch.ones(10, requires_grad=True)
    raises_one_line(ValueError, "^weight", tempfast.cross_entropy, X, Y, weight=weight)
    with torch.no_grad():
        tempfast.cross_entropy(X, Y, weight=weight)


def test_class_parallel_arguments_without_a_process_group_are_refused():
    raises_one_line(ValueError, "^start: only meaningful with process_group",
                    tempfast.cross_entropy, X, Y, start=3)
    raises_one_line(ValueError, "^inplace_backward: not supported with process_group",
                    tempfast.cross_entropy, X * 1, Y, process_group=object(),
                    inplace_backward=True)


# --------------------------------------------------------------------------------------------
# The custom op's registration (torch.library.opcheck).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
def test_op_registration_passes_opcheck(reduction, probs):
    n, c = 6, 9
    x = torch.randn(n, c, requires_grad=True)
    target = torch.softmax(torch.randn(n, c), 1) if probs else torch.randint(0, c, (n,))
    t = torch.full((1,), 2.0, requires_grad=True)
    fused = reduction != "none"
    torch.library.opcheck(cross_entropy_2d,
                          (x, target, t, torch.rand(c), -100, 0.1, reduction, fused, True))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_class_indices_of_any_integer_dtype_are_accepted_and_documented(dtype):
    """Where ``F.cross_entropy`` takes only int64 indices, tempfast reads any integer dtype
    exactly (issue 23: documented in the docstring and the README's table)."""
    x = logits_like(6, 7, torch.float32)
    y = harness.targets(6, 7)
    torch.testing.assert_close(tempfast.cross_entropy(x, y.to(dtype), 2.0),
                               tempfast.cross_entropy(x, y, 2.0), rtol=0, atol=0)
    assert "int32 / int16 / uint8" in tempfast.cross_entropy.__doc__


def test_the_interpreter_shows_the_user_no_numpy_warning():
    """``TEMPFAST_BACKEND=triton TRITON_INTERPRET=1``: the kernels' masked lanes (``0 * -inf``,
    ``1 / 0`` discarded by a mask) raised numpy RuntimeWarnings in the user's output (issue
    23); the launchers silence them."""
    import warnings

    t = torch.tensor(2.0, requires_grad=True)
    with warnings.catch_warnings(), tempfast.use_backend("triton"):
        warnings.simplefilter("error", RuntimeWarning)
        tempfast.cross_entropy(logits_like(3, 10, torch.float32), harness.targets(3, 10),
                               t).backward()
        tempfast.log_softmax(logits_like(3, 10, torch.float32).requires_grad_(), t).sum() \
            .backward()
        tempfast.distillation_loss(logits_like(3, 10, torch.float32).requires_grad_(),
                                   logits_like(3, 10, torch.float32, seed=1), t).backward()
    assert t.grad is not None and torch.isfinite(t.grad)


# --------------------------------------------------------------------------------------------
# Soft-capping and the z-loss (issue 25): CE(c(z) / T) + z_loss * lse(c(z) / T)^2.
# --------------------------------------------------------------------------------------------
CAPPED_CASES = [  # (classes, reduction, label_smoothing, weighted, probability targets)
    (50, "mean", 0.0, False, False),
    (300, "mean", 0.1, True, False),
    (300, "none", 0.0, True, False),
    (5000, "sum", 0.1, False, False),
    (40, "mean", 0.1, True, True),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("num_classes", "reduction", "label_smoothing", "weighted", "probs"),
                         CAPPED_CASES)
@pytest.mark.parametrize(("softcap", "z_loss"), [(30.0, 0.0), (None, 1e-3), (20.0, 1e-2)])
def test_softcap_and_z_loss_match_the_oracle(path, num_classes, reduction, label_smoothing,
                                             weighted, probs, softcap, z_loss):
    logits = logits_like(6, num_classes, torch.float32, scale=20.0)
    target = harness.targets(6, num_classes)
    if probs:
        target = torch.softmax(logits_like(6, num_classes, torch.float32, seed=3), -1)
    else:
        target[1] = -100
    weight = torch.rand(num_classes, generator=torch.Generator().manual_seed(2)) + 0.5 \
        if weighted else None
    check_against_reference(path, logits, target, torch.tensor(2.0), t_grad=True,
                            reduction=reduction, label_smoothing=label_smoothing, weight=weight,
                            softcap=softcap, z_loss=z_loss)


@pytest.mark.parametrize("kernel_path", harness.KERNEL_PATHS)
def test_softcap_and_z_loss_on_every_kernel_path(monkeypatch, kernel_path):
    c = 700
    harness.force_config(monkeypatch, triton_path, harness.forced(kernel_path, c))
    logits = logits_like(5, c, torch.bfloat16, scale=20.0)
    target = harness.targets(5, c)
    check_against_reference("triton", logits, target, torch.tensor(0.7), t_grad=True,
                            softcap=15.0, z_loss=1e-2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_return_z_loss_gives_the_z_term_alone(path, reduction):
    """The z-term is unweighted and averaged over the rows not ignored; the loss includes
    it. Routes: eager fused (mean, sum), the custom op (none), in-place."""
    logits = logits_like(7, 30, torch.float32, scale=5.0)
    target = harness.targets(7, 30)
    target[2] = -100
    weight = torch.rand(30, generator=torch.Generator().manual_seed(4)) + 0.5
    loss, z = run_path(path, tempfast.cross_entropy, logits.clone().requires_grad_(True),
                       target, 2.0, weight=weight, reduction=reduction, softcap=10.0,
                       z_loss=0.1, return_z_loss=True)
    exp_loss, exp_z = reference.cross_entropy(logits.double(), target, 2.0,
                                              weight=weight.double(), reduction=reduction,
                                              softcap=10.0, z_loss=0.1, return_z_loss=True)
    assert_close(loss, exp_loss, LOSS_TOL, "loss")
    assert_close(z, exp_z, LOSS_TOL, "z-term")
    assert not z.requires_grad
    lse = torch.logsumexp(10.0 * torch.tanh(logits.double() / 10.0) / 2.0, -1)
    rows = torch.where(target != -100, 0.1 * lse ** 2, 0.0)
    by_hand = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / 6}[reduction]
    assert_close(z, by_hand, LOSS_TOL, "z-term by hand")
    x = logits.clone().mul(1.0).requires_grad_(True)
    y = x * 1.0
    loss_inplace, z_inplace = run_path(path, tempfast.cross_entropy, y, target, 2.0,
                                       weight=weight, reduction=reduction, softcap=10.0,
                                       z_loss=0.1, return_z_loss=True, inplace_backward=True)
    assert_close(z_inplace, exp_z, LOSS_TOL, "z-term in place")
    loss_inplace.sum().backward()


def test_softcap_and_z_loss_compile_without_breaks():
    logits = logits_like(8, 40, torch.float32, scale=20.0).requires_grad_(True)
    target = harness.targets(8, 40)

    def step(x, y):
        return tempfast.cross_entropy(x, y, 2.0, softcap=30.0, z_loss=1e-3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(logits, target)
    loss.backward()
    grad = logits.grad.clone()
    logits.grad = None
    expected = step(logits, target)
    expected.backward()
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert_close(grad, logits.grad, 1e-6, "grad", floor=1e-3)


@pytest.mark.parametrize(("kwargs", "name", "error"), [
    ({"softcap": 0.0}, "softcap", ValueError),
    ({"softcap": "30"}, "softcap", TypeError),
    ({"z_loss": -1e-4}, "z_loss", ValueError),
    ({"z_loss": float("nan")}, "z_loss", ValueError),
    ({"return_z_loss": 1}, "return_z_loss", TypeError),
])
def test_bad_softcap_and_z_loss_get_one_line_errors(kwargs, name, error):
    message = raises_one_line(error, name, tempfast.cross_entropy, torch.zeros(4, 6),
                              torch.zeros(4, dtype=torch.long), **kwargs)
    assert message.startswith(name)

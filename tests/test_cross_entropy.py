"""tempfast.cross_entropy against the float64 oracle (tempfast.reference), on both backends.

Each case computes the loss and the gradients of the logits (and of the temperature / the
probability target where they require grad) for a random upstream gradient, and compares them
with autograd through ``reference.cross_entropy`` evaluated in float64 on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tempfast
from tempfast import reference

from ._util import DTYPES, LOSS_TOL, REL_TOL, assert_close, logits_like, run_backend

BACKENDS = ("torch", "triton")
SIZES = (1, 2, 10, 1000, 4097, 32769, 131072)
TEMPERATURES = (0.05, 0.5, 1.0, 8.0, 64.0)
T_GRAD_TOL = 1e-4


def _tensor_t(temperature, requires_grad: bool):
    if isinstance(temperature, torch.Tensor):
        return temperature.clone().requires_grad_(requires_grad)
    return temperature


def check_against_reference(backend, logits, target, temperature=1.0, *, t_grad=False,
                            target_grad=False, upstream=None, **kwargs):
    """Run tempfast and the float64 oracle; compare loss and every gradient."""
    dtype = logits.dtype
    x = logits.clone().requires_grad_(True)
    t = _tensor_t(temperature, t_grad)
    tgt = target.clone().requires_grad_(target_grad) if target_grad else target
    loss = run_backend(backend, tempfast.cross_entropy, x, tgt, t, **kwargs)
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


def _targets(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_classes", SIZES)
def test_matches_reference_for_every_class_count_and_dtype(backend, dtype, num_classes):
    n = 3 if num_classes > 4096 else 6
    temperature = TEMPERATURES[SIZES.index(num_classes) % len(TEMPERATURES)]
    logits = logits_like(n, num_classes, dtype)
    target = _targets(n, num_classes)
    check_against_reference(backend, logits, target, temperature)
    per_row = torch.linspace(0.3, 5.0, n)
    check_against_reference(backend, logits, target, per_row, t_grad=True,
                            label_smoothing=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [*TEMPERATURES, "rows", "scalar_tensor"])
def test_matches_reference_across_temperatures_with_learnable_t(backend, temperature):
    n, c = 5, 1000
    if temperature == "rows":
        temperature = torch.tensor([0.05, 0.5, 1.0, 8.0, 64.0])
    elif temperature == "scalar_tensor":
        temperature = torch.tensor(2.5)
    else:
        temperature = torch.tensor(temperature)
    check_against_reference(backend, logits_like(n, c, torch.float32), _targets(n, c),
                            temperature, t_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_rows", [0, 1, 7])
@pytest.mark.parametrize("num_classes", [10, 4097])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_handles_zero_one_and_several_rows(backend, n_rows, num_classes, reduction):
    logits = logits_like(n_rows, num_classes, torch.float32)
    target = _targets(n_rows, num_classes)
    loss = check_against_reference(backend, logits, target, 2.0, reduction=reduction)
    if n_rows == 0 and reduction == "mean":
        assert torch.isnan(loss)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [10, 4097, 40000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_options_match_torch_semantics(backend, num_classes, reduction, label_smoothing,
                                       weighted):
    n = 4
    target = _targets(n, num_classes)
    target[1] = -1  # a custom ignore_index
    weight = torch.rand(num_classes, generator=torch.Generator().manual_seed(3)) + 0.1 \
        if weighted else None
    check_against_reference(backend, logits_like(n, num_classes, torch.float32), target,
                            torch.tensor(1.7), t_grad=True, weight=weight, ignore_index=-1,
                            reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_in_16_bit(backend, dtype, reduction):
    """Weights, label smoothing, an ignored row and a learnable T together, in fp16 / bf16."""
    n, c = 5, 1000
    target = _targets(n, c)
    target[2] = -100
    weight = torch.rand(c, generator=torch.Generator().manual_seed(4)) + 0.1
    check_against_reference(backend, logits_like(n, c, dtype), target, torch.tensor(1.7),
                            t_grad=True, weight=weight, reduction=reduction,
                            label_smoothing=0.2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_rows_ignored_gives_what_torch_gives(backend, dtype, reduction, weighted):
    """NaN mean (0 / 0), and gradients exactly 0 for the logits AND a learnable T (a single
    all-padding batch must not turn a learned temperature into NaN)."""
    n, c = 3, 10
    logits = logits_like(n, c, dtype)
    target = torch.full((n,), -100)
    weight = torch.rand(c).to(dtype) if weighted else None
    x = logits.clone().requires_grad_(True)
    t = torch.tensor(4.0, requires_grad=True)
    loss = run_backend(backend, tempfast.cross_entropy, x, target, t, weight=weight,
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [10, 4097, 40000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_targets_with_gradients(backend, num_classes, label_smoothing, weighted,
                                            reduction):
    n = 3
    g = torch.Generator().manual_seed(11)
    probs = torch.softmax(torch.randn(n, num_classes, generator=g) * 2, dim=1)
    weight = torch.rand(num_classes, generator=g) + 0.5 if weighted else None
    check_against_reference(backend, logits_like(n, num_classes, torch.float32), probs,
                            torch.tensor(3.0), t_grad=True, target_grad=True, weight=weight,
                            reduction=reduction, label_smoothing=label_smoothing)
    # Without target gradients the fused path runs.
    check_against_reference(backend, logits_like(n, num_classes, torch.bfloat16), probs, 0.5,
                            weight=weight, reduction=reduction,
                            label_smoothing=label_smoothing)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("logits_dtype", "target_dtype"), [
    (torch.float32, torch.float64), (torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)], ids=str)
def test_probability_targets_in_another_dtype(backend, logits_dtype, target_dtype):
    n, c = 4, 300
    probs = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(5)), 1)
    probs = probs.to(target_dtype)
    check_against_reference(backend, logits_like(n, c, logits_dtype), probs, 2.0,
                            label_smoothing=0.1)
    check_against_reference(backend, logits_like(n, c, logits_dtype), probs, 2.0,
                            target_grad=True, reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_language_model_shaped_logits_with_class_dim_last(backend, dtype):
    b, s, c = 2, 5, 257
    logits = logits_like(b * s, c, dtype).reshape(b, s, c)
    target = _targets(b * s, c).reshape(b, s)
    target[1, 3:] = -100  # padding
    per_position = torch.rand(b, s, generator=torch.Generator().manual_seed(2)) + 0.5
    check_against_reference(backend, logits, target, per_position, t_grad=True, class_dim=-1)
    loss = check_against_reference(backend, logits, target, 8.0, reduction="none",
                                   class_dim=-1)
    assert loss.shape == (b, s)
    assert torch.all(loss[1, 3:] == 0)
    reshaped = F.cross_entropy(logits.double().reshape(-1, c) / 8.0, target.reshape(-1),
                               reduction="none").reshape(b, s)
    assert_close(loss, reshaped, LOSS_TOL, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_three_dimensional_logits_take_torch_layout_by_default(backend, reduction):
    """``(N, C, d)`` logits mean what they mean to ``F.cross_entropy``: classes at dim 1. The
    call that used to be read class-last, logits (2, 5, 5) with target (2, 5), gave 1.9796
    where torch gives 2.2445."""
    logits = logits_like(10, 5, torch.float32, seed=3).reshape(2, 5, 5)
    target = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    ours = run_backend(backend, tempfast.cross_entropy, logits, target, 2.0,
                       reduction=reduction)
    theirs = F.cross_entropy(logits / 2.0, target, reduction=reduction)
    assert ours.shape == theirs.shape
    assert_close(ours, theirs, LOSS_TOL, "loss")
    check_against_reference(backend, logits, target, 2.0, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_shaped_logits_with_every_option(backend):
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
    check_against_reference(backend, logits, target, per_pixel, t_grad=True, weight=weight,
                            label_smoothing=0.1)
    loss = run_backend(backend, tempfast.cross_entropy, logits, target, 2.0, reduction="none")
    assert loss.shape == (n, h, w)
    assert_close(loss, F.cross_entropy(logits / 2.0, target, reduction="none"), LOSS_TOL, "loss")
    probs = torch.softmax(torch.randn(n, c, h, w, generator=g), 1)
    check_against_reference(backend, logits, probs, 1.5, target_grad=True)
    assert_close(run_backend(backend, tempfast.cross_entropy, logits, probs, 1.5),
                 F.cross_entropy(logits / 1.5, probs), LOSS_TOL, "loss")


def test_class_last_target_without_class_dim_names_the_argument():
    logits = torch.randn(2, 5, 7)
    with pytest.raises(ValueError, match="class_dim=-1"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(IndexError, match="class_dim"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long), class_dim=3)
    with pytest.raises(TypeError, match="class_dim"):
        tempfast.cross_entropy(logits, torch.zeros(2, 5, dtype=torch.long), class_dim=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_example_without_batch_dim(backend):
    check_against_reference(backend, logits_like(1, 33, torch.float32)[0],
                            torch.tensor(4), 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "column_slice", "row_stride", "expanded_t"])
def test_non_contiguous_inputs(backend, layout):
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
    target = _targets(n, c)
    check_against_reference(backend, logits, target, temperature)
    probs = torch.softmax(base[:c, n:2 * n], 0).t()
    assert not probs.is_contiguous()
    check_against_reference(backend, logits, probs, 2.0, reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [10, 4097, 40000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_inplace_backward_overwrites_logits_with_the_gradient(backend, num_classes, reduction):
    n = 4
    logits = logits_like(n, num_classes, torch.bfloat16)
    target = _targets(n, num_classes)
    target[0] = -100
    t = torch.tensor(2.0)
    x_ref = logits.clone().requires_grad_(True)
    t_ref = t.clone().requires_grad_(True)
    expected = run_backend(backend, tempfast.cross_entropy, x_ref, target, t_ref,
                           reduction=reduction, label_smoothing=0.1)
    upstream = torch.full(expected.shape, 3.0)
    expected.backward(upstream)

    leaf = logits.float().requires_grad_(True)
    x = leaf.to(torch.bfloat16)  # a non-leaf buffer, as a linear layer's output would be
    grads = []
    x.register_hook(lambda grad: grads.append(grad))
    t_in = t.clone().requires_grad_(True)
    loss = run_backend(backend, tempfast.cross_entropy, x, target, t_in, reduction=reduction,
                       label_smoothing=0.1, inplace_backward=True)
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert not torch.equal(x.detach(), logits), "the logits buffer holds the gradient"
    loss.backward(upstream)
    assert_close(grads[0], x_ref.grad, REL_TOL[torch.bfloat16], "grad", floor=1e-3)
    assert grads[0].data_ptr() == x.data_ptr(), "the gradient lives in the logits buffer"
    assert_close(t_in.grad, t_ref.grad, T_GRAD_TOL, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_twice_through_a_retained_graph(backend, inplace, reduction, no_small_route):
    """Each backward call gets the gradient for its own upstream gradient; the first result is
    not modified by the later calls."""
    n, c = 3, 10
    logits = logits_like(n, c, torch.float32)
    target = _targets(n, c)
    leaf = logits.clone().requires_grad_(True)
    x = leaf * 1.0
    loss = run_backend(backend, tempfast.cross_entropy, x, target, 2.0, reduction=reduction,
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("upstream", [1.0, 0.0, -2.5, 65536.0])
def test_fused_gradient_is_rescaled_by_any_upstream_gradient(backend, upstream,
                                                             no_small_route):
    n, c = 5, 77
    check_against_reference(backend, logits_like(n, c, torch.float16), _targets(n, c), 3.0,
                            upstream=torch.tensor(upstream), label_smoothing=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_frozen_logits_compute_only_what_is_needed(backend):
    logits = logits_like(4, 50, torch.float32)
    target = _targets(4, 50)
    with torch.no_grad():
        loss = run_backend(backend, tempfast.cross_entropy, logits, target, 2.0)
    assert_close(loss, reference.cross_entropy(logits.double(), target, 2.0), LOSS_TOL, "loss")
    # Temperature calibration: only T learns, the logits are data.
    check_against_reference(backend, logits, target, torch.tensor(1.3), t_grad=True)


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
    with tempfast.use_backend("torch"):
        for reduction in ("mean", "sum", "none"):
            assert torch.autograd.gradcheck(
                lambda x, tt, r=reduction: tempfast.cross_entropy(
                    x, target, tt, weight=weight, reduction=r, label_smoothing=0.1),
                (logits, t), nondet_tol=1e-12)
            assert torch.autograd.gradcheck(
                lambda x, tt, q, r=reduction: tempfast.cross_entropy(
                    x, q, tt, reduction=r, label_smoothing=0.2), (logits, t, probs),
                nondet_tol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_in_the_input_dtype(backend):
    """Against torch's own bf16 / fp16 computation (which rounds x / T to the dtype first)."""
    for dtype in (torch.bfloat16, torch.float16):
        logits = logits_like(8, 1000, dtype)
        target = _targets(8, 1000)
        ours = run_backend(backend, tempfast.cross_entropy, logits, target, 2.0)
        theirs = F.cross_entropy(logits / 2.0, target)
        assert_close(ours, theirs.float(), 2 * REL_TOL[dtype], f"loss {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_backward_allocates_no_logits_sized_buffer(backend):
    """The gradient was written in the forward pass; the backward pass only applies the
    upstream gradient (here 1: nothing to do), so it allocates nothing of size N x C."""
    from torch.profiler import ProfilerActivity, profile

    n, c = 64, 4097
    x = logits_like(n, c, torch.float32).requires_grad_(True)
    loss = run_backend(backend, tempfast.cross_entropy, x, _targets(n, c), 2.0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    assert allocated < n * c * 4 // 8, f"backward allocated {allocated} bytes"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [10, 4097, 40000])
def test_ignored_rows_with_non_finite_logits_contribute_nothing(backend, num_classes):
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
    loss = run_backend(backend, tempfast.cross_entropy, x, target, t)
    loss.backward()
    x64 = logits.double().requires_grad_(True)
    expected = F.cross_entropy(x64 / 2.0, target)
    expected.backward()
    assert torch.isfinite(loss) and torch.isfinite(t.grad)
    assert_close(loss, expected, LOSS_TOL, "loss")
    assert torch.all(x.grad[[1, 3]] == 0)
    assert_close(x.grad[[0, 2]], x64.grad[[0, 2]], REL_TOL[torch.float32], "grad", floor=1e-2)
    none = run_backend(backend, tempfast.cross_entropy, logits, target, 2.0, reduction="none")
    assert torch.equal(none[[1, 3]], torch.zeros(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_gradient_survives_a_loss_scaler(backend):
    """fp16 gradients of a mean over many rows are tiny before the loss scaler's factor
    arrives; the fused path must not round them to zero first."""
    n, c, scale = 2048, 1000, 65536.0
    logits = logits_like(n, c, torch.float16, scale=8.0)
    target = _targets(n, c)
    x = logits.clone().requires_grad_(True)
    (run_backend(backend, tempfast.cross_entropy, x, target, 8.0) * scale).backward()
    x64 = logits.double().requires_grad_(True)
    (reference.cross_entropy(x64, target, 8.0) * scale).backward()
    expected = x64.grad
    representable = expected.abs() > 6e-5  # fp16's smallest normal number
    assert_close(x.grad, expected, REL_TOL[torch.float16], "grad", floor=1e-3)
    lost = (x.grad == 0) & representable
    assert lost.sum() == 0, f"{int(lost.sum())} representable gradients flushed to zero"


@pytest.fixture
def no_small_route(monkeypatch):
    """Small CPU calls compose stock aten ops (twice differentiable, retained graphs
    recompute); this sends them through the fused kernels' path instead."""
    monkeypatch.setattr(tempfast.functional, "SMALL_CPU_ELEMENTS", 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_is_refused_not_silently_wrong(backend, reduction, no_small_route):
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    loss = run_backend(backend, tempfast.cross_entropy, x, _targets(3, 10), 2.0,
                       reduction=reduction)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss.sum(), x, create_graph=True)


def test_small_cpu_calls_differentiate_twice_like_torch():
    """The small CPU route is stock aten ops: double backward is right, not refused."""
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    target = _targets(3, 10)
    with tempfast.use_backend("torch"):
        loss = tempfast.cross_entropy(x, target, 2.0, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    expected = reference.cross_entropy(x64, target, 2.0, label_smoothing=0.1)
    (g64,) = torch.autograd.grad(expected, x64, create_graph=True)
    (gg64,) = torch.autograd.grad(g64.square().sum(), x64)
    assert_close(gg, gg64, 1e-5, "second derivative", floor=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_graph_after_a_zero_upstream_gradient_raises(backend, no_small_route):
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    loss = run_backend(backend, tempfast.cross_entropy, x * 1.0, _targets(3, 10), 2.0)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_classes_give_a_finite_temperature_gradient(backend):
    x = logits_like(4, 12, torch.float32)
    x[:, 5:8] = float("-inf")
    target = torch.tensor([0, 3, 9, 11])
    t = torch.tensor(1.7, requires_grad=True)
    run_backend(backend, tempfast.cross_entropy, x, target, t).backward()
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    reference.cross_entropy(x.double().clamp(min=-1e30), target, t64).backward()
    assert torch.isfinite(t.grad)
    assert_close(t.grad, t64.grad, 1e-5, "grad temperature", floor=1e-3)

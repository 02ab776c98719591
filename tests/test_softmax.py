"""tempfast.softmax / log_softmax: every route and path against the float64 oracle
(``tempfast.reference``), the kernel paths forced, the properties, the bad inputs and the
custom op's registration. ``path`` is a path of :mod:`tests.harness` (``torch``: the chunked
PyTorch path, ``triton``: the kernels)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import tempfast
from tempfast import reference
from tempfast.ops import softmax as sm
from tempfast.ops.softmax import triton_path
from tempfast.ops.softmax.op import softmax_2d

from . import harness
from .harness import PATHS, REL_TOL, assert_close, logits_like, on_path, raises_one_line, run_path

SIZES = (1, 2, 10, 1000, 4097, 32769, 131072)
TEMPERATURES = (0.05, 0.5, 1.0, 8.0, 64.0)
OPS = {"softmax": (tempfast.softmax, reference.softmax),
       "log_softmax": (tempfast.log_softmax, reference.log_softmax)}


def check_against_reference(path, op_name, x, temperature=1.0, dim=-1, *, t_grad=False):
    op, ref_op = OPS[op_name]
    dtype = x.dtype
    xx = x.clone().requires_grad_(True)
    t = temperature.clone().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    y = run_path(path, op, xx, t, dim)
    assert y.dtype == dtype and y.shape == x.shape
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    y.backward(upstream)

    x64 = x.double().requires_grad_(True)
    t64 = temperature.double().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    expected = ref_op(x64, t64, dim)
    expected.backward(upstream.double())
    assert_close(y, expected, REL_TOL[dtype], "output")
    # Natural scale of dx = y (dy - A) / T is |dy| / T, even where saturation makes it ~0.
    t_min = float(temperature.min()) if isinstance(temperature, torch.Tensor) else temperature
    natural = float(upstream.abs().max()) / t_min if upstream.numel() else 1.0
    assert_close(xx.grad, x64.grad, 2 * REL_TOL[dtype], "grad x", floor=natural)
    if t_grad:
        bound = 4 * REL_TOL[dtype] * _dt_condition(x64.detach(), upstream.double(), t64, dim,
                                                   op_name == "log_softmax")
        err = (t.grad.double() - t64.grad).abs()
        assert torch.all(err <= bound + 1e-4 * t64.grad.abs().max() + 1e-6), "grad temperature"


def _dt_condition(x, upstream, temperature, dim, log):
    """Sensitivity of dL/dT to relative rounding of y, dy and x:
    ``sum_j p_j (|dy_j| + |A|) |x_j| / T^2`` per row, summed over rows for a scalar T. (dL/dT is
    a difference of two such sums, so in fp16 / bf16 its error scales with them, not with it.)"""
    dim = dim % x.dim()
    t = temperature.reshape(x.shape[:dim] + x.shape[dim + 1:]).unsqueeze(dim) \
        if temperature.numel() > 1 else temperature
    p = torch.softmax(x / t, dim)
    a = upstream.sum(dim, keepdim=True) if log else (upstream * p).sum(dim, keepdim=True)
    rows = (p * (upstream.abs() + a.abs()) * x.abs()).sum(dim, keepdim=True) / t**2
    rows = rows.squeeze(dim)
    return rows.sum() if temperature.numel() == 1 else rows.reshape(temperature.shape)


# The longest row (64 slices) runs once on the kernels, in fp32: the other dtypes take the same
# slices path at 32769 classes.
CLASS_COUNT_CASES = [(path, dtype, c) for path in PATHS for dtype in harness.DTYPES for c in SIZES
                     if not (path == "triton" and c == SIZES[-1] and dtype != torch.float32)]


@pytest.mark.parametrize(("path", "dtype", "num_classes"), CLASS_COUNT_CASES, ids=str)
@pytest.mark.parametrize("op_name", list(OPS))
def test_matches_reference_for_every_class_count_and_dtype(path, op_name, dtype,
                                                           num_classes):
    n = 2 if num_classes > 4096 else 5
    temperature = TEMPERATURES[SIZES.index(num_classes) % len(TEMPERATURES)]
    x = logits_like(n, num_classes, dtype)
    check_against_reference(path, op_name, x, temperature)
    check_against_reference(path, op_name, x, torch.linspace(0.5, 4.0, n), t_grad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_learnable_scalar_temperature(path, op_name, temperature):
    check_against_reference(path, op_name, logits_like(4, 300, torch.float32),
                            torch.tensor(temperature), t_grad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
def test_any_dim_with_per_row_temperature(path, op_name, dim):
    x = logits_like(3 * 4, 5, torch.float32).reshape(3, 4, 5)
    rows_shape = x.shape[:dim % 3] + x.shape[dim % 3 + 1:]
    per_row = torch.rand(rows_shape, generator=torch.Generator().manual_seed(1)) + 0.5
    check_against_reference(path, op_name, x, per_row, dim, t_grad=True)
    check_against_reference(path, op_name, x, 3.0, dim)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("n_rows", [0, 1, 9])
def test_zero_one_and_several_rows(path, op_name, n_rows):
    check_against_reference(path, op_name, logits_like(n_rows, 17, torch.float32), 2.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_zero_dim_input(path, op_name):
    x = torch.tensor(1.5)
    y = run_path(path, OPS[op_name][0], x, 2.0)
    assert y.shape == () and torch.allclose(y, OPS[op_name][1](x.reshape(1), 2.0).reshape(()))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_non_contiguous_input_and_expanded_upstream(path, op_name):
    base = logits_like(64, 64, torch.float32)
    check_against_reference(path, op_name, base[:20, :40].t(), 1.5)
    check_against_reference(path, op_name, base[::3, 7:50], 0.7)
    x = base[:6, :30].clone().requires_grad_(True)
    y = run_path(path, OPS[op_name][0], x, 2.0)
    upstream = torch.randn(30).expand(6, 30)  # stride 0 along rows
    y.backward(upstream)
    x64 = base[:6, :30].double().requires_grad_(True)
    OPS[op_name][1](x64, 2.0).backward(upstream.double())
    assert_close(x.grad, x64.grad, REL_TOL[torch.float32], "grad", floor=1e-3)


@pytest.mark.parametrize("op_name", list(OPS))
def test_torch_path_gradcheck_in_float64(op_name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0.6, 1.3, 2.2], dtype=torch.float64, requires_grad=True)
    op = OPS[op_name][0]
    with on_path("torch"):
        assert torch.autograd.gradcheck(lambda a, b: op(a, b), (x, t))
        assert torch.autograd.gradcheck(lambda a, b: op(a, b, 0),
                                        (x, torch.tensor([0.5] * 6, dtype=torch.float64,
                                                         requires_grad=True)))


@pytest.mark.parametrize("path", PATHS)
def test_rows_of_minus_infinity_keep_finite_rows_exact(path):
    """Masked classes (-inf logits), as language models use, do not poison the row."""
    x = logits_like(3, 9000, torch.float32)
    x[0, :5000] = float("-inf")
    x[1, 4000:] = float("-inf")
    y = run_path(path, tempfast.softmax, x, 2.0)
    expected = torch.softmax(x.double() / 2.0, -1)
    assert_close(y, expected, REL_TOL[torch.float32], "softmax")
    assert torch.all(y[0, :5000] == 0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5)])
def test_empty_dimensions_give_empty_results_like_torch(path, op_name, shape):
    x = torch.randn(shape, requires_grad=True)
    y = run_path(path, OPS[op_name][0], x, 2.0, -1)
    assert y.shape == getattr(torch, op_name)(x.detach(), -1).shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    with pytest.raises(ValueError, match="temperature: must be finite and > 0"):
        run_path(path, OPS[op_name][0], x, -1.0, -1)
    with pytest.raises(ValueError, match="temperature: expected a scalar or one value per row"):
        run_path(path, OPS[op_name][0], x, torch.ones(7), -1)
    t = torch.tensor(2.0, requires_grad=True)
    run_path(path, OPS[op_name][0], x, t, -1).sum().backward()
    assert float(t.grad) == 0.0, "as torch: an empty input gives T a zero gradient"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_log_softmax_of_huge_logits_keeps_the_log_sum_term(path, dtype):
    """``(u - m) - log s``, not ``u - (m + log s)``: with |x / T| ~ 1e8 the second loses
    ``log s`` (about 1.4 here) to rounding."""
    x = torch.full((2, 4), 1e8).to(dtype)
    x[1, 0] = -1e8
    y = run_path(path, tempfast.log_softmax, x, 1.0)
    expected = torch.log_softmax(x.double(), -1)
    assert torch.allclose(y.double(), expected, rtol=1e-2, atol=1e-2), (y, expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_masked_classes_give_a_finite_temperature_gradient(path, op_name):
    """-inf logits (masked classes) have zero probability: they contribute 0 to dL/dT, not NaN
    (autograd's 0 * inf). The oracle uses a finite stand-in that underflows the same way."""
    x = logits_like(3, 12, torch.float32)
    x[:, 5:8] = float("-inf")
    t = torch.tensor(1.7, requires_grad=True)
    y = run_path(path, OPS[op_name][0], x, t)
    upstream = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    upstream[:, 5:8] = 0.0
    y.backward(upstream)
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    OPS[op_name][1](x.double().clamp(min=-1e30), t64).backward(upstream.double())
    assert torch.isfinite(t.grad)
    assert_close(t.grad, t64.grad, 1e-5, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_double_backward_is_refused(path, op_name):
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    y = run_path(path, OPS[op_name][0], x, 2.0)
    harness.assert_refuses_double_backward(y * y, x)


@pytest.mark.parametrize("op_name", list(OPS))
def test_small_cpu_calls_differentiate_twice_like_torch(op_name):
    """Small CPU calls with a fixed temperature compose stock aten ops: double backward is
    right, not refused."""
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    with on_path("aten"):
        y = OPS[op_name][0](x, 2.0)
    (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    (g64,) = torch.autograd.grad((OPS[op_name][1](x64, 2.0) * w.double()).sum(), x64,
                                 create_graph=True)
    (gg64,) = torch.autograd.grad(g64.square().sum(), x64)
    assert_close(gg, gg64, 1e-5, "second derivative", floor=1e-3)


# --------------------------------------------------------------------------------------------
# Routes: each one taken (tempfast.ops.softmax.route says which) and right.
# --------------------------------------------------------------------------------------------
class _Traced(TorchDispatchMode):
    """A pass-through dispatch mode: the ops see a traced call, as under torch.compile."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


ROUTE_CASES = [("aten", "aten"), ("empty", "aten")] + [
    (route, path) for route in ("empty", "eager", "custom_op") for path in PATHS]


@pytest.mark.parametrize(("route", "path"), ROUTE_CASES)
@pytest.mark.parametrize("log", [False, True])
def test_every_route_is_taken_and_matches_the_reference(route, path, log):
    x = logits_like(0 if route == "empty" else 4, 23, torch.float32, seed=3)
    t = torch.tensor([0.7, 1.0, 2.5, 4.0][:x.shape[0]])
    t = t.requires_grad_(route != "aten")
    xx = x.clone().requires_grad_(True)
    traced = _Traced() if route == "custom_op" else contextlib.nullcontext()
    op, ref = OPS["log_softmax" if log else "softmax"]
    with on_path(path), traced:
        assert sm.route(sm.normalise(xx, t, -1, log)) == route
        y = op(xx, t)
        upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
        y.backward(upstream)
    x64 = x.double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(t.requires_grad)
    expected = ref(x64, t64)
    expected.backward(upstream.double())
    assert_close(y, expected, REL_TOL[torch.float32], "output")
    assert_close(xx.grad, x64.grad, 2 * REL_TOL[torch.float32], "grad x", floor=1.0)
    if t.requires_grad and x.numel():
        assert_close(t.grad, t64.grad, 1e-4, "grad temperature", floor=1e-3)


# --------------------------------------------------------------------------------------------
# Kernel paths, forced on a shape that would take another (the interpreter runs them all).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_path", harness.KERNEL_PATHS)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("t_grad", [False, True])
def test_kernel_paths_agree_with_reference(monkeypatch, kernel_path, log, t_grad):
    n, c = 4, 1000
    harness.force_config(monkeypatch, triton_path, harness.forced(kernel_path, c))
    logits = logits_like(n, c, torch.float32)
    logits[1, :700] = float("-inf")  # a masked prefix: the online max starts at -inf
    t = torch.linspace(0.5, 3.0, n)
    x = logits.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(t_grad)
    op = tempfast.log_softmax if log else tempfast.softmax
    ref = reference.log_softmax if log else reference.softmax
    y = run_path("triton", op, x, tt)
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


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_gives_nan_row_on_the_kernel_path(bad):
    logits = logits_like(3, 20, torch.float32)
    y = triton_path.softmax_forward(logits, torch.tensor([1.0, bad, 2.0]), False)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


# --------------------------------------------------------------------------------------------
# Properties (hypothesis).
# --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.sampled_from(PATHS), st.tuples(st.integers(0, 6), st.integers(1, 300)),
       st.floats(0.05, 64.0), st.floats(-50.0, 50.0), st.integers(0, 2**16))
def test_rows_sum_to_one_and_ignore_a_shift(path, shape, t, shift, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3.0
    with on_path(path):
        y = tempfast.softmax(x, t)
        y_shifted = tempfast.softmax(x + shift, t)
        log_y = tempfast.log_softmax(x, t)
    assert torch.allclose(y.sum(-1), torch.ones(shape[0]), atol=1e-5)
    # x + shift is rounded in fp32 before the division by T: |x + shift| / T reaches ~2e3.
    assert torch.allclose(y, y_shifted, atol=2e-4)
    assert torch.allclose(log_y.exp(), y, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad inputs: a one-line error naming the argument, before any launch.
# --------------------------------------------------------------------------------------------
X = torch.randn(4, 10)


@pytest.mark.parametrize("path", ["aten", *PATHS])
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_float_temperature(path, op_name, bad):
    with on_path(path):
        raises_one_line(ValueError, "^temperature", OPS[op_name][0], X, bad)


@pytest.mark.parametrize("path", ["aten", *PATHS])
@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_tensor_temperature_on_cpu(path, bad):
    with on_path(path):
        raises_one_line(ValueError, "^temperature", tempfast.softmax, X,
                        torch.tensor([1.0, bad, 2.0, 3.0]))


def test_bad_shapes_types_and_dims():
    raises_one_line(ValueError, "^temperature", tempfast.softmax, X, torch.ones(4, 10))
    raises_one_line(IndexError, "^dim", tempfast.softmax, X, 1.0, 2)
    raises_one_line(TypeError, "^dim", tempfast.softmax, X, 1.0, 1.0)
    for dtype in (torch.int64, torch.int32, torch.bool, torch.complex64):
        raises_one_line(TypeError, "^x", tempfast.softmax, torch.zeros(4, 10, dtype=dtype))


# --------------------------------------------------------------------------------------------
# The custom op's registration (torch.library.opcheck).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("log", [False, True])
def test_op_registration_passes_opcheck(log):
    x = torch.randn(5, 7, requires_grad=True)
    t = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], requires_grad=True)
    torch.library.opcheck(softmax_2d, (x, t, log))

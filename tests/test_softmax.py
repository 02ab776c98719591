"""tempfast.softmax / log_softmax against the float64 oracle, on both backends."""

from __future__ import annotations

import pytest
import torch

import tempfast
from tempfast import reference

from ._util import DTYPES, REL_TOL, assert_close, logits_like, run_backend

BACKENDS = ("torch", "triton")
SIZES = (1, 2, 10, 1000, 4097, 32769, 131072)
TEMPERATURES = (0.05, 0.5, 1.0, 8.0, 64.0)
OPS = {"softmax": (tempfast.softmax, reference.softmax),
       "log_softmax": (tempfast.log_softmax, reference.log_softmax)}


def check_against_reference(backend, op_name, x, temperature=1.0, dim=-1, *, t_grad=False):
    op, ref_op = OPS[op_name]
    dtype = x.dtype
    xx = x.clone().requires_grad_(True)
    t = temperature.clone().requires_grad_(t_grad) if isinstance(temperature, torch.Tensor) \
        else temperature
    y = run_backend(backend, op, xx, t, dim)
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_classes", SIZES)
def test_matches_reference_for_every_class_count_and_dtype(backend, op_name, dtype,
                                                           num_classes):
    n = 2 if num_classes > 4096 else 5
    temperature = TEMPERATURES[SIZES.index(num_classes) % len(TEMPERATURES)]
    x = logits_like(n, num_classes, dtype)
    check_against_reference(backend, op_name, x, temperature)
    check_against_reference(backend, op_name, x, torch.linspace(0.5, 4.0, n), t_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_learnable_scalar_temperature(backend, op_name, temperature):
    check_against_reference(backend, op_name, logits_like(4, 300, torch.float32),
                            torch.tensor(temperature), t_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
def test_any_dim_with_per_row_temperature(backend, op_name, dim):
    x = logits_like(3 * 4, 5, torch.float32).reshape(3, 4, 5)
    rows_shape = x.shape[:dim % 3] + x.shape[dim % 3 + 1:]
    per_row = torch.rand(rows_shape, generator=torch.Generator().manual_seed(1)) + 0.5
    check_against_reference(backend, op_name, x, per_row, dim, t_grad=True)
    check_against_reference(backend, op_name, x, 3.0, dim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("n_rows", [0, 1, 9])
def test_zero_one_and_several_rows(backend, op_name, n_rows):
    check_against_reference(backend, op_name, logits_like(n_rows, 17, torch.float32), 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_zero_dim_input(backend, op_name):
    x = torch.tensor(1.5)
    y = run_backend(backend, OPS[op_name][0], x, 2.0)
    assert y.shape == () and torch.allclose(y, OPS[op_name][1](x.reshape(1), 2.0).reshape(()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_non_contiguous_input_and_expanded_upstream(backend, op_name):
    base = logits_like(64, 64, torch.float32)
    check_against_reference(backend, op_name, base[:20, :40].t(), 1.5)
    check_against_reference(backend, op_name, base[::3, 7:50], 0.7)
    x = base[:6, :30].clone().requires_grad_(True)
    y = run_backend(backend, OPS[op_name][0], x, 2.0)
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
    with tempfast.use_backend("torch"):
        assert torch.autograd.gradcheck(lambda a, b: op(a, b), (x, t))
        assert torch.autograd.gradcheck(lambda a, b: op(a, b, 0),
                                        (x, torch.tensor([0.5] * 6, dtype=torch.float64,
                                                         requires_grad=True)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_of_minus_infinity_keep_finite_rows_exact(backend):
    """Masked classes (-inf logits), as language models use, do not poison the row."""
    x = logits_like(3, 9000, torch.float32)
    x[0, :5000] = float("-inf")
    x[1, 4000:] = float("-inf")
    y = run_backend(backend, tempfast.softmax, x, 2.0)
    expected = torch.softmax(x.double() / 2.0, -1)
    assert_close(y, expected, REL_TOL[torch.float32], "softmax")
    assert torch.all(y[0, :5000] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5)])
def test_empty_dimensions_give_empty_results_like_torch(backend, op_name, shape):
    x = torch.randn(shape, requires_grad=True)
    y = run_backend(backend, OPS[op_name][0], x, 2.0, -1)
    assert y.shape == getattr(torch, op_name)(x.detach(), -1).shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    with pytest.raises(ValueError, match="temperature: must be finite and > 0"):
        run_backend(backend, OPS[op_name][0], x, -1.0, -1)
    with pytest.raises(ValueError, match="temperature: expected a scalar or one value per row"):
        run_backend(backend, OPS[op_name][0], x, torch.ones(7), -1)
    t = torch.tensor(2.0, requires_grad=True)
    run_backend(backend, OPS[op_name][0], x, t, -1).sum().backward()
    assert float(t.grad) == 0.0, "as torch: an empty input gives T a zero gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_log_softmax_of_huge_logits_keeps_the_log_sum_term(backend, dtype):
    """``(u - m) - log s``, not ``u - (m + log s)``: with |x / T| ~ 1e8 the second loses
    ``log s`` (about 1.4 here) to rounding."""
    x = torch.full((2, 4), 1e8).to(dtype)
    x[1, 0] = -1e8
    y = run_backend(backend, tempfast.log_softmax, x, 1.0)
    expected = torch.log_softmax(x.double(), -1)
    assert torch.allclose(y.double(), expected, rtol=1e-2, atol=1e-2), (y, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_masked_classes_give_a_finite_temperature_gradient(backend, op_name):
    """-inf logits (masked classes) have zero probability: they contribute 0 to dL/dT, not NaN
    (autograd's 0 * inf). The oracle uses a finite stand-in that underflows the same way."""
    x = logits_like(3, 12, torch.float32)
    x[:, 5:8] = float("-inf")
    t = torch.tensor(1.7, requires_grad=True)
    y = run_backend(backend, OPS[op_name][0], x, t)
    upstream = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    upstream[:, 5:8] = 0.0
    y.backward(upstream)
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    OPS[op_name][1](x.double().clamp(min=-1e30), t64).backward(upstream.double())
    assert torch.isfinite(t.grad)
    assert_close(t.grad, t64.grad, 1e-5, "grad temperature", floor=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op_name", list(OPS))
def test_double_backward_is_refused(backend, op_name, monkeypatch):
    monkeypatch.setattr(tempfast.functional, "SMALL_CPU_ELEMENTS", 0)  # the kernels' route
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    y = run_backend(backend, OPS[op_name][0], x, 2.0)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((y * y).sum(), x, create_graph=True)


@pytest.mark.parametrize("op_name", list(OPS))
def test_small_cpu_calls_differentiate_twice_like_torch(op_name):
    """Small CPU calls with a fixed temperature compose stock aten ops: double backward is
    right, not refused."""
    x = logits_like(3, 10, torch.float32).requires_grad_(True)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    with tempfast.use_backend("torch"):
        y = OPS[op_name][0](x, 2.0)
    (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    (g64,) = torch.autograd.grad((OPS[op_name][1](x64, 2.0) * w.double()).sum(), x64,
                                 create_graph=True)
    (gg64,) = torch.autograd.grad(g64.square().sum(), x64)
    assert_close(gg, gg64, 1e-5, "second derivative", floor=1e-3)

"""Property-based tests (hypothesis) of the mathematical identities the ops must satisfy."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tempfast

BACKEND = st.sampled_from(["torch", "triton"])
SHAPES = st.tuples(st.integers(0, 6), st.integers(1, 300))
TEMPERATURE = st.floats(0.05, 64.0)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _data(n, c, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


@SETTINGS
@given(BACKEND, SHAPES, TEMPERATURE, st.floats(-50.0, 50.0), st.integers(0, 2**16))
def test_softmax_rows_sum_to_one_and_ignore_a_shift(backend, shape, t, shift, seed):
    x, _ = _data(*shape, seed)
    with tempfast.use_backend(backend):
        y = tempfast.softmax(x, t)
        y_shifted = tempfast.softmax(x + shift, t)
        log_y = tempfast.log_softmax(x, t)
    assert torch.allclose(y.sum(-1), torch.ones(shape[0]), atol=1e-5)
    # x + shift is rounded in fp32 before the division by T: |x + shift| / T reaches ~2e3.
    assert torch.allclose(y, y_shifted, atol=2e-4)
    assert torch.allclose(log_y.exp(), y, atol=1e-5)


@SETTINGS
@given(BACKEND, SHAPES, TEMPERATURE, st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_temperature_is_a_division_of_the_logits(backend, shape, t, eps, seed):
    x, y = _data(*shape, seed)
    with tempfast.use_backend(backend):
        scaled = tempfast.cross_entropy(x, y, t, label_smoothing=eps, reduction="sum")
        divided = tempfast.cross_entropy(x / t, y, 1.0, label_smoothing=eps, reduction="sum")
    assert torch.allclose(scaled, divided, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(BACKEND, SHAPES, TEMPERATURE, st.integers(0, 2**16))
def test_one_hot_probabilities_equal_class_indices(backend, shape, t, seed):
    x, y = _data(*shape, seed)
    one_hot = torch.nn.functional.one_hot(y, shape[1]).float()
    with tempfast.use_backend(backend):
        a = tempfast.cross_entropy(x, y, t, reduction="none")
        b = tempfast.cross_entropy(x, one_hot, t, reduction="none")
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(BACKEND, st.integers(1, 6), st.integers(2, 300), TEMPERATURE, st.floats(0.0, 1.0),
       st.integers(0, 2**16))
def test_unweighted_gradient_rows_sum_to_zero_and_scale_with_one_over_t(backend, n, c, t, eps,
                                                                        seed):
    x, y = _data(n, c, seed)
    x.requires_grad_(True)
    with tempfast.use_backend(backend):
        tempfast.cross_entropy(x, y, t, label_smoothing=eps, reduction="sum").backward()
    assert torch.allclose(x.grad.sum(-1), torch.zeros(n), atol=1e-5 / min(t, 1.0))
    # |grad| <= 2 / T: (p - q) / T with p, q probability vectors.
    assert float(x.grad.abs().max()) <= 2.0 / t + 1e-6

"""Bad inputs raise a one-line error naming the argument, before any kernel launch."""

from __future__ import annotations

import pytest
import torch

import tempfast

BACKENDS = ("torch", "triton")


def _raises(exc_type, match, fn, *args, **kwargs):
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"multi-line error: {message!r}"
    return message


X = torch.randn(4, 10)
Y = torch.randint(0, 10, (4,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", [tempfast.softmax, tempfast.log_softmax])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_float_temperature(backend, op, bad):
    with tempfast.use_backend(backend):
        _raises(ValueError, "^temperature", op, X, bad)
        _raises(ValueError, "^temperature", tempfast.cross_entropy, X, Y, bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_tensor_temperature_on_cpu(backend, bad):
    per_row = torch.tensor([1.0, bad, 2.0, 3.0])
    with tempfast.use_backend(backend):
        _raises(ValueError, "^temperature", tempfast.cross_entropy, X, Y, per_row)
        _raises(ValueError, "^temperature", tempfast.softmax, X, per_row)
        _raises(ValueError, "^temperature", tempfast.cross_entropy, X, Y, torch.tensor(bad))


def test_temperature_of_wrong_shape_or_type():
    _raises(ValueError, "^temperature: expected a scalar or one value per row",
            tempfast.cross_entropy, X, Y, torch.ones(3))
    _raises(ValueError, "^temperature", tempfast.softmax, X, torch.ones(4, 10))
    _raises(TypeError, "^temperature", tempfast.cross_entropy, X, Y, True)
    _raises(TypeError, "^temperature", tempfast.cross_entropy, X, Y, "8")
    _raises(TypeError, "^temperature", tempfast.cross_entropy, X, Y, torch.tensor(2))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_integer_or_complex_logits(dtype):
    logits = torch.zeros(4, 10, dtype=dtype)
    _raises(TypeError, "^logits", tempfast.cross_entropy, logits, Y)
    _raises(TypeError, "^x", tempfast.softmax, logits)


def test_shape_mismatches():
    _raises(ValueError, "^target: expected shape", tempfast.cross_entropy, X, Y[:3])
    _raises(ValueError, "^target: expected shape", tempfast.cross_entropy, X, torch.rand(4, 9))
    _raises(ValueError, "^logits", tempfast.cross_entropy, torch.tensor(1.0), torch.tensor(0))
    _raises(ValueError, "^logits", tempfast.cross_entropy, torch.zeros(4, 0),
            torch.zeros(4, dtype=torch.long))
    _raises(IndexError, "^dim", tempfast.softmax, X, 1.0, 2)
    _raises(TypeError, "^target", tempfast.cross_entropy, X, [1, 2, 3, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_class_targets(dtype):
    _raises(TypeError, "^target: class-index targets", tempfast.cross_entropy, X,
            Y.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [10, 1000, -1, -101])
def test_class_index_out_of_range_on_cpu_names_the_value(backend, bad):
    target = Y.clone()
    target[2] = bad
    with tempfast.use_backend(backend):
        message = _raises(ValueError, "^target: class index", tempfast.cross_entropy, X, target)
    assert str(bad) in message


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval(value):
    _raises(ValueError, "^label_smoothing", tempfast.cross_entropy, X, Y, label_smoothing=value)
    _raises(TypeError, "^label_smoothing", tempfast.cross_entropy, X, Y, label_smoothing="0.1")


def test_unknown_reduction():
    _raises(ValueError, "^reduction", tempfast.cross_entropy, X, Y, reduction="avg")


def test_weight_of_wrong_length_or_type():
    _raises(ValueError, "^weight: expected shape", tempfast.cross_entropy, X, Y,
            weight=torch.ones(9))
    _raises(ValueError, "^weight", tempfast.cross_entropy, X, Y, weight=torch.ones(10, 1))
    _raises(TypeError, "^weight", tempfast.cross_entropy, X, Y,
            weight=torch.ones(10, dtype=torch.long))


def test_ignore_index_must_be_an_int():
    _raises(TypeError, "^ignore_index", tempfast.cross_entropy, X, Y, ignore_index=1.5)


def test_inplace_backward_needs_a_viewable_unit_stride_buffer():
    leaf = torch.randn(4, 10, requires_grad=True)
    _raises(ValueError, "^inplace_backward: logits is a leaf", tempfast.cross_entropy, leaf, Y,
            inplace_backward=True)
    logits = torch.randn(10, 4).t().requires_grad_(True)
    _raises(ValueError, "^inplace_backward", tempfast.cross_entropy, logits * 1, Y,
            inplace_backward=True)
    probs = torch.softmax(torch.randn(4, 10), 1).requires_grad_(True)
    _raises(ValueError, "^inplace_backward", tempfast.cross_entropy,
            torch.randn(4, 10, requires_grad=True) * 1, probs, inplace_backward=True)
    # torch's (N, C, d) layout has no unit-stride class dimension to write the gradient into
    _raises(ValueError, "^inplace_backward: logits must be viewable", tempfast.cross_entropy,
            torch.randn(4, 10, 3, requires_grad=True) * 1, torch.zeros(4, 3, dtype=torch.long),
            inplace_backward=True)


def test_unknown_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"^use_backend: unknown backend"), \
            tempfast.use_backend("cuda"):
        pass
    monkeypatch.setenv("TEMPFAST_BACKEND", "fast")
    _raises(ValueError, "^TEMPFAST_BACKEND: unknown backend", tempfast.softmax, X)


def test_module_rejects_bad_temperature():
    with pytest.raises(ValueError, match=r"^temperature"):
        tempfast.nn.TemperatureCrossEntropyLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"^temperature"):
        tempfast.nn.TemperatureSoftmax(temperature=-1.0, learnable=True)
    with pytest.raises(TypeError, match=r"^temperature: expected a number, got str"):
        tempfast.nn.TemperatureCrossEntropyLoss("2")
    with pytest.raises(TypeError, match=r"^temperature: expected a number, got bool"):
        tempfast.nn.TemperatureCrossEntropyLoss(True)
    with pytest.raises(ValueError, match=r"^temperature: expected one value"):
        tempfast.nn.LinearTemperatureCrossEntropy(4, 3, temperature=torch.ones(2))
    module = tempfast.nn.TemperatureSoftmax(torch.tensor(2.0))
    assert float(module.temperature) == pytest.approx(2.0)


def test_probability_targets_refuse_a_custom_ignore_index():
    probs = torch.softmax(torch.randn(4, 10), 1)
    _raises(ValueError, "^ignore_index", tempfast.cross_entropy, X, probs, ignore_index=3)


def test_class_weights_that_require_grad_are_refused():
    weight = torch.ones(10, requires_grad=True)
    _raises(ValueError, "^weight", tempfast.cross_entropy, X, Y, weight=weight)
    with torch.no_grad():
        tempfast.cross_entropy(X, Y, weight=weight)

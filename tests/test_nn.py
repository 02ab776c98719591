"""Modules: fixed and learnable temperatures, state dicts, optimisation of T."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import tempfast
from tempfast.nn import (
    StaleTemperatureWarning,
    TemperatureCrossEntropyLoss,
    TemperatureSoftmax,
)

from .harness import LOSS_TOL, PATHS, assert_close, run_path


@pytest.mark.parametrize("path", ["aten", *PATHS])
def test_fixed_temperature_is_a_buffer_and_matches_the_functional_op(path):
    loss_fn = TemperatureCrossEntropyLoss(8.0, label_smoothing=0.1)
    assert [n for n, _ in loss_fn.named_parameters()] == []
    assert "log_temperature" in loss_fn.state_dict()
    logits, target = torch.randn(6, 11), torch.randint(0, 11, (6,))
    expected = tempfast.reference.cross_entropy(logits.double(), target, 8.0,
                                                label_smoothing=0.1)
    assert_close(run_path(path, loss_fn, logits, target), expected, LOSS_TOL, "loss")
    assert math.isclose(float(loss_fn.temperature), 8.0, rel_tol=1e-6)


def test_learnable_temperature_is_positive_and_gets_the_gradient():
    loss_fn = TemperatureCrossEntropyLoss(2.0, learnable=True)
    (name, param), = loss_fn.named_parameters()
    assert name == "log_temperature"
    logits, target = torch.randn(6, 11), torch.randint(0, 11, (6,))
    loss_fn(logits, target).backward()
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    tempfast.reference.cross_entropy(logits.double(), target, t).backward()
    # d/d(log T) = T * d/dT
    assert_close(param.grad, 2.0 * t.grad, 1e-5, "grad log T")


def test_temperature_calibration_converges_to_the_optimum():
    """Fit T on frozen logits (temperature scaling): the NLL-optimal T of over-confident logits
    is > 1, and gradient descent through the module finds the same T as a grid search."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (400,), generator=g)
    logits = torch.randn(400, 5, generator=g) + 2.0 * torch.nn.functional.one_hot(target, 5)
    logits = logits * 4.0  # over-confident
    loss_fn = TemperatureCrossEntropyLoss(1.0, learnable=True)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss_fn(logits, target).backward()
        opt.step()
    grid = torch.linspace(1.0, 10.0, 901)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits / t, target) for t in grid])
    best = float(grid[nll.argmin()])
    assert best > 1.5
    assert abs(float(loss_fn.temperature.detach()) - best) < 0.05


@pytest.mark.parametrize("path", ["aten", *PATHS])
def test_softmax_module_any_dim_and_log(path):
    x = torch.randn(3, 4, 5)
    module = TemperatureSoftmax(0.5, dim=1)
    assert_close(run_path(path, module, x), torch.softmax(x.double() / 0.5, 1), 1e-6, "softmax")
    log_module = TemperatureSoftmax(3.0, dim=0, log=True, learnable=True)
    out = run_path(path, log_module, x)
    assert_close(out, torch.log_softmax(x.double() / 3.0, 0), 1e-6, "log_softmax")
    out.sum().backward()
    assert log_module.log_temperature.grad is not None
    assert "temperature=3" in repr(log_module)


def test_state_dict_round_trip_keeps_a_learned_temperature():
    a = TemperatureCrossEntropyLoss(1.0, learnable=True)
    with torch.no_grad():
        a.log_temperature.fill_(math.log(5.0))
    b = TemperatureCrossEntropyLoss(1.0, learnable=True)
    b.load_state_dict(a.state_dict())
    assert math.isclose(float(b.temperature.detach()), 5.0, rel_tol=1e-6)


def _train(loss_fn, optimizer, model, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def test_a_learnable_temperature_left_out_of_the_optimiser_warns_once_at_the_second_step():
    """The usual ``SGD(model.parameters())`` never updates a T held by the loss module: it
    gets gradients and silently stays put. That is reported once, as soon as it can be known
    (the optimiser's second step: the first may be followed by another optimiser's), and the
    warning points at the caller's ``step()`` line, not at torch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    loss_fn = TemperatureCrossEntropyLoss(2.0, learnable=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(loss_fn, opt, model, 1)
    with pytest.warns(StaleTemperatureWarning, match="parameter_groups") as record:
        _train(loss_fn, opt, model, 5)
    assert len(record) == 1
    assert record[0].filename == __file__  # _train's optimizer.step() line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(loss_fn, opt, model, 3)


def test_a_temperature_in_a_second_optimiser_or_at_zero_lr_is_not_stale():
    """Two optimisers (the model's first, the loss's second) and a warm-up at lr 0 hold T."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    loss_fn = TemperatureCrossEntropyLoss(2.0, learnable=True)
    model_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t_opt = torch.optim.SGD(loss_fn.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            model_opt.zero_grad()
            t_opt.zero_grad()
            loss_fn(model(x), y).backward()
            model_opt.step()
            t_opt.step()
    assert float(loss_fn.temperature.detach()) == pytest.approx(2.0)


def test_parameter_groups_train_the_temperature_without_decaying_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 3))
    loss_fn = TemperatureCrossEntropyLoss(2.0, learnable=True)
    groups = tempfast.nn.parameter_groups(model, loss_fn, loss_fn, weight_decay=5e-4)
    decayed, plain = groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert any(p is loss_fn.log_temperature for p in plain["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 1
    opt = torch.optim.SGD(groups, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(loss_fn, opt, model, 5)
    assert not math.isclose(float(loss_fn.temperature.detach()), 2.0, rel_tol=1e-4)


def test_printing_a_module_with_a_learnable_temperature_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = repr(TemperatureCrossEntropyLoss(3.0, learnable=True, class_dim=-1))
    assert "temperature=3" in text


def test_loss_module_takes_torch_layout_or_class_dim():
    logits, target = torch.randn(2, 5, 4), torch.randint(0, 5, (2, 4))
    assert_close(TemperatureCrossEntropyLoss(2.0)(logits, target),
                 torch.nn.functional.cross_entropy(logits / 2.0, target), LOSS_TOL, "loss")
    last = torch.randn(2, 4, 5)
    assert_close(TemperatureCrossEntropyLoss(2.0, class_dim=-1)(last, target),
                 torch.nn.functional.cross_entropy(last.reshape(8, 5) / 2.0, target.reshape(8)),
                 LOSS_TOL, "loss")


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


def test_an_earlier_temperature_with_a_gradient_does_not_warn_at_another_runs_optimiser():
    """A learnable T that got a gradient once (an earlier experiment, never in an optimiser)
    and is still alive is not reported when another run's optimiser steps (seen across tests
    in one process)."""
    torch.manual_seed(0)
    old = TemperatureCrossEntropyLoss(3.0, learnable=True)
    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    old(x, y).backward()  # a gradient, and no optimiser for it
    model = torch.nn.Linear(4, 3)
    loss_fn = TemperatureCrossEntropyLoss(2.0, learnable=True)
    opt = torch.optim.SGD(tempfast.nn.parameter_groups(model, loss_fn), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(loss_fn, opt, model, 3)
    assert old.log_temperature.grad is not None


def test_cross_entropy_modules_take_softcap_and_z_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 20) * 10, torch.randint(0, 20, (6,))
    loss_fn = tempfast.nn.TemperatureCrossEntropyLoss(2.0, softcap=5.0, z_loss=1e-2,
                                                      return_z_loss=True)
    loss, z = loss_fn(logits, target)
    expected = tempfast.reference.cross_entropy(logits.double(), target, 2.0, softcap=5.0,
                                                z_loss=1e-2, return_z_loss=True)
    assert torch.allclose(loss.double(), expected[0], atol=1e-5)
    assert torch.allclose(z.double(), expected[1], atol=1e-6)
    head = tempfast.nn.LinearTemperatureCrossEntropy(8, 20, 2.0, softcap=5.0, z_loss=1e-2)
    hidden = torch.randn(6, 8)
    expected = tempfast.reference.linear_cross_entropy(hidden.double(),
                                                       head.weight.double().detach(), target,
                                                       head.bias.double().detach(), 2.0,
                                                       softcap=5.0, z_loss=1e-2)
    assert torch.allclose(head(hidden, target).double(), expected, atol=1e-5)

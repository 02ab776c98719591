"""The evaluation stays honest on masked models: on a saturated softmax, on shattered gradients
(a quantised input) and on stochastic gradients (input noise), the reported worst case is no
more than 2 points above strong reference attacks, and multiplying a model's logits by a
constant moves it by at most 2 points. Also: Square searches the whole image and finds known
adversarial examples, and PGD keeps each example's best iterate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tempfast.robust.attacks import PGD, Square
from tempfast.robust.evaluation import evaluate
from tempfast.robust.masked import (
    InputNoise,
    RandomSignGradients,
    ScaledLogits,
    quantised,
    reference_worst_case,
)

N = 120
SETTINGS = dict(train_temperature=1.0, eps=0.1, steps=10, n_examples=N, corruptions=False,
                seed=0, square_queries=300)


def _reference_worst_case(model: nn.Module, x, y, *, bpda=False) -> float:
    """Strong attacks at budgets the test can afford: PGD on the margin (50 steps, 2
    restarts), APGD-DLR (50 steps), Square (1500 queries), EOT over 32 draws."""
    robust = reference_worst_case(model, x, y, eps=0.1, steps=50, restarts=2, queries=1500,
                                  bpda=bpda, seed=11)
    return float(robust.float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["saturated", "quantised", "stochastic", "random-sign"])
def test_masked_models_are_reported_within_two_points_of_strong_attacks(digits, kind):
    model = {"saturated": lambda: ScaledLogits(digits.model(), 1e4),
             "quantised": lambda: quantised(digits.model()),
             "stochastic": lambda: InputNoise(digits.model(), 0.1),
             "random-sign": lambda: RandomSignGradients(digits.model())}[kind]()
    result = evaluate(model, digits.test(), **SETTINGS)
    assert result["masking"]["suspected"], "each of these models masks its gradients"
    escalation = result["escalation"]
    assert escalation is not None and escalation["attacks"]
    assert not any("had not converged" in r for r in result["masking"]["reasons"])
    assert escalation["stochastic"] == (kind == "stochastic")
    assert escalation["bpda"] == (kind == "quantised")
    x, y = digits.batch(N)
    reference = _reference_worst_case(model, x, y, bpda=kind == "quantised")
    assert result["worst_case_acc"] <= reference + 0.02, (result["worst_case_acc"], reference)


@pytest.mark.slow
@pytest.mark.parametrize("factor", [1e4, 1e-3])
def test_scaling_the_logits_moves_the_worst_case_by_at_most_two_points(digits, factor):
    plain = evaluate(digits.model(), digits.test(), **SETTINGS)["worst_case_acc"]
    scaled = evaluate(ScaledLogits(digits.model(), factor), digits.test(), **SETTINGS)
    assert abs(scaled["worst_case_acc"] - plain) <= 0.02, (scaled["worst_case_acc"], plain)


def test_the_worst_case_counts_the_diagnostics_runs(digits):
    result = evaluate(digits.model(), digits.test(), **SETTINGS)
    assert set(result["extra_robust_acc"]) >= {"pgd-cw (more steps)", "pgd-cw (more restarts)"}
    every = list(result["robust_acc"].values()) + list(result["extra_robust_acc"].values())
    assert result["worst_case_acc"] <= min(every)
    assert result["escalation"] is None and not result["masking"]["suspected"]


def test_the_escalation_is_said_and_recorded(digits):
    from rich.console import Console

    from tempfast.robust.render import render

    result = evaluate(quantised(digits.model()), digits.test(), **SETTINGS)
    assert "BPDA" in result["escalation"]["reason"]
    assert all(name in result["extra_robust_acc"] for name in result["escalation"]["attacks"])
    console = Console(record=True, width=200)
    render(result, console)
    text = console.export_text()
    assert "escalation (masking suspected" in text and "counted in the worst case" in text


class _OnePixel(nn.Module):
    """Two classes decided by the bottom-right pixel of an 8x8 image alone: the logit of class
    1 minus class 0 is ``20 * (x[7, 7] - 0.5)``."""

    def forward(self, x):
        d = 20.0 * (x[:, 0, 7, 7] - 0.5)
        return torch.stack([torch.zeros_like(d), d], 1)


def test_square_proposes_windows_over_the_whole_image():
    """Only a window that covers the last row and column can move this model's decision
    once the first stripes chose the wrong sign there: torchattacks' Square never proposes
    one (its corners stop at side - s - 1)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=gen) * 0.9 + 0.05
    model = _OnePixel()
    y = model(x).argmax(1)
    best = x.clone()  # the known optimum: the pixel moved by eps towards the other class
    best[:, 0, 7, 7] += torch.where(y == 0, 0.1, -0.1)
    breakable = model(best.clamp(0, 1)).argmax(1) != y
    x_adv = Square(model, 0.1, queries=300, seed=3)(x, y)
    fooled = model(x_adv).argmax(1) != y
    assert bool(breakable.any()) and torch.equal(fooled, breakable)


def test_square_finds_the_known_adversarial_examples_of_a_linear_model():
    """For a two-class linear model the smallest margin in the eps-ball (and [0, 1]) is known
    in closed form: each pixel moves to whichever end of its interval lowers the margin."""
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(64, generator=gen), 0.3
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(64), w]))
        model[1].bias.copy_(torch.tensor([0.0, b]))
    x = torch.rand(300, 1, 8, 8, generator=gen)
    y = model(x).argmax(1)
    sign = torch.where(y == 1, 1.0, -1.0)  # margin = sign * (w . x + b)
    flat = x.flatten(1)
    low, high = (flat - 0.05).clamp(0, 1), (flat + 0.05).clamp(0, 1)
    v = sign[:, None] * w
    best_margin = torch.minimum(v * low, v * high).sum(1) + sign * b
    breakable = best_margin < -1e-4
    x_adv = Square(model, 0.05, queries=2000, seed=4)(x, y)
    fooled = model(x_adv).argmax(1) != y
    assert not bool((fooled & ~breakable).any()), "no flip is possible where none exists"
    assert float(fooled[breakable].float().mean()) >= 0.95


def test_pgd_keeps_a_misclassified_iterate_whenever_one_was_found(digits):
    model = digits.model()
    x, y = digits.batch(128)
    seen = torch.zeros(len(y), dtype=torch.bool)

    def record(module, args, out):
        if out.shape[0] == len(y):
            seen.logical_or_(out.detach().argmax(1) != y)

    handle = model.register_forward_hook(record)
    torch.manual_seed(0)
    x_adv = PGD(model, 0.08, 0.04, 10, "cw", keep_best=True)(x, y)
    handle.remove()
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert int(seen.sum()) > 0 and torch.equal(fooled, seen)


def test_the_reference_runs_the_model_in_eval_mode_and_restores_its_mode(digits):
    model = nn.Sequential(nn.Dropout(0.5), digits.model())  # a fresh wrapper: training mode
    x, y = digits.batch(32)
    budget = dict(eps=0.1, steps=2, restarts=1, queries=10, seed=3)
    first = reference_worst_case(model, x, y, **budget)
    assert model.training
    assert torch.equal(first, reference_worst_case(model.eval(), x, y, **budget))

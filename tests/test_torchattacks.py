"""torchattacks inside the evaluation (``ta:<Name>``): named attacks run on the same images at
the same budget and count in the worst case; without the extra, or with a name torchattacks
does not have, the attack list gets a one-line error naming the argument. The tests that run
torchattacks skip when it is not installed (CI does not need it)."""

from __future__ import annotations

import importlib

import pytest
import torch

from tempfast.errors import SettingError
from tempfast.robust import torchattacks_adapter as ta
from tempfast.robust.attacks import build_attack, gradient_free, parse_attacks, seeded
from tempfast.robust.evaluation import evaluate

EPS = 0.1
SETTINGS = dict(train_temperature=1.0, eps=EPS, steps=10, n_examples=120, corruptions=False,
                calibration=False, seed=0)


def test_without_the_extra_a_ta_attack_is_a_one_line_error(monkeypatch):
    real = importlib.import_module

    def no_torchattacks(name, *args):
        if name == "torchattacks":
            raise ImportError("No module named 'torchattacks'")
        return real(name, *args)

    monkeypatch.setattr(ta.importlib, "import_module", no_torchattacks)
    with pytest.raises(SettingError, match=r"attacks.*ta:PGD.*pip install 'tempfast\[torch"):
        parse_attacks("pgd-ce,ta:PGD")
    assert parse_attacks("pgd-ce") == ["pgd-ce"]  # the suite's own attacks need nothing


def test_a_malformed_ta_name_is_refused_before_importing():
    with pytest.raises(SettingError, match="expected ta:<torchattacks class>"):
        parse_attacks("ta:../PGD")


def test_gradient_free_names():
    assert gradient_free("square") and gradient_free("ta:Square") and gradient_free("ta:SPSA")
    assert not gradient_free("ta:PGD") and not gradient_free("pgd-cw")


torchattacks = pytest.importorskip("torchattacks")


def test_an_unknown_torchattacks_name_lists_what_it_has():
    with pytest.raises(SettingError, match=r"ta:Nope.*does not have; it has .*PGD"):
        parse_attacks(["ta:Nope"])
    with pytest.raises(SettingError, match=r"ta:MultiAttack.*needs attacks"):
        parse_attacks(["ta:MultiAttack"])
    assert parse_attacks("ta:PGD, ta:FAB,ta:PGD") == ["ta:PGD", "ta:FAB"]


@pytest.mark.parametrize("name", ["ta:PGD", "ta:FAB", "ta:CW", "ta:Square"])
def test_ta_attacks_stay_in_the_budget_and_break_examples(digits, name):
    model = digits.model()
    x, y = digits.batch(64)
    attack = build_attack(name, model, eps=EPS, alpha=0.025, steps=10, seed=0,
                          square_queries=200)
    with seeded(0, x.device):
        x_adv = attack(x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        fooled = (model(x_adv).argmax(1) != y) & (model(x).argmax(1) == y)
    assert int(fooled.sum()) > 0


def test_ta_pgd_runs_under_the_evaluation_and_joins_the_worst_case(digits):
    result = evaluate(digits.model(), digits.test(), attacks="pgd-ce,ta:PGD,ta:Square",
                      square_queries=200, **SETTINGS)
    assert set(result["robust_acc"]) == {"pgd-ce", "ta:PGD", "ta:Square"}
    assert result["worst_case_acc"] <= min(result["robust_acc"].values())
    # tempfast's PGD keeps each example's best iterate; torchattacks' returns the last one,
    # with the same random start, steps and step size: it finds no more than noise beyond it.
    assert result["robust_acc"]["pgd-ce"] <= result["robust_acc"]["ta:PGD"] + 0.05
    again = evaluate(digits.model(), digits.test(), attacks="ta:PGD", **SETTINGS)
    assert again["robust_acc"]["ta:PGD"] == result["robust_acc"]["ta:PGD"]  # seeded

"""tempfast.robust.evaluation.evaluate: per-example worst case, determinism, RNG left alone,
the JSON shape, corruption accuracy (regenerated and from files) and every bad setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import tempfast.robust.evaluation as ev
from tempfast.errors import SettingError, UsageError
from tempfast.robust.attacks import parse_attacks
from tempfast.robust.corruptions import CORRUPTIONS, LABEL
from tempfast.robust.render import masking_warnings, render

from ._util import TensorBundle

NUM_CLASSES = 10


class PixelClassifier(nn.Module):
    """Predicts class ``round(10 * x[0, 0, 0])``; pixel ``[0, 0, 1]`` carries an example id."""

    def forward(self, x):
        classes = torch.arange(NUM_CLASSES, dtype=x.dtype, device=x.device)
        return -(classes - 10 * x[:, 0, 0, 0:1]) ** 2


def _id_bundle(n: int):
    ids = torch.arange(n)
    y = ids % NUM_CLASSES
    x = torch.zeros(n, 1, 2, 2)
    shown = torch.where(ids % 7 == 5, (y + 1) % NUM_CLASSES, y)  # every 7th is misclassified
    x[:, 0, 0, 0] = shown / 10
    x[:, 0, 0, 1] = ids / 1000
    return TensorBundle(x, y), ids


def _breaking(divisor: int):
    """An 'attack' that flips the prediction of the examples whose id divides by divisor."""
    def attack(x, y):
        assert torch.equal(PixelClassifier()(x).argmax(1), y), "attacked a misclassified example"
        ids = (x[:, 0, 0, 1] * 1000).round().long()
        out = x.clone()
        hit = ids % divisor == 0
        out[hit, 0, 0, 0] = ((y[hit] + 1) % NUM_CLASSES) / 10
        return out
    return attack


def test_worst_case_is_per_example_over_attacks(monkeypatch):
    attacks = {"pgd-ce": _breaking(2), "square": _breaking(3)}
    monkeypatch.setattr(ev, "build_attack",
                        lambda name, model, **kw: attacks.get(name, lambda x, y: x))
    bundle, ids = _id_bundle(84)
    result = ev.evaluate(PixelClassifier(), bundle, train_temperature=1.0,
                         attacks=["pgd-ce", "square"], eps=0.1, steps=1, corruptions=False,
                         batch_size=9)
    correct = ids % 7 != 5
    assert result["n_examples"] == 84
    assert result["clean_acc"] == pytest.approx(float(correct.float().mean()))
    expect = {"pgd-ce": correct & (ids % 2 != 0), "square": correct & (ids % 3 != 0)}
    for name, mask in expect.items():
        assert result["robust_acc"][name] == pytest.approx(float(mask.float().mean()))
    worst = float((expect["pgd-ce"] & expect["square"]).float().mean())
    assert result["worst_case_acc"] == pytest.approx(worst)
    assert worst < min(result["robust_acc"].values())


def _small_eval(digits, **kw):
    settings = {"train_temperature": 2.0, "attacks": None, "eps": 0.1, "steps": 3,
                "n_examples": 100, "corruptions": False, "seed": 0, "square_queries": 20}
    return ev.evaluate(digits.model(), digits.test(), **(settings | kw))


def _without_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "attack_seconds")}


def test_evaluate_is_deterministic_json_and_keeps_caller_rng(digits):
    torch.manual_seed(99)
    state = torch.get_rng_state()
    messages = []
    first = _small_eval(digits, progress=messages.append)
    assert torch.equal(torch.get_rng_state(), state)
    second = _small_eval(digits)
    assert _without_timings(first) == _without_timings(second)
    assert json.loads(json.dumps(first)) == first
    assert list(first["robust_acc"]) == ["pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw",
                                         "apgd-dlr", "square"]
    assert first["worst_case_acc"] <= min(first["robust_acc"].values())
    assert first["settings"]["alpha"] == pytest.approx(2.5 * 0.1 / 3)
    assert first["corruption_acc"] is None and first["corruptions"] is None
    assert {"suspected", "reasons", "verdict", "zero_grad_fraction", "eps_curve", "more_steps",
            "more_restarts"} <= set(first["masking"])
    assert any(m.startswith("attack apgd-dlr on 100 examples") for m in messages)
    assert any(m.startswith("diagnostics: pgd-cw with 6 steps") for m in messages)


def test_each_attack_number_does_not_depend_on_the_others(digits):
    alone = _small_eval(digits, attacks="pgd-cw")
    assert alone["robust_acc"]["pgd-cw"] == _small_eval(digits)["robust_acc"]["pgd-cw"]


def test_no_attacks_runs_no_diagnostics_and_reports_clean_and_corruptions(digits):
    messages = []
    result = _small_eval(digits, attacks="none", corruptions=True, severities=(1, 5),
                         progress=messages.append)
    assert result["robust_acc"] == {} and result["worst_case_acc"] is None
    assert result["masking"] is None and result["extra_robust_acc"] == {}
    assert not any(m.startswith(("diagnostics", "attack")) for m in messages)
    c = result["corruptions"]
    assert c["source"] == LABEL and c["severities"] == [1, 5]
    assert list(c["per_corruption"]) == list(CORRUPTIONS)
    for row in c["per_corruption"].values():
        assert set(row) == {"1", "5", "mean"} and 0.0 <= row["mean"] <= 1.0
    assert result["corruption_acc"] == pytest.approx(
        np.mean([row["mean"] for row in c["per_corruption"].values()]))
    assert result["corruption_acc"] < result["clean_acc"]


def test_corruption_files_are_evaluated_per_severity(digits, tmp_path):
    x, y = digits.tensors()
    pixels = (x[digits.n_train:digits.n_train + 40] * 255).round().to(torch.uint8)
    bundle = TensorBundle(pixels.float() / 255, y[digits.n_train:digits.n_train + 40])
    nhwc = pixels.permute(0, 2, 3, 1).numpy()
    np.save(tmp_path / "identity.npy", np.concatenate([nhwc] * 5))
    np.save(tmp_path / "labels.npy", np.tile(bundle.y.numpy(), 5))
    result = ev.evaluate(digits.model(), bundle, train_temperature=1.0, attacks="none", eps=0.1,
                         steps=1, corruptions=True, corruptions_dir=str(tmp_path))
    row = result["corruptions"]["per_corruption"]["identity"]
    assert result["corruptions"]["source"] == f"files in {tmp_path}"
    assert all(row[str(s)] == pytest.approx(result["clean_acc"]) for s in range(1, 6))
    with pytest.raises(UsageError, match=r"images are \(1, 8, 8\)"):
        ev.evaluate(digits.model(), TensorBundle(torch.rand(4, 1, 8, 9), torch.zeros(4).long()),
                    train_temperature=1.0, attacks="none", eps=0.1, steps=1,
                    corruptions_dir=str(tmp_path))


@pytest.mark.parametrize(("kw", "match"), [
    ({"eps": -0.01}, r"^eps must lie in \[0, 1\]"),
    ({"eps": float("nan")}, r"^eps must lie in \[0, 1\]"),
    ({"eps": float("inf")}, r"^eps must lie in \[0, 1\]"),
    ({"eps": 2.0}, r"^eps must lie in \[0, 1\]"),
    ({"steps": 0}, "^steps must be >= 1"),
    ({"restarts": 0}, "^restarts must be >= 1"),
    ({"alpha": 0.0}, "^alpha must be finite and > 0"),
    ({"n_examples": 0}, "^n_examples must be >= 1"),
    ({"square_queries": 0}, "^square_queries must be >= 1"),
    ({"check_steps": 0}, "^check_steps must be >= 1"),
    ({"severities": (0, 3)}, "^severities must be some of 1..5"),
    ({"batch_size": 0}, "^batch_size must be >= 1"),
    ({"attacks": "pgd-ce,autoattack"}, "^attacks names an unknown attack 'autoattack'"),
    ({"attacks": ["cw"]}, "^attacks names an unknown attack 'cw'"),
])
def test_bad_settings_raise_a_value_error_naming_the_argument(digits, kw, match):
    with pytest.raises(SettingError, match=match) as info:
        _small_eval(digits, **kw)
    assert isinstance(info.value, ValueError)


def test_a_settings_object_and_keyword_overrides_give_the_same_evaluation(digits):
    """``evaluate(model, bundle, settings, **overrides)``: the settings object with some fields
    replaced is the same evaluation as every setting passed as a keyword; its ``check()``
    raises before any work, as ``evaluate`` would."""
    settings = ev.EvalSettings(eps=0.05, steps=3, train_temperature=2.0, attacks="pgd-ce",
                               n_examples=50, corruptions=False, calibration=False)
    by_object = ev.evaluate(digits.model(), digits.test(), settings, eps=0.1)
    by_keywords = ev.evaluate(digits.model(), digits.test(), eps=0.1, steps=3,
                              train_temperature=2.0, attacks="pgd-ce", n_examples=50,
                              corruptions=False, calibration=False)
    assert _without_timings(by_object) == _without_timings(by_keywords)
    assert by_object["settings"]["eps"] == 0.1 and settings.eps == 0.05
    with pytest.raises(SettingError, match=r"^eot must be >= 1"):
        ev.EvalSettings(eps=0.1, steps=1, train_temperature=1.0, eot=0).check()


def test_parse_attacks():
    assert parse_attacks(None) == ["pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw",
                                   "apgd-dlr", "square"]
    assert parse_attacks(" square, pgd-cw ,square") == ["square", "pgd-cw"]
    assert parse_attacks("none") == [] and parse_attacks([]) == []
    assert parse_attacks(["none"]) == [] == parse_attacks(["None"])  # --eval-attacks none


def test_render_prints_tables_warnings_and_verdict(digits):
    from rich.console import Console

    result = _small_eval(digits, attacks="pgd-ce,pgd-cw", corruptions=True, severities=(2,))
    result["masking"]["reasons"] = ["a reason"]
    result["masking"]["suspected"] = True
    console = Console(record=True, width=120)
    render(result, console)
    text = console.export_text()
    for needle in ("worst case", "pgd-cw accuracy vs eps", "jpeg_compression", LABEL,
                   "SUSPECTED GRADIENT MASKING: a reason", "verdict:"):
        assert needle in text
    assert masking_warnings(result) == ["SUSPECTED GRADIENT MASKING: a reason"]


def _rendered(result: dict) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    render(result, console)
    return console.export_text()


def test_the_header_lists_what_ran_and_the_table_every_run_in_the_worst_case(digits):
    result = _small_eval(digits, attacks="pgd-ce")
    text = _rendered(result)
    header = text.splitlines()[0]
    assert "attacks pgd-ce at eps 0.1" in header and "square" not in header
    assert "masking diagnostics" in header
    assert set(result["extra_robust_acc"]) and "pgd-cw" in result["extra_robust_acc"]
    for name in result["extra_robust_acc"]:
        assert f"{name} (diagnostic)" in text  # they count in the worst case: shown, marked
    none = _small_eval(digits, attacks="none")
    text = _rendered(none)
    assert "no attacks (no masking diagnostics)" in text.splitlines()[0]
    assert "verdict:" not in text and "Gradient-masking" not in text
    assert masking_warnings(none) == []


def test_planned_passes_count_each_stage():
    s = ev.EvalSettings(eps=0.1, steps=10, train_temperature=1.0,
                        attacks=["pgd-ce", "square"], square_queries=300, severities=(1, 3),
                        restarts=2)
    plan = ev.planned_passes(s, 100, n_test=400)
    assert plan["attacks"] == pytest.approx(100 * (2 * 10 + 2 * 300 / 3))
    curve = len(ev.masking.eps_points(0.1)) - 1
    # zero-grad 1, pgd-cw (not in the suite) 2 x 10, the eps curve, 20 steps x 2 restarts,
    # 10 steps x 3 restarts
    assert plan["diagnostics"] == pytest.approx(100 * (1 + 20 + curve * 20 + 40 + 30))
    assert plan["corruptions"] == pytest.approx(100 * len(CORRUPTIONS) * 2 / 3)
    assert plan["calibration"] == pytest.approx(400 / 3)
    none = ev.planned_passes(ev.EvalSettings(eps=0.1, steps=10, train_temperature=1.0,
                                             attacks="none", corruptions=False,
                                             calibration=False), 100)
    assert none == {"attacks": 0}


def test_progress_messages_carry_an_eta_once_work_is_done(digits):
    messages = []
    _small_eval(digits, attacks="pgd-ce,pgd-cw", progress=messages.append)
    assert "done, about" not in messages[0]  # nothing measured yet
    later = [m for m in messages[1:] if "done, about" in m]
    assert later and all(m.endswith(" left)") for m in later)


def test_a_quick_evaluation_says_not_escalated_instead_of_escalating(digits, monkeypatch):
    real = ev.masking.run_diagnostics

    def suspicious(*args, **kwargs):
        report, masks = real(*args, **kwargs)
        return {**report, "suspected": True, "reasons": ["planted"]}, masks

    monkeypatch.setattr(ev.masking, "run_diagnostics", suspicious)
    quick = _small_eval(digits, attacks="pgd-ce", escalate=False)
    assert quick["escalation"] is None
    assert quick["masking"]["verdict"].startswith("not escalated")
    full = _small_eval(digits, attacks="pgd-ce")
    assert full["escalation"] is not None
    assert not full["masking"]["verdict"].startswith("not escalated")


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 9, 361])
def test_packed_masks_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    text = ev.pack_mask(mask)
    assert len(text) == (n + 3) // 4
    assert torch.equal(ev.unpack_mask(text, n), mask)


def test_the_result_carries_every_mask_per_example(digits):
    result = _small_eval(digits, attacks="pgd-ce,pgd-cw")
    n, per = result["n_examples"], result["per_example"]
    assert set(per["attacks"]) == set(result["robust_acc"]) | set(result["extra_robust_acc"])
    for name, text in per["attacks"].items():
        acc = result["robust_acc"].get(name, result["extra_robust_acc"].get(name))
        assert float(ev.unpack_mask(text, n).float().mean()) == pytest.approx(acc)
    worst = ev.unpack_mask(per["worst_case"], n)
    assert float(worst.float().mean()) == pytest.approx(result["worst_case_acc"])
    assert not (worst & ~ev.unpack_mask(per["clean"], n)).any()

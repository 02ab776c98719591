"""Gradient-masking diagnostics: a model with logits scaled by 1e4 is flagged, a normal one is
not, and every check of :func:`tempfast.robust.masking.judge` fires on its own symptom."""

from __future__ import annotations

import pytest
import torch

from tempfast.robust import convergence, masking
from tempfast.robust.evaluation import evaluate
from tempfast.robust.masked import ScaledLogits as Scaled


def test_detector_flags_model_with_logits_scaled_by_1e4(digits):
    model = Scaled(digits.model(), 1e4)
    result = evaluate(model, digits.test(), train_temperature=1.0, attacks=["pgd-ce", "pgd-cw"],
                      eps=0.1, steps=5, n_examples=150, corruptions=False, seed=0,
                      square_queries=100)
    m = result["masking"]
    assert m["suspected"]
    assert m["zero_grad_fraction"]["ce"] > 0.9
    assert m["zero_grad_fraction"]["cw"] == 0.0
    assert any("ce loss is exactly zero" in r for r in m["reasons"])
    assert any(r.startswith("pgd-ce accuracy") for r in m["reasons"])
    assert "CE-based attacks are masked" in m["verdict"]
    # The CE attack stalls (accuracy stays near clean), the margin attack does not.
    assert result["robust_acc"]["pgd-ce"] > result["robust_acc"]["pgd-cw"] + 0.3


def test_detector_does_not_flag_normal_model(digits):
    result = evaluate(digits.model(), digits.test(), train_temperature=1.0, attacks=None,
                      eps=0.1, steps=10, n_examples=200, corruptions=False, seed=0,
                      square_queries=100)
    m = result["masking"]
    assert not m["suspected"], m["reasons"]
    assert m["reasons"] == []
    assert m["verdict"] == "no sign of gradient masking"
    assert set(m["zero_grad_fraction"]) == {"ce", "ce_at_T", "ce_adaptive", "cw", "dlr"}
    assert m["eps_curve"][-1]["acc"] <= masking.THRESHOLDS["eps_curve_end"]


def test_zero_gradient_fractions_count_exact_zeros_only(digits):
    x, y = digits.tensors()
    xb, yb = x[digits.n_train:digits.n_train + 64], y[digits.n_train:digits.n_train + 64]
    normal = masking.zero_gradient_fractions(digits.model(), [(xb, yb)], temperature=1.0)
    masked = masking.zero_gradient_fractions(Scaled(digits.model(), 1e4), [(xb, yb)], 1.0)
    hot = masking.zero_gradient_fractions(Scaled(digits.model(), 1e4), [(xb, yb)], 1e4)
    assert normal == {"ce": 0.0, "ce_at_T": 0.0, "ce_adaptive": 0.0, "cw": 0.0, "dlr": 0.0}
    assert masked["ce"] > 0.9 and masked["cw"] == 0.0 and masked["dlr"] == 0.0
    assert masked["ce_adaptive"] == 0.0  # the per-example temperature undoes the scale
    assert hot["ce_at_T"] == 0.0  # CE at T = 1e4 undoes the scale


def test_eps_points_double_up_to_half():
    assert masking.eps_points(0.1) == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    assert masking.eps_points(8 / 255)[-1] == 0.5
    assert masking.eps_points(0.6) == pytest.approx([0.3, 0.6])
    assert masking.eps_points(0.0) == []


def _healthy_report() -> tuple[dict, dict]:
    report = {
        "zero_grad_fraction": {"ce": 0.0, "ce_at_T": 0.0, "ce_adaptive": 0.0, "cw": 0.0,
                               "dlr": 0.0},
        "eps_curve": [{"eps": 0.05, "acc": 0.7}, {"eps": 0.1, "acc": 0.4},
                      {"eps": 0.2, "acc": 0.01}],
        "more_steps": {"steps": 20, "acc": 0.39, "base_steps": 10, "base_acc": 0.4},
        "more_restarts": {"restarts": 2, "acc": 0.4, "base_restarts": 1, "base_acc": 0.4},
        "square_only_fraction": 0.0,
    }
    acc = {"pgd-ce": 0.42, "pgd-ce-t": 0.41, "pgd-cw": 0.4, "apgd-dlr": 0.39, "square": 0.45}
    return report, acc


def test_judge_passes_healthy_report():
    report, acc = _healthy_report()
    out = masking.judge(report, acc, n=1000)
    assert out == {"suspected": False, "reasons": [], "ce_only": False,
                   "verdict": "no sign of gradient masking"}


@pytest.mark.parametrize(("change", "expect", "ce_only"), [
    (lambda r, a: r["zero_grad_fraction"].update(ce=0.5), "ce loss is exactly zero", True),
    (lambda r, a: r["zero_grad_fraction"].update(cw=0.2), "cw loss is exactly zero", False),
    (lambda r, a: a.update({"pgd-ce": 0.9}), "pgd-ce accuracy 90.0% is far above apgd-dlr",
     True),
    (lambda r, a: a.update({"pgd-ce-t": 0.6}), "pgd-ce-t accuracy", True),
    (lambda r, a: r["eps_curve"].insert(2, {"eps": 0.15, "acc": 0.5}), "rises with eps", False),
    (lambda r, a: r["eps_curve"][-1].update(acc=0.3), "still 30.0% at eps 0.2", False),
    (lambda r, a: r.update(stochastic=True), "the forward pass is random", False),
    (lambda r, a: a.update(square=0.2), "square (20.0%) beats the best white-box", False),
    (lambda r, a: r.update(square_only_fraction=0.05), "square alone breaks 5.0%", False),
    (lambda r, a: r["zero_grad_fraction"].update(ce_adaptive=0.3), "ce_adaptive loss", False),
])
def test_judge_flags_each_failed_check(change, expect, ce_only):
    report, acc = _healthy_report()
    change(report, acc)
    out = masking.judge(report, acc, n=1000)
    assert out["suspected"]
    assert len(out["reasons"]) == 1 and expect in out["reasons"][0], out["reasons"]
    assert out["verdict"].startswith("CE-based") == ce_only


def test_eps_curve_ending_at_exactly_five_percent_passes():
    """5 robust of 100 is exactly the limit ("still above 5%" fails), not a float32 rounding
    above it: the accuracies are counts over n in Python floats."""
    acc_5_of_100 = masking._acc(torch.tensor([True] * 5 + [False] * 95))
    assert acc_5_of_100 == 0.05
    report, acc = _healthy_report()
    report["eps_curve"][-1]["acc"] = acc_5_of_100
    assert not masking.judge(report, acc, n=100)["suspected"]
    report["eps_curve"][-1]["acc"] = masking._acc(torch.tensor([True] * 6 + [False] * 94))
    assert masking.judge(report, acc, n=100)["suspected"]


def test_judge_tolerates_attack_noise():
    report, acc = _healthy_report()
    acc["square"] = 0.39 - 0.015
    assert not masking.judge(report, acc, n=1000)["suspected"]
    # On few examples one example is a larger step: the tolerance is 2 / n.
    acc["square"] = 0.39 - 0.035
    assert not masking.judge(report, acc, n=50)["suspected"]
    assert masking.judge(report, acc, n=1000)["suspected"]


def test_an_attack_that_had_not_converged_is_not_masking():
    """More steps or restarts finding more is a weak attack, reported by the convergence line,
    not a masking signal; Square is compared with the converged worst case, so a gradient
    attack that only needed more steps is not taken for a blind one."""
    report, acc = _healthy_report()
    report["more_steps"]["acc"] = 0.3
    report["more_restarts"]["acc"] = 0.3
    assert not masking.judge(report, acc, n=1000)["suspected"]
    acc["square"] = 0.3
    assert masking.judge(report, acc, n=1000)["suspected"]
    report["convergence"] = {"worst_acc": 0.29}
    assert not masking.judge(report, acc, n=1000)["suspected"]


def _fake_run(found: list[float], n: int = 1000):
    """A ``run`` whose round ``k`` (by key ``roundk``) breaks the first ``found[k - 1] * n``
    examples beyond round 0's worst case of 40%; returns the calls' budgets."""
    calls = []

    def run(name, *, eps, alpha, steps, restarts, key):
        calls.append((name, steps, restarts, key))
        k = int(key.removeprefix("round"))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[:round((0.4 - sum(found[:k])) * n)] = True
        return mask

    return run, calls


def _round0(n: int = 1000, base: float = 0.45, worst: float = 0.4) -> list[torch.Tensor]:
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    masks[0][:int(base * n)] = True
    masks[1][:int(worst * n)] = True
    masks[2][:int(base * n)] = True
    return masks


def test_convergence_raises_the_budget_until_a_round_finds_only_noise():
    run, calls = _fake_run([0.05, 0.01])
    report, masks = convergence.converge(run, _round0(), eps=0.1, alpha=0.01, steps=10,
                                         restarts=1, tol=0.02)
    assert report["converged"] and report["rounds"] == 2
    assert [c[1:3] for c in calls] == [(40, 3), (80, 4)]
    assert list(masks) == ["pgd-cw (40 steps, 3 restarts)", "pgd-cw (80 steps, 4 restarts)"]
    assert report["worst_acc"] == pytest.approx(0.34)
    assert "converged after 2 round(s)" in report["line"]


def test_convergence_stops_at_the_cap_and_says_so():
    run, calls = _fake_run([0.05, 0.05, 0.05, 0.05])
    report, _ = convergence.converge(run, _round0(), eps=0.1, alpha=0.01, steps=10,
                                     restarts=1, tol=0.02)
    assert not report["converged"] and report["rounds"] == convergence.CAP_ROUNDS == len(calls)
    assert calls[-1][1:3] == (160, 5)
    assert "NOT converged at the cap" in report["line"] and "upper bound" in report["line"]


def test_convergence_at_the_suites_budget_runs_nothing_more():
    run, calls = _fake_run([])
    report, masks = convergence.converge(run, _round0(worst=0.44), eps=0.1, alpha=0.01,
                                         steps=10, restarts=1, tol=0.02)
    assert report["converged"] and report["rounds"] == 0 and not calls and not masks
    quick, _ = convergence.converge(run, _round0(), eps=0.1, alpha=0.01, steps=10, restarts=1,
                                    tol=0.02, rounds=0)
    assert not quick["converged"] and not calls and "quick evaluation" in quick["line"]


def test_judge_uses_the_measured_pgd_cw_when_the_suite_lacks_it():
    report, _ = _healthy_report()  # pgd-cw at the suite's settings: 40%
    assert not masking.judge(report, {}, n=1000)["suspected"]
    assert not masking.judge(report, {"pgd-ce": 0.42, "square": 0.41}, n=1000)["suspected"]
    out = masking.judge(report, {"pgd-ce": 0.9}, n=1000)
    assert out["reasons"] == ["pgd-ce accuracy 90.0% is far above pgd-cw accuracy 40.0% (gap > "
                              "10%): CE saturates on this model"]
    # The worst case counts pgd-cw (run by the diagnostics): the verdict names what backs it.
    assert "set by the scale-invariant attacks (pgd-cw (run by the diagnostics))" in \
        out["verdict"]
    out = masking.judge(report, {"pgd-ce": 0.9, "square": 0.39}, n=1000)
    assert out["verdict"].startswith("CE-based attacks are masked on this model (saturated "
                                     "softmax); the worst case is set by the scale-invariant "
                                     "attacks (square)")
    out = masking.judge(report, {"square": 0.1}, n=1000)
    assert out["reasons"] == ["gradient-free square (10.0%) beats the best white-box attack "
                              "pgd-cw (40.0%)"]


def test_masked_ce_is_caught_when_the_suite_runs_only_pgd_ce(digits):
    model = Scaled(digits.model(), 1e4)
    result = evaluate(model, digits.test(), train_temperature=1.0, attacks=["pgd-ce"],
                      eps=0.1, steps=5, n_examples=100, corruptions=False, seed=0,
                      square_queries=100)
    m = result["masking"]
    assert list(result["robust_acc"]) == ["pgd-ce"]
    assert any(r.startswith("pgd-ce accuracy") and "far above pgd-cw accuracy" in r
               for r in m["reasons"]), m["reasons"]
    assert result["robust_acc"]["pgd-ce"] > m["more_steps"]["base_acc"] + 0.3

"""Do the attacks converge? When more steps or restarts of CW-margin PGD find examples the
suite's settings missed, the attack had not converged, and the suite's numbers overstate
robustness. That is a weak attack, not gradient masking: the evaluation raises the budget
until one more round finds no more than attack noise, or a stated cap is reached, and reports
the outcome on its own line.

Round 0 is what the suite and the masking diagnostics already ran at the evaluation's eps:
CW-margin PGD at the suite's ``steps`` and ``restarts``, with twice the steps (the diagnostics'
``more_steps``) and with one more restart. Round ``k`` (1 <= k <= cap) runs CW-margin PGD with
``steps * 2^(k+1)`` steps and ``restarts + k + 1`` restarts at the same step size. After each
round the per-example worst case over every CW-margin run so far is taken; the attacks have
converged once the latest round lowers it by at most ``tol`` (``max(0.02, 2 / n)``, the noise
of :func:`tempfast.robust.masking.tolerance`). Every round's per-example mask counts in the
evaluation's worst case.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CAP_ROUNDS = 3
"""Rounds at most beyond the diagnostics (round 3: 16x the suite's steps, 4 more restarts)."""


def round_budget(steps: int, restarts: int, k: int) -> tuple[int, int]:
    """``(steps, restarts)`` of round ``k >= 1``: ``steps * 2^(k+1)``, ``restarts + k + 1``."""
    return steps * 2 ** (k + 1), restarts + k + 1


def round_name(steps: int, restarts: int) -> str:
    """The name a round's run has in the evaluation's results."""
    return f"pgd-cw ({steps} steps, {restarts} restarts)"


def _acc(mask: Tensor) -> float:
    return float(mask.sum()) / mask.numel() if mask.numel() else 0.0


def converge(run: Callable[..., Tensor], first: list[Tensor], *, eps: float, alpha: float,
             steps: int, restarts: int, tol: float, rounds: int = CAP_ROUNDS,
             status: Callable[[str], None] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """Raise CW-margin PGD's budget until a round finds no more than ``tol`` (see the module
    docstring).

    Args:
        run: ``run(name, eps=, alpha=, steps=, restarts=, key=)`` -> per-example robust mask.
        first: round 0's masks, the suite's CW-margin run first (the base).
        rounds: the cap; 0 judges round 0 only (a quick evaluation does not raise the budget).

    Returns:
        ``(report, masks)``: ``converged``, ``rounds`` run, ``cap``, ``tol``, ``gain`` (the
        last round's fall of the worst case), ``worst_acc`` (the CW-margin runs' per-example
        worst case), ``history`` (per round: ``steps``, ``restarts``, ``worst_acc``), ``line``
        (one sentence); and the new rounds' masks by name.
    """
    base = first[0]
    worst = torch.stack(first).all(0)
    gain = _acc(base) - _acc(worst)
    history = [{"round": 0, "steps": steps, "restarts": restarts, "base_acc": _acc(base),
                "worst_acc": _acc(worst)}]
    masks: dict[str, Tensor] = {}
    k = 0
    while gain > tol and k < rounds:
        k += 1
        s, r = round_budget(steps, restarts, k)
        name = round_name(s, r)
        if status is not None:
            status(f"convergence: {name}")
        masks[name] = run("pgd-cw", eps=eps, alpha=alpha, steps=s, restarts=r, key=f"round{k}")
        new = worst & masks[name]
        gain, worst = _acc(worst) - _acc(new), new
        history.append({"round": k, "steps": s, "restarts": r, "worst_acc": _acc(worst)})
    report = {"converged": gain <= tol, "rounds": k, "cap": rounds, "tol": tol, "gain": gain,
              "worst_acc": _acc(worst), "history": history}
    report["line"] = describe(report)
    return report, masks


def describe(report: dict) -> str:
    """One sentence on whether the attacks converged, and at what budget."""
    last, tol = report["history"][-1], report["tol"]
    found = f"the last one lowered the pgd-cw worst case by {report['gain']:.1%}"
    if report["converged"]:
        if report["rounds"] == 0:
            return (f"attacks converged: twice the steps and one more restart found "
                    f"{report['gain']:.1%} more (<= {tol:.1%} noise)")
        return (f"attacks converged after {report['rounds']} round(s) of more steps and "
                f"restarts (up to {last['steps']} steps x {last['restarts']} restarts; {found}, "
                f"<= {tol:.1%} noise); those runs count in the worst case")
    if report["cap"] == 0:
        return (f"attacks not converged: twice the steps or one more restart found "
                f"{report['gain']:.1%} more (> {tol:.1%}); this quick evaluation does not raise "
                "the budget: the worst case is an upper bound")
    return (f"attacks NOT converged at the cap ({report['cap']} rounds, {last['steps']} steps x "
            f"{last['restarts']} restarts: {found}, > {tol:.1%}): the worst case is an upper "
            "bound")

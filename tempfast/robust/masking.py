"""Gradient-masking diagnostics: is a robust accuracy real, or do the attacks just stall?

A model trained at temperature ``T`` learns logits about ``T`` times larger. Attacked with CE on
its raw logits, its softmax saturates in fp32, the input gradient underflows to exactly zero and
PGD stalls: the robust accuracy is high because the attack is blind (gradient masking, as in
defensive distillation). The CW margin, DLR, CE at a per-example temperature and Square are
scale-invariant or gradient-free and see through it. The checks, with the thresholds in
:data:`THRESHOLDS` (``tol`` is ``max(THRESHOLDS["noise"], 2 / n)`` for ``n`` evaluated
examples: differences below it are attack noise):

1. zero gradients: the fraction of correctly classified inputs whose input gradient of an
   attack loss (CE at T = 1, CE at the training T, CE at the adaptive temperature, CW margin,
   DLR) is exactly zero must be <= ``zero_grad_fraction``;
2. CE vs margin: the accuracy under a CE attack (``pgd-ce``, ``pgd-ce-t``) must not exceed the
   lowest accuracy under a scale-invariant attack (``pgd-cw``, ``apgd-dlr``,
   ``pgd-ce-adaptive``) by more than ``ce_gap``;
3. eps curve: CW-margin PGD accuracy at eps x (0.5, 1, 2, 4, 8) (those below 0.5), then at
   ``max(0.5, eps)``, must not rise by more than ``tol`` from one eps to the next, and must end
   at <= ``eps_curve_end`` (at eps = 0.5 every image can be moved to the same grey image);
   the curve stops early once it is that low;
4. stochastic gradients: two forward passes on the same inputs differ (input noise, dropout
   left on): every input gradient is a sample, and attacks need expectation over
   transformation (EOT);
5. Square must not beat the best white-box attack by more than ``tol`` in aggregate, and the
   share of examples that Square breaks and every white-box attack missed must be <= ``tol``
   (per example: white-box attacks blind on some inputs).

CW-margin PGD at the suite's settings is always measured (check 3 starts from it), so checks
2 and 5 count it among the white-box attacks even when the suite itself leaves ``pgd-cw`` out.

Non-convergence is not masking: when CW-margin PGD with more steps or restarts finds more, the
attack was weak, and :mod:`tempfast.robust.convergence` raises its budget and reports that on
its own line (``report["convergence"]``); it never sets ``suspected``. Check 5 compares Square
with the converged CW-margin worst case as well, so a gradient attack that only needed more
steps is not taken for a blind one.

Checks 1-2 on the CE losses point at CE-specific masking (the scale-invariant attacks see
through it); any other failure means even the strong attacks may be blind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import convergence
from .attacks import GRADIENT_FREE, gradient_free
from .base import eval_mode
from .losses import attack_loss

THRESHOLDS = {
    "zero_grad_fraction": 0.05,
    "ce_gap": 0.10,
    "noise": 0.02,
    "eps_curve_end": 0.05,
}
EPS_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0)
CE_ATTACKS = ("pgd-ce", "pgd-ce-t")
SCALE_INVARIANT = ("pgd-cw", "apgd-dlr", "pgd-ce-adaptive")
CE_LOSSES = ("ce", "ce_at_T")
WARNING = "SUSPECTED GRADIENT MASKING"
# The diagnostics' runs at the evaluation's eps, by the name the result gives them.
MORE_STEPS, MORE_RESTARTS = "pgd-cw (more steps)", "pgd-cw (more restarts)"
STOCHASTIC = ("the forward pass is random (two passes on the same inputs differ): input "
              "gradients are samples, attacks need EOT")

RunAttack = Callable[..., Tensor]


def zero_gradient_fractions(model: nn.Module, batches: list[tuple[Tensor, Tensor]],
                            temperature: float) -> dict[str, float]:
    """Fraction of inputs whose input gradient of each attack loss is exactly zero (all pixels).

    Keys: ``ce`` (T = 1), ``ce_at_T`` (the training temperature), ``ce_adaptive``, ``cw``, and
    ``dlr``. ``batches``: ``(x, y)`` pairs, x ``(N, C, H, W)`` in [0, 1]; pass the correctly
    classified examples (the ones attacks start from: on a misclassified example whose label
    is the third-largest logit, DLR is constant and its gradient legitimately 0). Empty dict
    when there is no example.
    """
    losses = {"ce": ("ce", 1.0), "ce_at_T": ("ce", temperature),
              "ce_adaptive": ("ce_adaptive", 1.0), "cw": ("cw", 1.0), "dlr": ("dlr", 1.0)}
    zeros: dict[str, int] = {}
    total = 0
    with eval_mode(model):
        for x, y in batches:
            if x.shape[0] == 0:
                continue
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(x)
            for key, (loss, t) in losses.items():
                (grad,) = torch.autograd.grad(attack_loss(loss, logits, y, t).sum(), x,
                                              retain_graph=True)
                zeros[key] = zeros.get(key, 0) + int((grad.flatten(1).abs().amax(1) == 0).sum())
            total += x.shape[0]
    return {key: count / total for key, count in zeros.items()}


def eps_points(eps: float) -> list[float]:
    """The eps values of the robust-accuracy curve (empty for ``eps = 0``)."""
    if eps <= 0:
        return []
    return [eps * m for m in EPS_MULTIPLIERS if eps * m < 0.5] + [max(0.5, eps)]


def tolerance(n: int) -> float:
    """Accuracy differences below this are attack noise on ``n`` examples."""
    return max(THRESHOLDS["noise"], 2.0 / max(n, 1))


def _acc(robust: Tensor) -> float:
    return float(robust.sum()) / robust.numel() if robust.numel() else 0.0


def run_diagnostics(run: RunAttack, robust: dict[str, Tensor], zero_grad: dict[str, float], *,
                    eps: float, alpha: float, steps: int, restarts: int, more_steps: int,
                    stochastic: bool = False, rounds: int = convergence.CAP_ROUNDS,
                    status: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Run the extra attacks of check 3 and of the convergence rounds, and judge every check
    (see the module docstring).

    ``run(name, eps=, alpha=, steps=, restarts=, key=)`` runs suite attack ``name`` over the
    evaluated examples and returns their per-example robust mask (``key`` picks the seed);
    ``robust`` holds the suite's masks by attack name (``pgd-cw`` is run if absent);
    ``stochastic``: whether two forward passes differ (check 4); ``rounds``: the cap of
    :func:`tempfast.robust.convergence.converge` (0: judge convergence without raising the
    budget).

    Returns ``(report, masks)``: the diagnostics, the convergence report and the masking
    verdict, and the per-example robust masks of the diagnostics' runs at the evaluation's eps
    (``pgd-cw`` at the suite's settings when the suite lacks it, with more steps, with one more
    restart, the convergence rounds), which count in the worst case like the suite's attacks.
    """
    def say(message: str) -> None:
        if status is not None:
            status(message)

    masks: dict[str, Tensor] = {}
    base = robust.get("pgd-cw")
    if base is None:
        say("diagnostics: pgd-cw")
        base = masks["pgd-cw"] = run("pgd-cw", eps=eps, alpha=alpha, steps=steps,
                                     restarts=restarts, key="base")
    n = base.numel()
    curve = []
    for e in eps_points(eps):
        if e == eps:
            acc = _acc(base)
        else:
            say(f"diagnostics: eps curve, eps = {e:.4g}")
            acc = _acc(run("pgd-cw", eps=e, alpha=alpha * e / eps, steps=steps,
                           restarts=restarts, key=f"curve{e}"))
        curve.append({"eps": e, "acc": acc})
        if acc <= THRESHOLDS["eps_curve_end"]:
            break
    say(f"diagnostics: pgd-cw with {more_steps} steps")
    masks[MORE_STEPS] = run("pgd-cw", eps=eps, alpha=alpha, steps=more_steps,
                            restarts=restarts, key="steps")
    say(f"diagnostics: pgd-cw with {restarts + 1} restarts")
    masks[MORE_RESTARTS] = run("pgd-cw", eps=eps, alpha=alpha, steps=steps,
                               restarts=restarts + 1, key="restarts")
    converged, rounds_masks = convergence.converge(
        run, [base, masks[MORE_STEPS], masks[MORE_RESTARTS]], eps=eps, alpha=alpha,
        steps=steps, restarts=restarts, tol=tolerance(n), rounds=rounds, status=status)
    masks |= rounds_masks
    white_box = [m for name, m in robust.items() if not gradient_free(name)] + [base]
    square_only = None
    if "square" in robust:
        broken_by_white_box = ~torch.stack(white_box + list(masks.values())).all(0)
        square_only = _acc(~robust["square"] & ~broken_by_white_box)
    report = {
        "thresholds": {**THRESHOLDS, "tol": tolerance(n)},
        "zero_grad_fraction": zero_grad,
        "eps_curve": curve,
        "more_steps": {"steps": more_steps, "acc": _acc(masks[MORE_STEPS]), "base_steps": steps,
                       "base_acc": _acc(base)},
        "more_restarts": {"restarts": restarts + 1, "acc": _acc(masks[MORE_RESTARTS]),
                          "base_restarts": restarts, "base_acc": _acc(base)},
        "square_only_fraction": square_only,
        "stochastic": stochastic,
        "convergence": converged,
    }
    acc = {name: _acc(mask) for name, mask in robust.items()}
    report |= judge(report, acc, n)
    return report, masks


def judge(report: dict, robust_acc: dict[str, float], n: int) -> dict:
    """``suspected``, ``reasons``, ``ce_only`` and ``verdict`` from the measured diagnostics
    (pure function). Whether the attacks converged is not judged here (see
    :mod:`tempfast.robust.convergence`).

    ``report`` holds ``zero_grad_fraction``, ``eps_curve``, ``more_steps`` (its ``base_acc``),
    ``square_only_fraction``, and optionally ``stochastic`` and ``convergence`` (its
    ``worst_acc`` joins the white-box attacks that Square is compared with); ``robust_acc``
    the suite's accuracies by attack name; ``n`` the number of examples. When the suite has
    no ``pgd-cw``, its accuracy at the suite's settings (``report["more_steps"]["base_acc"]``)
    stands in for it.
    """
    tol = tolerance(n)
    acc = {"pgd-cw": report["more_steps"]["base_acc"], **robust_acc}
    ce_reasons, reasons = [], []
    for key, fraction in report["zero_grad_fraction"].items():
        if fraction > THRESHOLDS["zero_grad_fraction"]:
            target = ce_reasons if key in CE_LOSSES else reasons
            target.append(f"the input gradient of the {key} loss is exactly zero for "
                          f"{fraction:.0%} of inputs (> {THRESHOLDS['zero_grad_fraction']:.0%}): "
                          "attacks on this loss stall")
    strong = {name: acc[name] for name in SCALE_INVARIANT if name in acc}
    best_name = min(strong, key=strong.get)
    for name in CE_ATTACKS:
        if name in acc and acc[name] - strong[best_name] > THRESHOLDS["ce_gap"]:
            ce_reasons.append(f"{name} accuracy {acc[name]:.1%} is far above "
                              f"{best_name} accuracy {strong[best_name]:.1%} (gap > "
                              f"{THRESHOLDS['ce_gap']:.0%}): CE saturates on this model")
    curve = report["eps_curve"]
    for prev, cur in itertools.pairwise(curve):
        if cur["acc"] > prev["acc"] + tol:
            reasons.append(f"pgd-cw accuracy rises with eps: {prev['acc']:.1%} at eps "
                           f"{prev['eps']:.4g}, {cur['acc']:.1%} at eps {cur['eps']:.4g}")
    if curve and curve[-1]["acc"] > THRESHOLDS["eps_curve_end"]:
        reasons.append(f"pgd-cw accuracy is still {curve[-1]['acc']:.1%} at eps "
                       f"{curve[-1]['eps']:.4g} (expected <= {THRESHOLDS['eps_curve_end']:.0%})")
    if report.get("stochastic"):
        reasons.append(STOCHASTIC)
    white_box = {k: v for k, v in acc.items() if not gradient_free(k)}
    if report.get("convergence"):
        white_box["pgd-cw (converged)"] = report["convergence"]["worst_acc"]
    if "square" in acc:
        best = min(white_box, key=white_box.get)
        if acc["square"] < white_box[best] - tol:
            reasons.append(f"gradient-free square ({acc['square']:.1%}) beats the best "
                           f"white-box attack {best} ({white_box[best]:.1%})")
        only = report.get("square_only_fraction")
        if only is not None and only > tol:
            reasons.append(f"square alone breaks {only:.1%} of the examples, which every "
                           "white-box attack missed: the gradients are blind on those inputs")
    backing = [name for name in (*SCALE_INVARIANT, *GRADIENT_FREE) if name in robust_acc]
    if reasons:
        verdict = ("robust accuracy may be overestimated even by the scale-invariant attacks: "
                   "the escalated attacks are counted in the worst case; treat it as an upper "
                   "bound and rerun with more steps, restarts and Square queries")
    elif ce_reasons:
        backed = ", ".join(backing) if backing else "pgd-cw (run by the diagnostics)"
        verdict = ("CE-based attacks are masked on this model (saturated softmax); the worst "
                   f"case is set by the scale-invariant attacks ({backed}), which see through "
                   "it: trust the worst-case accuracy, not the CE numbers")
    else:
        verdict = "no sign of gradient masking"
    all_reasons = ce_reasons + reasons
    return {"suspected": bool(all_reasons), "reasons": all_reasons,
            "ce_only": bool(ce_reasons) and not reasons, "verdict": verdict}

"""APGD: Auto-PGD in the L-infinity ball (Croce & Hein 2020), tempfast's own (torchattacks'
indexes a third-largest logit, which two-class data do not have)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import checks
from .base import eval_mode, loss_and_grad, project, restart_on_survivors, seeded
from .losses import LOSSES


def _apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step: ``ceil(p_j steps)`` with ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(v * steps) for v in p[1:] if v < 1.0})
    return [w for w in points if 0 < w < steps]


class APGD:
    """Auto-PGD in the L-infinity ball (Croce & Hein 2020): ``steps`` steps from a random
    start, step size ``2 eps`` halved at checkpoints when the loss stalls, momentum 0.75, per
    example (``steps + 1`` gradient evaluations per restart).

    At each checkpoint ``w_j`` an example's step is halved, and it restarts from its best
    point, when fewer than ``rho = 0.75`` of the steps since ``w_{j-1}`` raised its loss, or
    when neither its step nor its best loss changed since ``w_{j-1}``. ``loss``: ``"dlr"``,
    ``"ce"`` (at ``temperature``; 1: raw logits), ``"ce_adaptive"`` or ``"cw"``; ``eot`` / ``bpda``:
    see :func:`tempfast.robust.base.loss_and_grad`. Each restart starts at a random
    point of the ball (seeded by ``seed``) and attacks the examples no earlier restart broke.

    Returns, per example, an iterate that is misclassified when any was (the first one found),
    else the iterate of highest loss: the best iterate, never merely the last.
    """

    RHO = 0.75
    MOMENTUM = 0.75

    def __init__(self, model: nn.Module, eps: float, steps: int, loss: str = "dlr",
                 restarts: int = 1, seed: int = 0, temperature: float = 1.0, *,
                 eot: int = 1, bpda: bool = False) -> None:
        checks.eps(eps)
        checks.at_least(steps, "steps", 1)
        checks.at_least(restarts, "restarts", 1)
        checks.at_least(eot, "eot", 1)
        checks.choice(loss, "loss", LOSSES)
        self.model, self.seed = model, int(seed)
        self.eps, self.steps, self.loss = float(eps), int(steps), loss
        self.restarts, self.temperature = int(restarts), temperature
        self.eot, self.bpda = int(eot), bpda

    def _loss_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss (N,), input gradient, misclassified (N,))`` at ``x``."""
        loss, grad, logits = loss_and_grad(self.model, x, y, self.loss, self.temperature,
                                           eot=self.eot, bpda=self.bpda)
        return loss, grad, logits.argmax(1) != y

    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        eps, n = self.eps, x.shape[0]
        per_example = (n,) + (1,) * (x.dim() - 1)
        x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
        loss, grad, fooled = self._loss_and_grad(x_adv, y)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        x_found, found = x_adv.clone(), fooled.clone()
        step = torch.full(per_example, 2.0 * eps, dtype=x.dtype, device=x.device)
        x_prev = x_adv.clone()
        rises = torch.zeros(n, device=x.device)
        last = 0
        step_last, best_last = step.clone(), loss_best.clone()
        checkpoints = set(_apgd_checkpoints(self.steps))
        for k in range(self.steps):
            with torch.no_grad():
                z = project(x_adv + step * grad.sign(), x, eps)
                a = 1.0 if k == 0 else self.MOMENTUM
                x_new = project(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev), x, eps)
                x_prev, x_adv = x_adv, x_new
            new_loss, grad, fooled = self._loss_and_grad(x_adv, y)
            with torch.no_grad():
                fresh = fooled & ~found
                x_found[fresh], found = x_adv[fresh], found | fooled
                rises += (new_loss > loss).float()
                loss = new_loss
                better = loss > loss_best
                x_best[better], grad_best[better] = x_adv[better], grad[better]
                loss_best = torch.where(better, loss, loss_best)
                if k + 1 in checkpoints:
                    stalled = rises <= self.RHO * (k + 1 - last)
                    stuck = (step_last.flatten() == step.flatten()) & (best_last == loss_best)
                    halve = stalled | stuck
                    step_last, best_last = step.clone(), loss_best.clone()
                    step[halve] /= 2.0
                    x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                    rises.zero_()
                    last = k + 1
        return torch.where(found.view(per_example), x_found, x_best).detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with seeded(self.seed, x.device), eval_mode(self.model), torch.enable_grad():
            return restart_on_survivors(self.model, self._one_run, x, y, self.restarts)

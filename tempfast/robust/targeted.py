"""Multi-targeted PGD: PGD on the targeted margin ``z_t - z_y`` towards each of the highest
other classes in turn (Gowal et al. 2019's multi-targeted attack; AutoAttack's APGD-T uses the
same targets).

An untargeted loss follows whichever wrong class is nearest in gradient terms; a targeted
margin pulls towards one class, which finds adversarial examples the untargeted attacks miss
when the nearest wrong class is not the easiest to reach. The targets are the ``targets``
highest non-true logits of the clean image; each target's run attacks only the examples no
earlier target (or restart) fooled, and an example counts as broken by any misclassification.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import checks
from .base import eval_mode, loss_and_grad, project

TARGETS = 3


def _towards(target: Tensor):
    """The targeted margin ``z_t - z_y`` per example, as an attack loss ``(logits, y)``."""
    return lambda logits, y: (logits.gather(1, target[:, None])
                              - logits.gather(1, y[:, None])).squeeze(1)


class MultiTargetedPGD:
    """``steps`` signed steps of ``alpha`` on ``z_t - z_y`` from a uniform random start, for
    each of the ``targets`` highest other classes and ``restarts`` random starts each; every
    example keeps the first iterate that fools the model. ``eot``: gradients averaged over
    that many passes; ``bpda``: straight-through gradients through declared preprocessing.
    Random starts come from the global RNG (seed it)."""

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int,
                 targets: int = TARGETS, restarts: int = 1, *, eot: int = 1,
                 bpda: bool = False) -> None:
        checks.eps(eps)
        checks.positive(alpha, "alpha")
        checks.at_least(steps, "steps", 1)
        checks.at_least(targets, "targets", 1)
        checks.at_least(restarts, "restarts", 1)
        checks.at_least(eot, "eot", 1)
        self.model = model
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.targets, self.restarts, self.eot, self.bpda = int(targets), int(restarts), \
            int(eot), bpda

    def _one_run(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        x_adv = (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0.0, 1.0)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_found = x_adv.clone()
        for _ in range(self.steps):
            _, grad, logits = loss_and_grad(self.model, x_adv, y, _towards(t), eot=self.eot,
                                            bpda=self.bpda)
            with torch.no_grad():
                fresh = (logits.argmax(1) != y) & ~found
                x_found[fresh], found = x_adv[fresh], found | fresh
                x_adv = project(x_adv + self.alpha * grad.sign(), x, self.eps)
        keep = found.view(-1, *(1,) * (x.dim() - 1))
        return torch.where(keep, x_found, x_adv).detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with eval_mode(self.model), torch.enable_grad():
            with torch.no_grad():
                logits = self.model(x)
            others = logits.scatter(1, y[:, None], float("-inf"))
            order = others.argsort(1, descending=True)
            best = x.clone()
            for rank in range(min(self.targets, logits.shape[1] - 1)):
                for _ in range(self.restarts):
                    with torch.no_grad():
                        left = (self.model(best).argmax(1) == y).nonzero().squeeze(1)
                    if left.numel() == 0:
                        return best
                    best[left] = self._one_run(x[left], y[left], order[left, rank])
        return best

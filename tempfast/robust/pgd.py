"""PGD: projected gradient ascent in the L-infinity ball (Madry et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import checks
from .base import eval_mode, loss_and_grad, project, restart_on_survivors
from .losses import LOSSES


class PGD:
    """``steps`` signed-gradient steps of size ``alpha`` on attack loss ``loss``, projected onto
    the eps-ball and clamped to [0, 1], from a uniform random point of the ball (or from ``x``
    when ``random_start=False``).

    ``keep_best`` (the evaluation's setting): each example keeps the first iterate that
    fools the model, else its last, so a later step that moves back never undoes a success;
    training keeps Madry's last iterate. With several restarts, each attacks only the examples
    no earlier restart fooled. ``eot``/``bpda``: see :func:`tempfast.robust.base.loss_and_grad`.
    The random starts come from the global RNG (seed it, e.g. with
    :func:`~tempfast.robust.base.seeded`).
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int,
                 loss: str = "ce", temperature: float = 1.0, random_start: bool = True,
                 restarts: int = 1, *, keep_best: bool = False, eot: int = 1,
                 bpda: bool = False) -> None:
        checks.eps(eps)
        checks.positive(alpha, "alpha")
        checks.at_least(steps, "steps", 1)
        checks.at_least(restarts, "restarts", 1)
        checks.at_least(eot, "eot", 1)
        checks.choice(loss, "loss", LOSSES)
        self.model = model
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.loss, self.temperature = loss, temperature
        self.random_start, self.restarts = random_start, int(restarts)
        self.keep_best, self.eot, self.bpda = keep_best, int(eot), bpda

    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        if self.random_start:
            x_adv = (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_found = x_adv.clone() if self.keep_best else None
        for _ in range(self.steps):
            _, grad, logits = loss_and_grad(self.model, x_adv, y, self.loss, self.temperature,
                                            eot=self.eot, bpda=self.bpda)
            with torch.no_grad():
                if self.keep_best:
                    fresh = (logits.argmax(1) != y) & ~found
                    x_found[fresh], found = x_adv[fresh], found | fresh
                x_adv = project(x_adv + self.alpha * grad.sign(), x, self.eps)
        if not self.keep_best:
            return x_adv.detach()
        with torch.no_grad():  # the last iterate counts unless an earlier one already fooled
            keep = found.view(-1, *(1,) * (x.dim() - 1))
            return torch.where(keep, x_found, x_adv).detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with eval_mode(self.model), torch.enable_grad():
            return restart_on_survivors(self.model, self._one_run, x, y, self.restarts)

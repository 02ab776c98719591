"""White-box attacks on [0, 1] images under an L-infinity budget.

One attack = one small class, called as ``attack(x, y) -> x_adv`` (torchattacks' manner).
Every attack runs the model in eval mode while crafting (batch-norm statistics frozen) and
restores the previous mode afterwards; ``x_adv`` is detached, within ``eps`` of ``x`` in the
L-infinity norm and inside [0, 1].

Attack losses (maximised), for logits ``z`` and labels ``y``:

* ``"ce"``: ``cross_entropy(z / T, y)`` at temperature ``T`` (``T = 1``: CE on raw logits);
* ``"cw"``: the Carlini-Wagner margin ``max_{j != y} z_j - z_y``. It is invariant to a common
  scale of the logits, so a model whose logits are scaled up by a large factor (the gradient
  masking of high-temperature training and defensive distillation) cannot hide from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .functional import cross_entropy

LOSSES = ("ce", "cw")


def margin_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example CW margin ``max_{j != y} z_j - z_y``, shape ``(N,)``.

    The true class is excluded with ``-inf`` (not by zeroing its logit, which is wrong when all
    other logits are negative).
    """
    true_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, target.unsqueeze(1), float("-inf"))
    return others.amax(dim=1) - true_logit


def attack_loss(name: str, logits: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-example loss ``(N,)`` of attack loss ``name`` (see the module docstring)."""
    if name == "ce":
        return cross_entropy(logits.float(), target, temperature, reduction="none")
    if name == "cw":
        return margin_loss(logits.float(), target)
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class PGD:
    """Projected gradient ascent (Madry et al. 2018) in the L-infinity ball.

    Each restart starts at a uniform random point of the eps-ball (or at ``x`` when
    ``random_start=False``), takes ``steps`` signed-gradient steps of size ``alpha``, projects
    onto the ball and clamps to [0, 1]. With several restarts, an example keeps the first
    restart that fools the model (else the last one).
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int,
                 loss: str = "ce", temperature: float = 1.0, random_start: bool = True,
                 restarts: int = 1) -> None:
        if eps < 0:
            raise ValueError(f"eps: must be >= 0, got {eps}")
        if steps < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts: must be >= 1, got {restarts}")
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        self.model = model
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.loss, self.temperature = loss, temperature
        self.random_start, self.restarts = random_start, int(restarts)

    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        if self.random_start:
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
            x_adv = (x + delta).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = attack_loss(self.loss, self.model(x_adv), y, self.temperature).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + self.alpha * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)
        return x_adv.detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with eval_mode(self.model), torch.enable_grad():
            best = self._one_run(x, y)
            for _ in range(self.restarts - 1):
                with torch.no_grad():
                    fooled = self.model(best).argmax(1) != y
                if bool(fooled.all()):
                    break
                candidate = self._one_run(x, y)
                best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, candidate)
        return best

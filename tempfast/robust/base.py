"""What every attack shares: eval mode while crafting, a seeded RNG that leaves the caller's
alone, the projection onto the eps-ball, and the gradient of an attack loss with expectation
over transformation (EOT) and straight-through preprocessing (BPDA)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .bpda import straight_through
from .losses import attack_loss


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (CPU and ``device``) for the block, then restore the caller's state."""
    cuda = []
    if device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def restart_on_survivors(model: nn.Module, one_run: Callable[[Tensor, Tensor], Tensor],
                         x: Tensor, y: Tensor, restarts: int) -> Tensor:
    """``one_run(x, y)`` (adversarial images, ``x``'s shape), then up to ``restarts - 1`` more
    runs on the examples the model still classifies correctly, each result replacing theirs."""
    best = one_run(x, y)
    for _ in range(restarts - 1):
        with torch.no_grad():
            left = (model(best).argmax(1) == y).nonzero().squeeze(1)
        if left.numel() == 0:
            break
        best[left] = one_run(x[left], y[left])
    return best


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """``x_adv`` clipped to the L-infinity ball of radius ``eps`` around ``x`` and to [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor,
                  loss: str | Callable[[Tensor, Tensor], Tensor], temperature: float = 1.0,
                  *, eot: int = 1, bpda: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss (N,), d loss / d x, logits)`` of attack loss ``loss`` at ``x`` (a name of
    :mod:`tempfast.robust.losses`, or a callable ``(logits, y) -> (N,)``).

    ``eot > 1``: the mean loss and gradient over ``eot`` forward passes (expectation over
    transformation, for a model whose forward is random); the logits are those of the last
    pass. ``bpda``: gradients pass straight through the model's declared non-differentiable
    preprocessing (:class:`tempfast.robust.bpda.NonDifferentiable`).
    """
    x = x.detach().requires_grad_(True)
    total, grad = None, None
    with straight_through(bpda):
        for _ in range(eot):
            logits = model(x)
            value = loss(logits, y) if callable(loss) else attack_loss(loss, logits, y,
                                                                        temperature)
            (g,) = torch.autograd.grad(value.sum(), x)
            total = value.detach() if total is None else total + value.detach()
            grad = g if grad is None else grad + g
    return total / eot, grad / eot, logits.detach()

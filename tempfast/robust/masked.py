"""Deliberately masked models and strong reference attacks: the yardstick of an evaluation's
honesty.

Wrap a trained model so that gradient attacks go wrong in a known way, then check that the
evaluation (:func:`tempfast.robust.evaluation.evaluate`) flags it and that its worst case is
close to :func:`reference_worst_case`, a per-example worst case over attacks with far larger
budgets:

* :class:`ScaledLogits`: ``model(x) * factor``; with a large factor the softmax saturates and
  CE gradients underflow to zero (defensive distillation);
* :func:`quantised`: the input rounded to a few levels, declared non-differentiable
  (shattered gradients; BPDA undoes it);
* :class:`RandomSignGradients`: identity forward, every input-gradient entry's sign a coin
  flip (obfuscated gradients no EOT or BPDA undoes; only gradient-free attacks see through);
* :class:`InputNoise`: fresh Gaussian noise on the input at every forward (stochastic
  gradients; EOT undoes it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .apgd import APGD
from .base import eval_mode, seeded
from .bpda import NonDifferentiable
from .pgd import PGD
from .square import Square


class ScaledLogits(nn.Module):
    """``model(x) * factor``: the saturated-softmax model of defensive distillation."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


class InputNoise(nn.Module):
    """``model(x + sigma * N(0, 1))`` with fresh noise at every forward: stochastic gradients."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


class _RandomSign(torch.autograd.Function):
    """Identity forward; backward: the gradient with every entry's sign flipped at random."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * (torch.randint(0, 2, grad.shape, device=grad.device) * 2 - 1)


class RandomSignGradients(nn.Module):
    """``model(x)`` whose input gradient has random signs (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(_RandomSign.apply(x))


def quantised(model: nn.Module, levels: int = 4) -> nn.Module:
    """``model(round(x * levels) / levels)``, the rounding declared non-differentiable."""
    return nn.Sequential(NonDifferentiable(lambda x: torch.round(x * levels) / levels), model)


def reference_worst_case(model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
                         steps: int = 100, restarts: int = 5, queries: int = 5000,
                         eot: int = 32, bpda: bool = False, votes: int = 32,
                         seed: int = 0) -> Tensor:
    """Per-example robust mask ``(N,)`` under strong attacks: PGD on the CW margin (``steps``,
    step ``eps / 10``, ``restarts``, best iterate kept), APGD-DLR (``steps``) and Square
    (``queries``), each run on the examples the previous ones left. On a stochastic model (two
    forward passes differ) the gradient attacks average ``eot`` passes and an example counts
    as classified by the majority of ``votes`` passes; ``bpda``: straight-through gradients
    through declared preprocessing. ``x``: ``(N, C, H, W)`` in [0, 1]; ``y``: ``(N,)``. The
    model runs in eval mode throughout (its mode is restored afterwards)."""
    from .evaluation import Judge, is_stochastic

    with eval_mode(model), seeded(seed, x.device):
        stochastic = is_stochastic(model, x)
        judge = Judge(model, votes if stochastic else 1, seed=seed)
        robust = judge(x, y)
        draws = eot if stochastic else 1
        for attack in (PGD(model, eps, eps / 10, steps, "cw", restarts=restarts, keep_best=True,
                           eot=draws, bpda=bpda),
                       APGD(model, eps, steps, "dlr", seed=seed + 1, eot=draws, bpda=bpda),
                       Square(model, eps, queries=queries, seed=seed + 2)):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            attacked = x.clone()
            attacked[idx] = attack(x[idx], y[idx])
            robust &= judge(attacked, y)
    return robust

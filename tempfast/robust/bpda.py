"""Declared non-differentiable preprocessing and its straight-through gradient (BPDA).

A defence that quantises, compresses or otherwise transforms its input without a useful
gradient shatters the gradient (Athalye, Carlini & Wagner 2018): white-box attacks see zeros.
Declare such a step by wrapping it, ``NonDifferentiable(fn)``; its forward is ``fn(x)``
always. Inside :func:`straight_through` (which the attacks enter when asked for BPDA, and the
evaluation's escalation when it finds masking and the model declares such a step) its backward
is the identity: Backward Pass Differentiable Approximation with ``fn(x) ~ x``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

from torch import Tensor, nn

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("tempfast_bpda", default=False)


class NonDifferentiable(nn.Module):
    """``fn(x)`` as a module, declared non-differentiable (see the module docstring)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        out = self.fn(x)
        if _ACTIVE.get() and x.requires_grad:
            return x + (out - x).detach()  # value fn(x), gradient of the identity
        return out


def declares_preprocessing(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`NonDifferentiable` step."""
    return any(isinstance(m, NonDifferentiable) for m in model.modules())


@contextlib.contextmanager
def straight_through(active: bool = True) -> Iterator[None]:
    """Within the block, :class:`NonDifferentiable` steps pass gradients straight through."""
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)

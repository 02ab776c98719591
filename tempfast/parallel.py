"""Class-parallel cross-entropy: the classes split across the ranks of a ``torch.distributed``
group. Use :func:`tempfast.cross_entropy` / :func:`tempfast.linear_cross_entropy` (and the
modules) with ``process_group=``; the op lives in ``tempfast/ops/class_parallel/``. This module
keeps the names it used to hold, for existing imports."""

from __future__ import annotations

from torch import Tensor

from . import functional
from .ops.class_parallel import argmax


def cross_entropy(logits: Tensor, target: Tensor, temperature: float | Tensor = 1.0, *,
                  process_group, **kwargs) -> Tensor:
    """:func:`tempfast.cross_entropy` with ``process_group`` (required here)."""
    return functional.cross_entropy(logits, target, temperature, process_group=process_group,
                                    **kwargs)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor,
                         bias: Tensor | None = None, temperature: float | Tensor = 1.0, *,
                         process_group, **kwargs) -> Tensor:
    """:func:`tempfast.linear_cross_entropy` with ``process_group`` (required here)."""
    return functional.linear_cross_entropy(hidden, weight, target, bias, temperature,
                                           process_group=process_group, **kwargs)


__all__ = ["argmax", "cross_entropy", "linear_cross_entropy"]

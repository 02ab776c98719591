"""The contrastive loss on one process: per-row losses of both directions on the fused linear
head (its custom ops and autograd carry the gradients of ``a``, ``b`` and ``T``). A batch split
over a process group, and NT-Xent, are in :mod:`.sharded`."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import linear_cross_entropy as _linear


def direction(hidden: Tensor, weight: Tensor, temperature: float | Tensor,
              reduction: str) -> Tensor:
    """``CE(hidden @ weight.T / T, arange(B))``, per row ``(B,)`` or summed: the head's chunks
    hold at most a chunk of rows of the ``B x B`` similarities. Summed, the head forms the
    gradients in its forward pass (three GEMMs per chunk); per row, its backward pass makes
    the similarities again (four)."""
    target = torch.arange(hidden.shape[0], device=hidden.device)
    return _linear.run(_linear.normalise(hidden, weight, target, None, temperature,
                                         ignore_index=-100, reduction=reduction,
                                         label_smoothing=0.0, chunk_size=None,
                                         process_group=None, start=None))


def contrastive_loss(a: Tensor, b: Tensor, temperature: float | Tensor, symmetric: bool,
                     reduction: str) -> Tensor:
    """Row ``i``'s loss (``"none"``: ``a``'s direction, or the mean of both directions), or
    their sum or mean (from each direction's summed head)."""
    per_row = reduction == "none"
    loss = direction(a, b, temperature, "none" if per_row else "sum")
    if symmetric:
        loss = (loss + direction(b, a, temperature, "none" if per_row else "sum")) * 0.5
    return loss / a.shape[0] if reduction == "mean" else loss

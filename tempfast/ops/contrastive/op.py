"""The contrastive loss on one process: per-row losses of both directions on the fused linear
head (its custom ops and autograd carry the gradients of ``a``, ``b`` and ``T``). A batch split
over a process group, and NT-Xent, are in :mod:`.sharded`."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import linear_cross_entropy as _linear


def direction_rows(hidden: Tensor, weight: Tensor, temperature: float | Tensor) -> Tensor:
    """``CE(hidden @ weight.T / T, arange(B))`` per row ``(B,)``: the head's chunks hold at
    most a chunk of rows of the ``B x B`` similarities."""
    target = torch.arange(hidden.shape[0], device=hidden.device)
    return _linear.run(_linear.normalise(hidden, weight, target, None, temperature,
                                         ignore_index=-100, reduction="none",
                                         label_smoothing=0.0, chunk_size=None,
                                         process_group=None, start=None))


def contrastive_rows(a: Tensor, b: Tensor, temperature: float | Tensor,
                     symmetric: bool) -> Tensor:
    """Row ``i``'s loss: ``a``'s direction, or the mean of both directions."""
    rows = direction_rows(a, b, temperature)
    if symmetric:
        rows = (rows + direction_rows(b, a, temperature)) * 0.5
    return rows

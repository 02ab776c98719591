"""One contrastive-loss call: its arguments checked and normalised once (:func:`normalise`)
and its loss (:func:`run`), on the fused linear head.

With ``s = a @ b.T / T`` (``B x B``, row ``i`` of ``a`` matching row ``i`` of ``b``), the loss
of row ``i`` is ``l_i = CE(s_i, i)`` (``a``'s direction) or, symmetric (CLIP),
``(CE(s_i, i) + CE(s_:,i, i)) / 2`` (the column: ``b``'s direction). ``reduction``: the mean
or sum of ``l_i``, or ``l`` itself (``"none"``, shape ``(B,)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ... import _checks
from .op import contrastive_rows

REDUCTIONS = ("mean", "sum", "none")


class ContrastiveCall(NamedTuple):
    """A contrastive call, normalised: ``a`` and ``b`` ``(B, D)``, same dtype and device; the
    temperature a number (``t_value``) or a 0-dim tensor (``temperature``)."""

    a: Tensor
    b: Tensor
    temperature: float | Tensor
    symmetric: bool
    reduction: str


def normalise(a: Tensor, b: Tensor, temperature: float | Tensor, symmetric: bool,
              reduction: str) -> ContrastiveCall:
    """Check every argument once (a one-line error naming the first bad one)."""
    for name, x in (("a", a), ("b", b)):
        _checks.check_floating(name, x)
        if x.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, D), got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError("a: the batch is empty (B = 0)")
    if b.dtype != a.dtype:
        raise ValueError(f"b: expected a's dtype {a.dtype}, got {b.dtype}")
    _checks.check_same_device(a=a, b=b)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            raise ValueError("temperature: expected a number or a 0-dim tensor, got shape "
                             f"{tuple(temperature.shape)}")
    elif isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature: expected a number or a tensor, got "
                        f"{type(temperature).__name__}")
    elif not (0.0 < temperature < float("inf")):
        raise ValueError(f"temperature: must be finite and > 0, got {temperature}")
    if a.device.type == "cpu":  # a host check (CUDA: no synchronisation; NaN rows instead)
        for name, x in (("a", a), ("b", b)):
            if not bool(torch.isfinite(x.detach()).all()):
                raise ValueError(f"{name}: features must be finite (found NaN or inf)")
    return ContrastiveCall(a, b, temperature, symmetric, reduction)


def route(call: ContrastiveCall) -> str:
    """One route, ``linear_head``: both directions on the fused linear head
    (:func:`.op.contrastive_rows`), eager or traced."""
    return "linear_head"


def run(call: ContrastiveCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 features), a scalar or ``(B,)``."""
    rows = contrastive_rows(call.a, call.b, call.temperature, call.symmetric)
    if call.reduction == "mean":
        return rows.mean()
    if call.reduction == "sum":
        return rows.sum()
    return rows

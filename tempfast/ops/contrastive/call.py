"""One contrastive-loss call: its arguments checked and normalised once (:func:`normalise`)
and its loss (:func:`run`), on the fused linear head.

With ``s = a @ b.T / T`` (``B x B``, row ``i`` of ``a`` matching row ``i`` of ``b``), the loss
of row ``i`` is ``l_i = CE(s_i, i)`` (``a``'s direction) or, symmetric (CLIP),
``(CE(s_i, i) + CE(s_:,i, i)) / 2`` (the column: ``b``'s direction). ``reduction``: the mean
or sum of ``l_i``, or ``l`` itself (``"none"``, shape ``(B,)``). SimCLR's NT-Xent
(:func:`normalise_nt_xent`, :func:`run_nt_xent`) shares the checks and the reductions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ... import _checks
from ..autograd import reduce_rows
from .op import NtXent, contrastive_rows, nt_xent_chunk_rows

REDUCTIONS = ("mean", "sum", "none")


class ContrastiveCall(NamedTuple):
    """A contrastive call, normalised: ``a`` and ``b`` ``(B, D)``, same dtype and device;
    ``temperature`` a number or a 0-dim tensor."""

    a: Tensor
    b: Tensor
    temperature: float | Tensor
    symmetric: bool
    reduction: str


def normalise(a: Tensor, b: Tensor, temperature: float | Tensor, symmetric: bool,
              reduction: str) -> ContrastiveCall:
    """Check every argument once (a one-line error naming the first bad one)."""
    _check_pair(("a", a), ("b", b), temperature)
    check_options(symmetric, reduction)
    return ContrastiveCall(a, b, temperature, symmetric, reduction)


def check_options(symmetric: bool, reduction: str) -> None:
    """``symmetric`` a bool, ``reduction`` one of :data:`REDUCTIONS` (also checked by
    :class:`tempfast.nn.ContrastiveLoss` when it is built)."""
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
    check_reduction(reduction)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def _check_pair(first: tuple[str, Tensor], second: tuple[str, Tensor],
                temperature: float | Tensor) -> None:
    """The checks both losses share: two ``(B, D)`` feature tensors alike, finite (CPU), a
    batch, the temperature."""
    (na, a), (nb, b) = first, second
    for name, x in (first, second):
        _checks.check_floating(name, x)
        if x.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, D), got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{nb}: expected the shape of {na} {tuple(a.shape)}, got "
                         f"{tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{na}: the batch is empty (B = 0)")
    if b.dtype != a.dtype:
        raise ValueError(f"{nb}: expected {na}'s dtype {a.dtype}, got {b.dtype}")
    _checks.check_same_device(**{na: a, nb: b})
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
        for name, x in (first, second):
            if not bool(torch.isfinite(x.detach()).all()):
                raise ValueError(f"{name}: features must be finite (found NaN or inf)")


class NtXentCall(NamedTuple):
    """An NT-Xent call, normalised: the ``2B`` views ``z = cat(z1, z2)`` ``(2B, D)`` and the
    temperature a tensor (a number made one, without gradient)."""

    z: Tensor
    temperature: Tensor
    reduction: str


def normalise_nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor,
                      reduction: str) -> NtXentCall:
    """Check every argument once (a one-line error naming the first bad one)."""
    _check_pair(("z1", z1), ("z2", z2), temperature)
    check_reduction(reduction)
    if isinstance(temperature, Tensor):
        if temperature.device.type == "cpu":
            _checks.check_temperature_values(temperature.detach())
        t = temperature
    else:
        t = torch.tensor(float(temperature), dtype=_checks.accumulation_dtype(z1.dtype),
                         device=z1.device)
    return NtXentCall(torch.cat([z1, z2]), t, reduction)


def run_nt_xent(call: NtXentCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 views), a scalar or ``(2B,)``."""
    rows = NtXent.apply(call.z, call.temperature, nt_xent_chunk_rows(call.z.shape[0]))
    return reduce_rows(rows, rows.shape[0], call.reduction)


def route(call: ContrastiveCall) -> str:
    """One route, ``linear_head``: both directions on the fused linear head
    (:func:`.op.contrastive_rows`), eager or traced."""
    return "linear_head"


def run(call: ContrastiveCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 features), a scalar or ``(B,)``."""
    rows = contrastive_rows(call.a, call.b, call.temperature, call.symmetric)
    return reduce_rows(rows, rows.shape[0], call.reduction)

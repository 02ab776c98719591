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
import torch.distributed as dist
from torch import Tensor

from ... import _checks
from ..autograd import reduce_rows
from ..class_parallel.call import check_group
from .op import contrastive_loss
from .sharded import Batch, GlobalSum, NtXent, ShardedContrastive, batch_of, chunk_rows

REDUCTIONS = ("mean", "sum", "none")


class ContrastiveCall(NamedTuple):
    """A contrastive call, normalised: ``a`` and ``b`` ``(B, D)`` (this rank's rows with a
    process group), same dtype and device; ``temperature`` a number or a 0-dim tensor."""

    a: Tensor
    b: Tensor
    temperature: float | Tensor
    symmetric: bool
    reduction: str
    process_group: dist.ProcessGroup | None


def normalise(a: Tensor, b: Tensor, temperature: float | Tensor, symmetric: bool,
              reduction: str, process_group=None) -> ContrastiveCall:
    """Check every argument once (a one-line error naming the first bad one)."""
    group = None if process_group is None else check_group(process_group)
    _check_pair(("a", a), ("b", b), temperature, group is not None)
    check_options(symmetric, reduction)
    return ContrastiveCall(a, b, temperature, symmetric, reduction, group)


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
                temperature: float | Tensor, sharded: bool) -> None:
    """The checks both losses share: two ``(B, D)`` feature tensors alike, finite (CPU), a
    batch (``sharded``: this rank's part may be empty), the temperature."""
    (na, a), (nb, b) = first, second
    for name, x in (first, second):
        _checks.check_floating(name, x)
        if x.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, D), got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{nb}: expected the shape of {na} {tuple(a.shape)}, got "
                         f"{tuple(b.shape)}")
    if a.shape[0] == 0 and not sharded:
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
    """An NT-Xent call, normalised: this rank's ``2 B_r`` views ``z = cat(z1, z2)``
    ``(2 B_r, D)``, the temperature a tensor in the accumulation dtype (a number made one,
    without gradient), the batch's layout over the ranks."""

    z: Tensor
    temperature: Tensor
    reduction: str
    batch: Batch


def normalise_nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor,
                      reduction: str, process_group=None) -> NtXentCall:
    """Check every argument once (a one-line error naming the first bad one)."""
    group = None if process_group is None else check_group(process_group)
    _check_pair(("z1", z1), ("z2", z2), temperature, group is not None)
    check_reduction(reduction)
    t = _temperature_tensor(temperature, z1)
    return NtXentCall(torch.cat([z1, z2]), t, reduction,
                      batch_of(group, z1.shape[0], z1.device, "z1"))


def _temperature_tensor(temperature: float | Tensor, like: Tensor) -> Tensor:
    """``temperature`` as a 0-dim tensor in ``like``'s accumulation dtype (differentiable)."""
    cdt = _checks.accumulation_dtype(like.dtype)
    if isinstance(temperature, Tensor):
        if temperature.device.type == "cpu":
            _checks.check_temperature_values(temperature.detach())
        return temperature.to(device=like.device, dtype=cdt)
    return torch.tensor(float(temperature), dtype=cdt, device=like.device)


def run_nt_xent(call: NtXentCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 views), a scalar or this rank's ``(2 B_r,)``."""
    batch = call.batch
    rows = NtXent.apply(call.z, call.temperature, batch,
                        chunk_rows(call.z.shape[0], 2 * batch.size))
    return _reduce(rows, batch, 2 * batch.size, call.reduction)


def _reduce(rows: Tensor, batch: Batch, count: int, reduction: str) -> Tensor:
    """``reduction`` of the global batch's rows, of which this rank holds ``rows``: the same
    value on every rank (one all-reduce), each rank's gradient for its own rows."""
    if reduction == "none" or batch.group is None:
        return reduce_rows(rows, count, reduction)
    total = GlobalSum.apply(rows.sum(), batch)
    return total / count if reduction == "mean" else total


def route(call: ContrastiveCall) -> str:
    """``linear_head`` (one process: both directions on the fused linear head,
    :func:`.op.contrastive_loss`) or ``sharded`` (a process group: :mod:`.sharded`)."""
    return "linear_head" if call.process_group is None else "sharded"


def run(call: ContrastiveCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 features), a scalar or this rank's
    ``(B_r,)``."""
    if call.process_group is None:
        return contrastive_loss(call.a, call.b, call.temperature, call.symmetric,
                                call.reduction)
    batch = batch_of(call.process_group, call.a.shape[0], call.a.device, "a")
    rows = ShardedContrastive.apply(call.a, call.b, _temperature_tensor(call.temperature, call.a),
                                    batch, call.symmetric, chunk_rows(batch.local, batch.size))
    return _reduce(rows, batch, batch.size, call.reduction)

"""The class-parallel route of :mod:`tempfast.ops.cross_entropy` and
:mod:`tempfast.ops.linear_cross_entropy` (their calls with ``process_group=``, normalised by
those ops' ``normalise``, which check the group and ``start`` here once): the ranks' class
layout, the value checks and the autograd Functions.

Routes: ``cross_entropy`` (a :class:`CrossEntropyCall`: logits of this rank's classes) and
``linear_cross_entropy`` (a :class:`LinearCall`: this rank's rows of the classifier).

Each rank passes the logits of its own class range ``[start, start + C_r)`` (ranges in rank
order, any widths), the same rows, the same *global* class indices (or its slice of
probability targets, sharded like the logits), the same temperature and the full ``(C,)``
class weights. The loss, dL/dT and each rank's slice of the logits' gradient equal those of
the unsharded op on the concatenated logits. dL/dT is the whole gradient on every rank (a
replicated temperature needs no further reduction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from ... import _checks
from .op import ClassParallelCrossEntropy, ClassParallelLinearCrossEntropy, CopyToClassParallel
from .shard import shard_layout

if TYPE_CHECKING:
    from ..cross_entropy import CrossEntropyCall
    from ..linear_cross_entropy import LinearCall


def check_group(process_group) -> dist.ProcessGroup:
    """``process_group`` as a ProcessGroup (``group.WORLD`` resolved), or a one-line error."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group: torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    if process_group is dist.group.WORLD:
        return dist.distributed_c10d._get_default_group()
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group: expected a torch.distributed ProcessGroup, got "
                        f"{type(process_group).__name__}")
    return process_group


def check_start(start: int | None) -> int | None:
    """This rank's first class, or a one-line error (checked against the ranks' widths when
    the layout is known)."""
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)
                              or start < 0):
        raise ValueError(f"start: expected an int >= 0 (the first class of this rank), got "
                         f"{start!r}")
    return start


def _check_values(t: Tensor, target: Tensor | None, num_classes: int, ignore_index: int) -> None:
    """Host tensors: bad temperatures and class indices raise (on CUDA they give NaN rows)."""
    _checks.check_temperature_values(t.detach())
    if target is not None:
        _checks.check_class_indices(target, num_classes, ignore_index)


def route(call: CrossEntropyCall | LinearCall) -> str:
    """The route of a class-parallel call (see the module docstring)."""
    return "linear_cross_entropy" if hasattr(call, "hidden") else "cross_entropy"


def run(call: CrossEntropyCall | LinearCall) -> Tensor | tuple[Tensor, Tensor]:
    """The loss of a class-parallel call (``call.process_group`` set)."""
    if route(call) == "linear_cross_entropy":
        return _linear_cross_entropy(call)
    return _cross_entropy(call)


def _cross_entropy(call: CrossEntropyCall) -> Tensor:
    """The class-parallel cross-entropy of a normalised call (``call.process_group`` set).

    Per forward: one all-reduce of the per-row max and one of a ``(4, N)`` stack of per-row
    sums; the gradient is computed in the same pass; no logits are gathered and nothing waits
    on the device."""
    group = call.process_group
    logits = call.logits
    layout = shard_layout(group, logits.shape[1], logits.device, call.start)
    _checks.check_weight(call.weight, layout.num_classes)
    t = _checks.temperature_tensor(call.temperature, call.t_value, logits).reshape(-1)
    _check_values(t, None if call.probs else call.target, layout.num_classes, call.ignore_index)
    loss = ClassParallelCrossEntropy.apply(logits, t, call, layout, group)
    lse = None
    if call.return_z_loss:
        loss, lse = loss
    loss = loss.reshape(call.rows_shape) if call.reduction == "none" else loss
    if lse is None:
        return loss
    from ..cross_entropy.call import z_term

    return loss, z_term(lse, call)


def _linear_cross_entropy(call: LinearCall) -> Tensor:
    """The class-parallel linear head of a normalised call (``call.process_group`` set):
    ``weight`` ``(C_r, H)`` and ``bias`` ``(C_r,)`` are this rank's rows of the classifier,
    ``hidden`` ``(N, H)`` and ``target`` (global indices) the same on every rank.

    Gradients: ``weight`` and ``bias`` get this rank's slice; ``hidden`` gets the whole gradient
    on every rank (summed over the ranks by one all-reduce). With ``mean`` or ``sum`` the
    logits are made ``chunk`` rows at a time, each chunk with its own two all-reduces, and
    every gradient is formed in the forward pass; ``none`` makes the full ``(N, C_r)`` logits
    and differentiates through the class-parallel cross-entropy."""
    from ..cross_entropy.call import CrossEntropyCall

    group, t = call.process_group, call.temperature
    layout = shard_layout(group, call.weight.shape[0], call.hidden.device, call.start)
    _check_values(t, call.target, layout.num_classes, call.ignore_index)
    if call.reduction == "none":
        logits = torch.nn.functional.linear(CopyToClassParallel.apply(call.hidden, group),
                                            call.weight, call.bias)
        ce_call = CrossEntropyCall(
            logits=logits, target=call.target, temperature=t, t_value=0.0, weight=None,
            ignore_index=call.ignore_index, label_smoothing=call.label_smoothing,
            reduction="none", rows_shape=call.rows_shape, inplace_backward=False,
            process_group=group, start=call.start, softcap=call.softcap, z_loss=call.z_loss)
        loss = ClassParallelCrossEntropy.apply(logits, t, ce_call, layout, group)
        return loss.reshape(call.rows_shape)
    return ClassParallelLinearCrossEntropy.apply(call.hidden, call.weight, call.bias, t, call,
                                                 layout, group)


def argmax(values: Tensor, local_index: Tensor, process_group, local_classes: int,
           start: int | None = None) -> Tensor:
    """Global argmax over the ranks' classes from each rank's per-row ``(max value, index of
    it among this rank's classes)``: the lowest global index among the maxima, as
    ``torch.argmax`` picks. Two all-reduces."""
    group = check_group(process_group)
    layout = shard_layout(group, local_classes, values.device, check_start(start))
    top = values.float()
    best = top.clone()
    dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
    index = torch.where(top == best, local_index + layout.start,
                        torch.full_like(local_index, layout.num_classes))
    dist.all_reduce(index, op=dist.ReduceOp.MIN, group=group)
    return index

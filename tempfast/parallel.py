"""Class-parallel cross-entropy: :func:`tempfast.cross_entropy` and
:func:`tempfast.linear_cross_entropy` with ``process_group=`` (the classes split across the
ranks of a ``torch.distributed`` group; math and communication in
:mod:`tempfast.ops.class_parallel`).

Each rank passes the logits of its own class range ``[start, start + C_r)`` (ranges in rank
order, any widths), the same rows, the same *global* class indices (or its slice of
probability targets, sharded like the logits), the same temperature and the full ``(C,)``
class weights. The loss, dL/dT and each rank's slice of the logits' gradient equal those of
the unsharded op on the concatenated logits. dL/dT is the whole gradient on every rank (a
replicated temperature needs no further reduction).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks
from .ops.class_parallel import (
    ClassParallelCrossEntropy,
    ClassParallelLinearCrossEntropy,
    CopyToClassParallel,
    shard_layout,
)
from .ops.linear_cross_entropy import default_chunk_rows


def _group(process_group) -> dist.ProcessGroup:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group: torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    if process_group is dist.group.WORLD:
        return dist.distributed_c10d._get_default_group()
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group: expected a torch.distributed ProcessGroup, got "
                        f"{type(process_group).__name__}")
    return process_group


def _start(start: int | None) -> int | None:
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


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    process_group,
    start: int | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    class_dim: int | None = None,
) -> Tensor:
    """Class-parallel ``F.cross_entropy(logits / T, target, ...)`` (see the module docstring).

    Args:
        logits: this rank's classes: ``(N, C_r)``, ``(C_r,)`` or ``(N, C_r, d1, ...)`` (torch's
            layout), or class-last with ``class_dim=-1``.
        target: global class indices (the logits' shape without the class dimension, the same
            on every rank), or this rank's slice of class probabilities (the logits' shape).
        temperature: as in :func:`tempfast.cross_entropy` (a number, a 0-dim tensor or one
            value per row; the same on every rank).
        process_group: the ranks that share the classes (``torch.distributed.group.WORLD`` for
            all of them).
        start: this rank's first class; optional: learned from the ranks' widths, which are
            exchanged once per group and width and cached (a given ``start`` is checked
            against them).
        weight: ``(C,)`` class weights, all classes, on every rank.
        ignore_index, reduction, label_smoothing, class_dim: as in
            :func:`tempfast.cross_entropy`.

    Per forward: one all-reduce of the per-row max and one of a ``(4, N)`` stack of per-row
    sums; the gradient is computed in the same pass; no logits are gathered and nothing waits
    on the device.
    """
    group = _group(process_group)
    start = _start(start)
    _checks.check_floating("logits", logits)
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (N, C_r), (C_r,) or (N, C_r, d1, ...), got a "
                         "0-dim tensor")
    cdim = _checks.class_dim_of(class_dim, logits.dim())
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    probs = target.dtype.is_floating_point
    rows_shape = logits.shape[:cdim] + logits.shape[cdim + 1:]
    if probs:
        if target.shape != logits.shape:
            raise ValueError(f"target: probabilities must have the logits' shape "
                             f"{tuple(logits.shape)} (this rank's classes), got "
                             f"{tuple(target.shape)}")
        if ignore_index != -100:
            raise ValueError("ignore_index: not supported with probability targets (as in torch)")
        if target.requires_grad and torch.is_grad_enabled():
            raise ValueError("target: probability targets that require grad are not supported "
                             "with process_group; pass target.detach()")
    else:
        if target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target: class indices must be an integer tensor, got "
                            f"{target.dtype}")
        if target.shape != rows_shape:
            raise ValueError(f"target: expected shape {tuple(rows_shape)} (class indices: the "
                             f"logits' without the class dimension), got {tuple(target.shape)}")
    _checks.check_reduction(reduction)
    eps = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    _checks.check_same_device(logits=logits, target=target, weight=weight)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight: the class weights cannot be differentiated (as in torch); "
                         "pass weight.detach()")
    layout = shard_layout(group, logits.shape[cdim], logits.device, start)
    _checks.check_weight(weight, layout.num_classes)

    if cdim != logits.dim() - 1:
        logits = logits.movedim(cdim, -1)
        if probs:
            target = target.movedim(cdim, -1)
    width, n_rows = logits.shape[-1], math.prod(rows_shape)
    logits_2d = logits.reshape(n_rows, width)
    target_2d = target.reshape(n_rows, width) if probs else target.reshape(n_rows).long()
    t = _checks.temperature_rows(temperature, rows_shape, logits.device,
                                 _checks.accumulation_dtype(logits.dtype))
    _check_values(t, None if probs else target_2d, layout.num_classes, ignore_index)
    compute_dt = torch.is_grad_enabled() and t.requires_grad
    loss = ClassParallelCrossEntropy.apply(logits_2d, target_2d, t, weight, layout, group,
                                           ignore_index, eps, reduction, probs, compute_dt)
    return loss.reshape(rows_shape) if reduction == "none" else loss


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    *,
    process_group,
    start: int | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Class-parallel ``F.cross_entropy((hidden @ weight.T + bias) / T, target, ...)``:
    ``weight`` ``(C_r, H)`` and ``bias`` ``(C_r,)`` are this rank's rows of the classifier,
    ``hidden`` ``(*, H)`` and ``target`` ``(*)`` (global indices) the same on every rank.

    Gradients: ``weight`` and ``bias`` get this rank's slice; ``hidden`` gets the whole
    gradient on every rank (summed over the ranks by one all-reduce). With ``mean`` or
    ``sum`` the logits are made ``chunk_size`` rows at a time (default: about 2^26 logits per
    chunk), each chunk with its own two all-reduces, and every gradient is formed in the
    forward pass; ``none`` makes the full ``(N, C_r)`` logits and differentiates through them.
    """
    group = _group(process_group)
    start = _start(start)
    eps, ignore_index = _checks.check_linear_head(
        hidden, weight, bias, target, reduction, label_smoothing, ignore_index, chunk_size,
        classes="C_r", allow_no_classes=True)
    rows_shape = hidden.shape[:-1]
    layout = shard_layout(group, weight.shape[0], hidden.device, start)
    t = _checks.temperature_rows(temperature, rows_shape, hidden.device,
                                 _checks.accumulation_dtype(hidden.dtype))
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    target_1d = target.reshape(-1).long()
    _check_values(t, target_1d, layout.num_classes, ignore_index)
    if reduction == "none":
        logits = torch.nn.functional.linear(CopyToClassParallel.apply(hidden_2d, group),
                                            weight, bias)
        return cross_entropy(logits, target_1d, t if t.shape[0] != 1 else t.reshape(()),
                             process_group=group, ignore_index=ignore_index,
                             reduction="none", label_smoothing=eps,
                             class_dim=-1).reshape(rows_shape)
    n_rows = target_1d.numel()
    chunk = chunk_size or default_chunk_rows(n_rows, weight.shape[0])
    compute_dt = torch.is_grad_enabled() and t.requires_grad
    return ClassParallelLinearCrossEntropy.apply(hidden_2d, weight, bias, target_1d, t, layout,
                                                 group, ignore_index, eps, reduction, chunk,
                                                 compute_dt)


def argmax(values: Tensor, local_index: Tensor, process_group, local_classes: int,
           start: int | None = None) -> Tensor:
    """Global argmax over the ranks' classes from each rank's per-row ``(max value, index of
    it among this rank's classes)``: the lowest global index among the maxima, as
    ``torch.argmax`` picks. Two all-reduces."""
    group = _group(process_group)
    layout = shard_layout(group, local_classes, values.device, _start(start))
    top = values.float()
    best = top.clone()
    dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
    index = torch.where(top == best, local_index + layout.start,
                        torch.full_like(local_index, layout.num_classes))
    dist.all_reduce(index, op=dist.ReduceOp.MIN, group=group)
    return index

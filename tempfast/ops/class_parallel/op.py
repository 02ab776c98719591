"""The class-parallel ops' autograd: :class:`ClassParallelCrossEntropy` (logits of this rank's
classes), :class:`ClassParallelLinearCrossEntropy` (this rank's rows of a classifier, in row
chunks) and :class:`CopyToClassParallel` (features entering a class-sharded layer). The math
and the communication are in :mod:`.shard`.

The gradients are computed in the forward pass at an upstream gradient of 1, stored without
the mean's ``1 / divisor`` (which would push fp16 values under their range) and scaled by
``g / divisor`` in the backward pass: no communication there, except the features' all-reduce
of :class:`CopyToClassParallel`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from ..._checks import accumulation_dtype
from ..chunked import capped
from ..cross_entropy.torch_path import mean_divisor, z_loss_scale
from .shard import Shard, ShardLayout, bad_rows, forward

if TYPE_CHECKING:
    from ..cross_entropy import CrossEntropyCall
    from ..linear_cross_entropy import LinearCall


class ClassParallelCrossEntropy(torch.autograd.Function):
    """Class-parallel cross-entropy of ``(R, C_r)`` logits: ``t`` the temperature ``(1,)`` or
    ``(R,)``; target, weight, options from ``call`` (:class:`.CrossEntropyCall`); ``layout``
    this rank's classes."""

    @staticmethod
    def forward(ctx, logits: Tensor, t: Tensor, call: CrossEntropyCall, layout: ShardLayout,
                group: dist.ProcessGroup) -> Tensor:
        acc = accumulation_dtype(logits.dtype)
        t_col = t.to(acc)[:, None]
        a, slope = capped(logits.to(acc), call.softcap)
        factor = torch.ones((), dtype=acc, device=logits.device)
        z_coef = call.z_loss
        if call.reduction == "mean":
            divisor = mean_divisor(call.target, call.weight, call.ignore_index,
                                   layout.num_classes, acc)
            factor = 1.0 / divisor
            z_scale = z_loss_scale(call.target, call.weight, call.ignore_index, divisor,
                                   "mean") if call.z_loss else None
            z_coef = z_coef * z_scale if z_scale is not None else z_coef
        shard = Shard(a / t_col, t_col, layout, call.probs, call.target, call.weight,
                      call.ignore_index, call.label_smoothing, slope, z_coef)
        loss, dt, grad, counted, lse = forward(shard, group, ctx.needs_input_grad[0])
        nan = torch.full((), float("nan"), dtype=acc, device=logits.device)
        bad = bad_rows(shard, counted)
        loss = torch.where(bad, nan, loss)
        out = loss if call.reduction == "none" else loss.sum() * factor
        if grad is not None:
            grad = torch.where(bad[:, None], nan, grad).to(logits.dtype)
        dt = torch.where(bad, nan, dt) * factor if ctx.needs_input_grad[1] else None
        ctx.reduction, ctx.scalar_t = call.reduction, t.shape[0] == 1
        ctx.save_for_backward(grad, dt, factor)
        if not call.return_z_loss:
            return out
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, g: Tensor, *_g_lse):
        grad, dt, factor = ctx.saved_tensors
        scale = (g * factor)[:, None] if ctx.reduction == "none" else g * factor
        grad_logits = None if grad is None else (grad.to(scale.dtype) * scale).to(grad.dtype)
        grad_t = None
        if dt is not None:
            rows = dt * g  # dt holds the mean's factor; g is (R,) for "none", else 0-dim
            grad_t = rows.sum().reshape(1) if ctx.scalar_t else rows
        return grad_logits, grad_t, None, None, None


class CopyToClassParallel(torch.autograd.Function):
    """Identity forward; the backward pass sums the gradient over the group's ranks (the
    features entering a class-sharded linear layer feed every rank's classes)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


class ClassParallelLinearCrossEntropy(torch.autograd.Function):
    """Class-parallel cross-entropy of ``hidden @ weight_r.T + bias_r`` for a rank's class
    slice of the weight, by chunks of rows (``call.chunk``): per chunk the two all-reduces of
    :class:`ClassParallelCrossEntropy` and the gradients of the chunk's logits folded into the
    hidden, weight and bias gradients at once; after the chunks one all-reduce sums the hidden
    gradient over the ranks. The backward pass only scales (reductions ``mean`` and ``sum``).
    ``t``: the temperature ``(1,)`` or ``(R,)``; target and options from ``call``
    (:class:`.LinearCall`)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, t: Tensor,
                call: LinearCall, layout: ShardLayout, group: dist.ProcessGroup) -> Tensor:
        acc = accumulation_dtype(hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        want = need_h or need_w or need_b
        n, chunk, target = hidden.shape[0], call.chunk, call.target
        loss = torch.empty(n, dtype=acc, device=hidden.device)
        dt = torch.empty(n, dtype=acc, device=hidden.device) if ctx.needs_input_grad[3] else None
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            h = hidden[lo:hi]
            z = torch.nn.functional.linear(h, weight, bias)
            t_col = (t[lo:hi] if t.shape[0] != 1 else t).to(acc)[:, None]
            a, slope = capped(z.to(acc), call.softcap)
            shard = Shard(a / t_col, t_col, layout, False, target[lo:hi], None,
                          call.ignore_index, call.label_smoothing, slope, call.z_loss)
            rows, dt_rows, gz, counted, _ = forward(shard, group, want)
            bad = bad_rows(shard, counted)
            nan = torch.full((), float("nan"), dtype=acc, device=hidden.device)
            loss[lo:hi] = torch.where(bad, nan, rows)
            if dt is not None:
                dt[lo:hi] = torch.where(bad, nan, dt_rows)
            if gz is None:
                continue
            gz = torch.where(bad[:, None], nan, gz)
            if need_h:
                grad_h[lo:hi] = gz.to(hidden.dtype) @ weight
            if need_w:
                grad_w += gz.t() @ h.to(acc)
            if need_b:
                grad_b += gz.sum(dim=0)
        if need_h:
            dist.all_reduce(grad_h, op=dist.ReduceOp.SUM, group=group)
        factor = torch.ones((), dtype=acc, device=hidden.device)
        if call.reduction == "mean":
            factor = 1.0 / mean_divisor(target, None, call.ignore_index, layout.num_classes, acc)
        ctx.scalar_t = t.shape[0] == 1
        ctx.save_for_backward(grad_h, grad_w, grad_b, None if dt is None else dt * factor,
                              factor)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss.sum() * factor

    @staticmethod
    def backward(ctx, g: Tensor):
        grad_h, grad_w, grad_b, dt, factor = ctx.saved_tensors
        scale = g * factor
        h_dtype, w_dtype = ctx.dtypes
        out_h = None if grad_h is None else (grad_h.to(scale.dtype) * scale).to(h_dtype)
        out_w = None if grad_w is None else (grad_w * scale).to(w_dtype)
        out_b = None if grad_b is None else (grad_b * scale).to(w_dtype)
        out_t = None
        if dt is not None:
            rows = dt * g
            out_t = rows.sum().reshape(1) if ctx.scalar_t else rows
        return out_h, out_w, out_b, out_t, None, None, None

"""``linear_token_logprobs`` with the vocabulary split over a process group (see
:mod:`.linear` for the combination of the shards' statistics).

Per row, rank ``r`` holds the scaled logits ``x_j = a_j / T`` of its vocabulary block, their
log-sum-exp ``lse_r`` and entropy ``H_r``; with ``lse = logsumexp_r lse_r`` and
``w_r = exp(lse_r - lse)`` the global distribution is ``p_j = w_r p^r_j`` on block ``r``, and

    logp = x_y - lse                 (x_y from the rank that holds the target)
    H    = sum_r w_r (H_r + lse - lse_r)

Backward: ``dL/dx_j = p_j (-g_lp - g_H (lp_j + H)) + g_lp [j = y]`` is the token kernels'
backward on the block with ``lse_r``, ``H' = H + lse_r - lse`` (so that ``lp^r_j + H' = lp_j
+ H``), ``g_H' = w_r g_H``, ``g_lp' = g_lp [r holds y]`` and ``g_lse' = g_lp' - w_r g_lp``.
``dL/dT = -(1/T) sum_j dL/dx_j x_j`` is summed over the ranks from each block's share, which
the kernels' sums give: ``sum p^r x = S1 + lse_r`` and ``sum p^r (lp^r + H') x = S2 + (lse_r -
H')(S1 + H')``. Collectives: one all-gather of ``(3, N)`` per forward, one all-reduce of the
hidden gradient (and one of dL/dT) per backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..._checks import accumulation_dtype
from ..class_parallel.shard import shard_layout
from .linear import backward_grads, forward_stats
from .op import _dt_of, check_values

LOCAL_IGNORE = -1  # the local index of an ignored row (never a valid local index)


def _local_targets(target: Tensor, ignore_index: int, start: int,
                   width: int) -> tuple[Tensor, Tensor]:
    """``(y_local, owner)``: local indices (0 where another rank holds the target, so that
    the block's statistics are still computed; ``LOCAL_IGNORE`` for ignored rows) and whether
    this rank holds the target."""
    ignored = target == ignore_index
    owner = ~ignored & (target >= start) & (target < start + width)
    y_local = torch.where(ignored, LOCAL_IGNORE, torch.where(owner, target - start, 0))
    return y_local, owner


class ShardedTokenStats(torch.autograd.Function):
    """``(logp, H)`` of a vocabulary-sharded head (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, temperature, softcap, ignore_index, entropy,
                chunk, group):
        layout = shard_layout(group, weight.shape[0], hidden.device)
        check_values(layout.num_classes, target, temperature, ignore_index)
        y_local, owner = _local_targets(target, ignore_index, layout.start, layout.local)
        n_rows = hidden.shape[0]
        acc = accumulation_dtype(hidden.dtype)
        if layout.local:
            logp_r, h_r, lse_r = forward_stats(hidden, weight, bias, y_local, temperature, 0.0,
                                               softcap, LOCAL_IGNORE, entropy, chunk)
        else:  # an empty block: nothing of the distribution
            logp_r = torch.zeros(n_rows, dtype=acc, device=hidden.device)
            lse_r = torch.full((n_rows,), float("-inf"), dtype=acc, device=hidden.device)
            h_r = torch.zeros(n_rows if entropy else 0, dtype=acc, device=hidden.device)
        x_y = torch.where(owner, logp_r + lse_r, 0.0)
        mine = torch.stack([lse_r, h_r if entropy else torch.zeros_like(lse_r), x_y])
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, mine.contiguous(), group=group)
        lse_all, h_all, x_all = torch.stack(parts).unbind(1)  # (ranks, N) each
        lse = torch.logsumexp(lse_all, 0)
        counted = target != ignore_index
        logp = torch.where(counted, (x_all.sum(0) - lse).clamp(max=0.0), 0.0)
        w_all = torch.exp(lse_all - lse)
        h = torch.zeros(0, dtype=acc, device=hidden.device)
        if entropy:
            share = torch.where(w_all > 0, w_all * (h_all + lse - lse_all), 0.0)
            h = torch.where(counted, share.sum(0), 0.0)
        w_r = torch.where(counted, torch.exp(lse_r - lse), 0.0)
        ctx.set_materialize_grads(False)
        ctx.args = (softcap, chunk, group, layout.local)
        ctx.save_for_backward(hidden, weight, bias, y_local, owner, temperature, lse_r, lse,
                              h if entropy else None, w_r, x_y)
        return logp, h

    @staticmethod
    def backward(ctx, g_lp, g_h):
        (hidden, weight, bias, y_local, owner, temperature, lse_r, lse, h, w_r,
         x_y) = ctx.saved_tensors
        softcap, chunk, group, width = ctx.args
        need_h, need_w, need_b, _, need_t = ctx.needs_input_grad[:5]
        acc = lse.dtype
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(acc)
        mine_lp = torch.where(owner, g_lp, 0.0)
        g_lse = mine_lp - w_r * g_lp
        h_block = g_h_block = None
        if g_h is not None and h is not None:
            h_block = torch.where(w_r > 0, h + lse_r - lse, 0.0)
            g_h_block = w_r * g_h.to(acc)
        if width:
            dh, dw, db, sums = backward_grads(
                hidden, weight, bias, y_local, temperature, 0.0, softcap, LOCAL_IGNORE,
                h_block if h_block is not None else lse_r, lse_r, (mine_lp, g_h_block, g_lse),
                [need_h, need_w, need_b], need_t, chunk)
        else:
            dh = torch.zeros_like(hidden) if need_h else None
            dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) \
                if need_b else None
            sums = torch.zeros((lse.shape[0], 2), dtype=acc, device=lse.device)
        if need_h:
            dist.all_reduce(dh, group=group)
        dt = None
        if need_t:
            s1, s2 = sums[:, 0], sums[:, 1]
            share = -w_r * g_lp * torch.where(w_r > 0, s1 + lse_r, 0.0) + mine_lp * x_y
            if g_h_block is not None:
                cross = s2 + (lse_r - h_block) * (s1 + h_block)
                share = share - g_h_block * torch.where(w_r > 0, cross, 0.0)
            dist.all_reduce(share, group=group)
            t = temperature.to(acc)
            dt = _dt_of(-share / t, temperature)
        dw = dw.to(weight.dtype) if dw is not None else None
        db = db.to(bias.dtype) if db is not None else None
        return dh, dw, db, None, dt, None, None, None, None, None


def run_sharded(call, entropy: bool) -> tuple[Tensor, Tensor]:
    """``(logp, H)`` of a normalised, vocabulary-sharded call."""
    return ShardedTokenStats.apply(call.hidden, call.weight, call.bias, call.target,
                                   call.temperature, call.softcap, call.ignore_index, entropy,
                                   call.chunk, call.process_group)

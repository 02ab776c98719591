"""Contrastive losses over a batch split across the ranks of a ``torch.distributed`` group
(data parallelism), and SimCLR's NT-Xent on one process (a group of one).

Rank ``r`` holds rows ``[o_r, o_r + B_r)`` of the global batch (any ``B_r >= 0``, in rank
order). The loss is the global batch's; each rank computes its own rows' losses against the
whole batch and the gradients of its own rows, so no rank holds the global ``B x B``
similarities: at most ``chunk x B`` of them.

Communication: one all-gather of each feature tensor in the forward pass (the "other side" of
the similarities), one all-gather of the per-row log-sum-exps (``B`` numbers), and in the
backward pass one all-gather of the per-row upstream gradients and one all-reduce of ``dL/dT``.
The cross terms of the gradient (row ``j`` of ``b`` gets ``sum_i dL/ds_ij a_i`` from rows ``i``
held elsewhere) are computed by the rank holding ``j`` from its own block of the similarities
and the gathered log-sum-exps, so no feature gradient is ever reduced.

CLIP (:class:`ShardedContrastive`), with ``s_ij = a_i . b_j / T``, ``P_ij = softmax_j s_ij``,
``Q_ij = softmax_i s_ij`` (columns), weights ``w_a = 1`` or ``1/2``, ``w_b = 1/2`` when
symmetric (else 0) and row upstream gradients ``g``::

    dL/ds_ij = w_a g_i (P_ij - [i = j]) + w_b g_j (Q_ij - [i = j])
    dL/da_i  = sum_j dL/ds_ij b_j / T      (rank of i: its row block a_r @ B.T)
    dL/db_j  = sum_i dL/ds_ij a_i / T      (rank of j: its column block b_r @ A.T)
    dL/dT    = -sum_ij dL/ds_ij s_ij / T   (each rank its row block; all-reduced)

NT-Xent (:class:`NtXent`): the ``2B`` views ``Z = [z1; z2]`` (global order: all first views,
then all second views), ``s = Z Z.T / T`` with the diagonal excluded, ``P`` its row softmax
and ``pos(i) = i +- B``. ``s`` is symmetric, so one row block per rank serves both terms::

    dL/ds_ij = g_i (P_ij - [j = pos(i)])
    dL/dz_i  = sum_j (dL/ds_ij + dL/ds_ji) z_j / T,   dL/ds_ji = g_j (P_ji - [i = pos(j)])
    dL/dT    = -sum_ij dL/ds_ij s_ij / T          (row i's own term only; all-reduced)

where ``P_ji = exp(s_ij - lse_j)`` comes from the gathered log-sum-exps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..class_parallel.shard import rank_counts
from ..linear_cross_entropy import op as linear_op


@dataclass(frozen=True)
class Batch:
    """Where this rank's rows lie in the global batch: ``[start, start + widths[rank])`` of
    ``size``; ``group`` None for one process."""

    group: dist.ProcessGroup | None
    start: int
    size: int
    widths: tuple[int, ...]
    rank: int

    @property
    def local(self) -> int:
        return self.widths[self.rank]


def batch_of(group: dist.ProcessGroup | None, rows: int, device: torch.device,
             name: str) -> Batch:
    """The batch layout: the ranks' row counts from one all-gather, on every call (a last
    batch may be split differently; the counts reach the host, a synchronisation with the
    device on NCCL). One process: all rows."""
    if group is None:
        return Batch(None, 0, rows, (rows,), 0)
    widths = rank_counts(group, rows, device)
    if sum(widths) == 0:
        raise ValueError(f"{name}: the batch is empty on every rank of the process group")
    rank = dist.get_rank(group)
    return Batch(group, sum(widths[:rank]), sum(widths), widths, rank)


def gather_rows(x: Tensor, batch: Batch) -> Tensor:
    """The ranks' ``x`` (``(B_r, *)`` each) stacked in rank order: ``(B, *)``; uneven row
    counts padded to the largest for the all-gather. One process: ``x`` itself."""
    if batch.group is None:
        return x
    most = max(batch.widths)
    padded = x.new_zeros((most, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in batch.widths]
    dist.all_gather(parts, padded.contiguous(), group=batch.group)
    return torch.cat([p[:w] for p, w in zip(parts, batch.widths, strict=True)])


def sum_over_ranks(x: Tensor, batch: Batch) -> Tensor:
    """``x`` summed over the ranks (in place; one process: ``x``)."""
    if batch.group is not None:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=batch.group)
    return x


class GlobalSum(torch.autograd.Function):
    """The sum of ``x`` over the ranks; each rank's gradient is the upstream gradient itself
    (every rank holds the same global value and differentiates it once)."""

    @staticmethod
    def forward(ctx, x: Tensor, batch: Batch) -> Tensor:
        return sum_over_ranks(x.clone(), batch)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


def _fp32_products(x: Tensor, cdt: torch.dtype) -> bool:
    """Whether products of 16-bit ``x`` can run on the tensor cores with a ``cdt`` (fp32)
    result (cuBLAS's ``out_dtype``: CUDA), rather than on copies in ``cdt``."""
    return (x.dtype in (torch.float16, torch.bfloat16) and cdt == torch.float32
            and linear_op.gemm_accumulates_in_fp32(x.device))


def _operand(x: Tensor, cdt: torch.dtype) -> Tensor:
    """``x`` as the products take it: its own 16-bit dtype where :func:`_fp32_products`,
    else converted to ``cdt`` once."""
    return x if _fp32_products(x, cdt) else x.to(cdt)


def _product(x: Tensor, y: Tensor, cdt: torch.dtype) -> Tensor:
    """``x @ y`` in ``cdt``: 16-bit operands multiplied on the tensor cores with an fp32
    result, else a product in ``cdt`` (the operands already are)."""
    return torch.mm(x, y, out_dtype=cdt) if x.dtype != cdt else x @ y


def _chunks(n: int, step: int):
    for r0 in range(0, n, step):
        yield r0, min(r0 + step, n)


def _softmax_grad(s: Tensor, lse: Tensor, g: Tensor, hot: Tensor) -> Tensor:
    """``g (exp(s - lse) - onehot)``: ``s (R, K)``, ``lse`` and ``g`` broadcastable to it,
    ``hot`` the column of each row's 1 ``(R,)``."""
    ds = torch.exp(s - lse)
    ds[torch.arange(s.shape[0], device=s.device), hot] -= 1.0
    return ds.mul_(g)


class ShardedContrastive(torch.autograd.Function):
    """CLIP's per-row losses of this rank's rows ``(B_r,)``: ``a``'s direction, or the mean of
    both directions when ``symmetric``, over the global batch (module docstring)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, temperature: Tensor, batch: Batch, symmetric: bool,
                step: int) -> Tensor:
        cdt = temperature.dtype
        ac, bc, t = _operand(a, cdt), _operand(b, cdt), temperature
        a_all, b_all = gather_rows(ac, batch), gather_rows(bc, batch)
        own = torch.arange(batch.start, batch.start + batch.local, device=a.device)
        lse_a, loss = _direction(ac, b_all, t, own, step)
        if symmetric:
            lse_b, loss_b = _direction(bc, a_all, t, own, step)
            loss = (loss + loss_b) * 0.5
            lse_b_all = gather_rows(lse_b, batch)
        else:
            lse_b_all = None
        ctx.save_for_backward(a, b, a_all, b_all, temperature, gather_rows(lse_a, batch),
                              lse_b_all)
        ctx.options = (batch, symmetric, step)
        return loss

    @staticmethod
    def backward(ctx, g_rows: Tensor):
        a, b, a_all, b_all, t, lse_a, lse_b = ctx.saved_tensors
        batch, symmetric, step = ctx.options
        cdt = t.dtype
        ac, bc = _operand(a, cdt), _operand(b, cdt)
        g_all = gather_rows(g_rows.to(cdt).contiguous(), batch)
        w_a = 0.5 if symmetric else 1.0
        g_a, g_b = g_all * w_a, g_all * 0.5
        lo = batch.start
        da, db = (torch.empty(x.shape, dtype=cdt, device=x.device) for x in (a, b))
        dt = torch.zeros((), dtype=cdt, device=a.device)
        for r0, r1 in _chunks(batch.local, step):
            hot = torch.arange(lo + r0, lo + r1, device=a.device)
            s = _product(ac[r0:r1], b_all.T, cdt) / t      # s_ij, i own rows, all j
            ds = _softmax_grad(s, lse_a[hot, None], g_a[hot, None], hot)
            if symmetric:
                ds += _softmax_grad(s, lse_b[None, :], g_b[None, :], hot)
            da[r0:r1] = _product(ds.to(b_all.dtype), b_all, cdt) / t
            dt -= (ds * s).sum() / t
            s = _product(bc[r0:r1], a_all.T, cdt) / t      # s_ij for own columns j, all i
            ds = _softmax_grad(s, lse_a[None, :], g_a[None, :], hot)
            if symmetric:
                ds += _softmax_grad(s, lse_b[hot, None], g_b[hot, None], hot)
            db[r0:r1] = _product(ds.to(a_all.dtype), a_all, cdt) / t
        grad_t = sum_over_ranks(dt, batch) if ctx.needs_input_grad[2] else None
        return da.to(a.dtype), db.to(b.dtype), grad_t, None, None, None


def _direction(x: Tensor, y_all: Tensor, t: Tensor, own: Tensor,
               step: int) -> tuple[Tensor, Tensor]:
    """``(lse, loss)`` of the rows of ``x`` against all of ``y_all``: ``lse_i =
    logsumexp_j x_i . y_j / T``, ``loss_i = lse_i - x_i . y_own(i) / T``."""
    lse = torch.empty(x.shape[0], dtype=t.dtype, device=x.device)
    loss = torch.empty_like(lse)
    for r0, r1 in _chunks(x.shape[0], step):
        s = _product(x[r0:r1], y_all.T, t.dtype) / t
        lse[r0:r1] = torch.logsumexp(s, 1)
        loss[r0:r1] = lse[r0:r1] - s[torch.arange(r1 - r0, device=x.device), own[r0:r1]]
    return lse, loss


class NtXent(torch.autograd.Function):
    """SimCLR's NT-Xent per view of this rank: ``z = [z1_r; z2_r]`` ``(2 B_r, D)``, its losses
    ``(2 B_r,)`` in the same order, over the global ``2B`` views (module docstring)."""

    @staticmethod
    def forward(ctx, z: Tensor, temperature: Tensor, batch: Batch, step: int) -> Tensor:
        cdt = temperature.dtype
        zc, t = _operand(z, cdt), temperature
        z_all, own = _views(zc, batch)
        n = z_all.shape[0]
        rows = torch.empty(zc.shape[0], dtype=cdt, device=z.device)
        lse = torch.empty_like(rows)
        for r0, r1 in _chunks(zc.shape[0], step):
            s = _similarities(zc[r0:r1], z_all, t, own[r0:r1])
            lse[r0:r1] = torch.logsumexp(s, 1)
            pick = torch.arange(r1 - r0, device=z.device), _positive(own[r0:r1], n)
            rows[r0:r1] = lse[r0:r1] - s[pick]
        ctx.save_for_backward(z, temperature, z_all, own, _gather_views(lse, batch))
        ctx.options = (batch, step)
        return rows

    @staticmethod
    def backward(ctx, g_rows: Tensor):
        z, t, z_all, own, lse_all = ctx.saved_tensors
        batch, step = ctx.options
        cdt = t.dtype
        zc = _operand(z, cdt)
        g_all = _gather_views(g_rows.to(cdt).contiguous(), batch)
        n = z_all.shape[0]
        dz = torch.empty(z.shape, dtype=cdt, device=z.device)
        dt = torch.zeros((), dtype=cdt, device=z.device)
        for r0, r1 in _chunks(zc.shape[0], step):
            mine = own[r0:r1]
            s = _similarities(zc[r0:r1], z_all, t, mine)
            pos = _positive(mine, n)
            ds = _softmax_grad(s, lse_all[mine, None], g_all[mine, None], pos)
            mirrored = _softmax_grad(s, lse_all[None, :], g_all[None, :], pos)
            s[torch.arange(r1 - r0, device=z.device), mine] = 0.0  # ds is 0 there (no -inf)
            dt -= (ds * s).sum() / t  # each view's own row: every (i, j) once over the ranks
            dz[r0:r1] = _product((ds + mirrored).to(z_all.dtype), z_all, cdt) / t
        grad_t = sum_over_ranks(dt, batch) if ctx.needs_input_grad[1] else None
        return dz.to(z.dtype), grad_t, None, None


def _views(zc: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """All ``2B`` views in global order and the global indices of this rank's ``2 B_r``."""
    z_all = _gather_views(zc, batch)
    mine = torch.arange(batch.start, batch.start + batch.local, device=zc.device)
    return z_all, torch.cat([mine, mine + batch.size])


def _gather_views(x: Tensor, batch: Batch) -> Tensor:
    """Per-view values ``[x1_r; x2_r]`` of every rank in global order ``[x1; x2]``."""
    if batch.group is None:
        return x
    parts = gather_rows(x.view(2, batch.local, *x.shape[1:]).transpose(0, 1), batch)
    return parts.transpose(0, 1).reshape(2 * batch.size, *x.shape[1:])


def _similarities(rows: Tensor, z_all: Tensor, t: Tensor, mine: Tensor) -> Tensor:
    """``rows @ z_all.T / T`` with each row's own similarity (global index ``mine``) at
    ``-inf``."""
    s = _product(rows, z_all.T, t.dtype) / t
    s[torch.arange(rows.shape[0], device=rows.device), mine] = float("-inf")
    return s


def _positive(idx: Tensor, n: int) -> Tensor:
    """The other view of each view: ``i + B`` or ``i - B`` for ``2B = n`` views."""
    return (idx + n // 2) % n


def chunk_rows(local_rows: int, global_rows: int) -> int:
    """Rows per chunk: about 2^24 similarities per chunk."""
    return max(1, min(local_rows, (1 << 24) // max(global_rows, 1)))

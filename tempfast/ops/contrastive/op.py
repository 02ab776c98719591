"""The contrastive loss's computation: per-row losses of both directions on the fused linear
head (its custom ops and autograd carry the gradients of ``a``, ``b`` and ``T``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ... import _checks
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


class NtXent(torch.autograd.Function):
    """SimCLR's NT-Xent over ``z (2B, D)`` (rows ``i`` and ``i + B`` are the two views of one
    example): with ``s = z @ z.T / T`` and its diagonal excluded, row ``i``'s loss is
    ``logsumexp_{j != i} s_ij - s_i,pos(i)``. Chunked: each chunk of rows makes its ``(rows,
    2B)`` similarities, in the forward pass and again in the backward (recomputed), so no more
    than a chunk of them exists. ``dL/ds_ij = g_i (p_ij - [j = pos(i)])``, ``dz_i = sum_j
    dL/ds_ij z_j / T``, ``dz_j += sum_i dL/ds_ij z_i / T``, ``dL/dT = -sum dL/ds * s / T``."""

    @staticmethod
    def forward(ctx, z: Tensor, temperature: Tensor, step: int) -> Tensor:
        cdt = _checks.accumulation_dtype(z.dtype)
        zc, t = z.to(cdt), temperature.to(cdt)
        n = z.shape[0]
        rows = torch.empty(n, dtype=cdt, device=z.device)
        lse = torch.empty(n, dtype=cdt, device=z.device)
        for r0 in range(0, n, step):
            r1 = min(r0 + step, n)
            s, idx = _similarities(zc, t, r0, r1)
            lse[r0:r1] = torch.logsumexp(s, 1)
            rows[r0:r1] = lse[r0:r1] - s[idx - r0, _positive(idx, n)]
        ctx.save_for_backward(z, temperature, lse)
        ctx.step = step
        return rows

    @staticmethod
    def backward(ctx, g_rows: Tensor):
        z, temperature, lse = ctx.saved_tensors
        cdt = lse.dtype
        zc, t, g = z.to(cdt), temperature.to(cdt), g_rows.to(cdt)
        n = z.shape[0]
        dz = torch.zeros_like(zc)
        dt = torch.zeros((), dtype=cdt, device=z.device)
        for r0 in range(0, n, ctx.step):
            r1 = min(r0 + ctx.step, n)
            s, idx = _similarities(zc, t, r0, r1)
            ds = torch.exp(s - lse[r0:r1, None])  # p; 0 on the excluded diagonal
            ds[idx - r0, _positive(idx, n)] -= 1.0
            ds.mul_(g[r0:r1, None])
            dz[r0:r1] += ds @ zc / t
            dz += ds.T @ zc[r0:r1] / t
            s[idx - r0, idx] = 0.0  # ds is 0 there: keep -inf out of the product
            dt -= (ds * s).sum() / t
        grad_t = dt.reshape(temperature.shape).to(temperature.dtype) \
            if ctx.needs_input_grad[1] else None
        return dz.to(z.dtype), grad_t, None


def _similarities(zc: Tensor, t: Tensor, r0: int, r1: int) -> tuple[Tensor, Tensor]:
    """Rows ``r0:r1`` of ``z @ z.T / T``, the diagonal at ``-inf``; and the rows' indices."""
    s = zc[r0:r1] @ zc.T / t
    idx = torch.arange(r0, r1, device=zc.device)
    s[idx - r0, idx] = float("-inf")
    return s, idx


def _positive(idx: Tensor, n: int) -> Tensor:
    """The other view of each row: ``i + B`` or ``i - B`` for ``2B = n`` rows."""
    return (idx + n // 2) % n


def nt_xent_chunk_rows(n: int) -> int:
    """Rows per chunk: about 2^24 similarities per chunk."""
    return max(1, min(n, (1 << 24) // max(n, 1)))

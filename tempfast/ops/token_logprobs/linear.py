"""``tempfast.linear_token_logprobs``: the token statistics from the last hidden state, in chunks
of rows, without the ``N x V`` logits.

Forward, per chunk: one GEMM for the chunk's logits and the token kernels' forward (the
logits read once, then freed). Backward, per chunk: the GEMM again (the upstream gradients of
a per-token output are known only then, so the forward cannot fold them into a gradient as
the loss heads do), the token kernels' backward (the logits' gradient), and the two gradient
GEMMs: four products per chunk, against three for the fused cross-entropy head.

With ``process_group`` the vocabulary is split over the ranks (each holds a row block of
``weight``, in rank order): each rank computes its shard's statistics, the ranks exchange
per-row ``(lse_r, H_r, owner's logp)`` (one all-gather of ``3 x N`` values), and every rank
combines them into the global values (``lse = logsumexp_r lse_r``, shard weights
``w_r = exp(lse_r - lse)``, ``H = sum_r w_r (H_r + lse - lse_r)``). Backward: each rank runs
the token kernels' backward on its shard with the upstream gradients rewritten for it (see
:func:`_shard_grads`); the hidden gradient and dL/dT are summed over the ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..._checks import accumulation_dtype
from .. import linear_cross_entropy as linear_head
from ..linear_cross_entropy import LinearCall
from ..linear_cross_entropy.op import _chunk_logits, default_chunk_rows
from .op import _dt_of, check_values, dt_from_sums, impl_for


def chunk_rows(hidden: Tensor, weight: Tensor) -> int:
    """Rows per chunk: the linear head's rule (:func:`default_chunk_rows`)."""
    acc = accumulation_dtype(hidden.dtype)
    return default_chunk_rows(hidden.shape[0], weight.shape[0], hidden.shape[1],
                              hidden.element_size(), torch.empty((), dtype=acc).element_size())


def _rows(t: Tensor | None, r0: int, r1: int) -> Tensor | None:
    return t if t is None or t.numel() == 1 else t[r0:r1]


def forward_stats(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                  temperature: Tensor | None, t_value: float, softcap: float,
                  ignore_index: int, entropy: bool, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, H, lse)`` per row of ``hidden (N, H)`` against ``weight (V, H)`` (the
    shard's, with ``target`` local indices), chunk by chunk."""
    n_rows = hidden.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    logp, lse = (torch.empty(n_rows, dtype=acc, device=hidden.device) for _ in range(2))
    h = torch.empty(n_rows if entropy else 0, dtype=acc, device=hidden.device)
    impl = impl_for(hidden)
    weight_t = weight.t()
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        logits = _chunk_logits(hidden[r0:r1], weight_t, bias)
        lp_c, h_c, lse_c = impl.token_forward(logits, target[r0:r1],
                                              _rows(temperature, r0, r1), t_value, softcap,
                                              ignore_index, entropy)
        logp[r0:r1], lse[r0:r1] = lp_c, lse_c
        if entropy:
            h[r0:r1] = h_c
        del logits
    return logp, h, lse


def backward_grads(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                   temperature: Tensor | None, t_value: float, softcap: float,
                   ignore_index: int, h: Tensor, lse: Tensor,
                   grads: tuple[Tensor | None, Tensor | None, Tensor | None], needs: list[bool],
                   compute_dt: bool, chunk: int) -> tuple[Tensor | None, ...]:
    """``(dhidden, dweight, dbias, S)``: the gradients for the upstream ``grads = (g_lp, g_H,
    g_lse)`` (``None``: none) and, with ``compute_dt``, the sums ``S (N, 2)`` of
    :func:`.torch_path.token_backward`; ``h`` and ``lse`` as the backward kernels take them."""
    n_rows = hidden.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    need_h, need_w, need_b = needs
    dh = torch.empty_like(hidden) if need_h else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    sums = torch.zeros((n_rows, 2) if compute_dt else (0, 2), dtype=acc, device=hidden.device)
    impl = impl_for(hidden)
    weight_t = weight.t()
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        hc = hidden[r0:r1]
        logits = _chunk_logits(hc, weight_t, bias)
        g_c = tuple(_rows(g, r0, r1) for g in grads)
        gx, s_c = impl.token_backward(logits, target[r0:r1], _rows(temperature, r0, r1),
                                      t_value, softcap, ignore_index, _rows(h, r0, r1) if
                                      grads[1] is not None else h, lse[r0:r1], *g_c,
                                      compute_dt)
        del logits
        if compute_dt:
            sums[r0:r1] = s_c
        if need_h:
            torch.mm(gx, weight, out=dh[r0:r1])
        if need_w:
            dw.addmm_(gx.t().to(acc), hc.to(acc))
        if need_b:
            db += gx.sum(0, dtype=acc)
    return dh, dw, db, sums


class LinearTokenStats(torch.autograd.Function):
    """``(logp, H)`` of ``hidden @ weight.T + bias`` (one process; eager and traced calls
    alike, as a plain autograd Function)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, temperature, t_value, softcap, ignore_index,
                entropy, chunk):
        check_values(weight.shape[0], target, temperature, ignore_index)
        logp, h, lse = forward_stats(hidden, weight, bias, target, temperature, t_value,
                                     softcap, ignore_index, entropy, chunk)
        ctx.set_materialize_grads(False)
        ctx.args = (t_value, softcap, ignore_index, chunk)
        ctx.save_for_backward(hidden, weight, bias, target, temperature, logp, h, lse)
        return logp, h

    @staticmethod
    def backward(ctx, g_lp, g_h):
        hidden, weight, bias, target, temperature, logp, h, lse = ctx.saved_tensors
        none = (None,) * 10
        if g_lp is None and g_h is None:
            return none
        t_value, softcap, ignore_index, chunk = ctx.args
        need_h, need_w, need_b, _, need_t = ctx.needs_input_grad[:5]
        dh, dw, db, sums = backward_grads(
            hidden, weight, bias, target, temperature, t_value, softcap, ignore_index, h, lse,
            (g_lp, g_h, None), [need_h, need_w, need_b], need_t, chunk)
        dt = None
        if need_t:
            dt = _dt_of(dt_from_sums(logp, h, lse, sums, (g_lp, g_h, None), temperature,
                                     t_value), temperature)
        dw = dw.to(weight.dtype) if dw is not None else None
        db = db.to(bias.dtype) if db is not None else None
        return dh, dw, db, None, dt, *none[5:]


class LinearTokenCall(NamedTuple):
    """A ``linear_token_logprobs`` call, normalised: the linear head's call (its checks and
    shapes, ``reduction="none"``) and whether the entropy is returned."""

    head: LinearCall
    entropy: bool


def normalise(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
              temperature: float | Tensor, *, softcap: float | None, ignore_index: int,
              return_entropy: bool, process_group, chunk_size: int | None) -> LinearTokenCall:
    """Check every argument once (the linear head's checks, and ``return_entropy``)."""
    head = linear_head.normalise(
        hidden, weight, target, bias, temperature, ignore_index=ignore_index, reduction="none",
        label_smoothing=0.0, chunk_size=chunk_size, process_group=process_group,
        softcap=softcap)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy: expected a bool, got {type(return_entropy).__name__}")
    return LinearTokenCall(head, return_entropy)


def run(token_call: LinearTokenCall) -> Tensor | tuple[Tensor, Tensor]:
    """``logp`` (and, with the entropy, ``(logp, H)``), shaped like the target."""
    call, entropy = token_call
    if call.process_group is not None:
        from .sharded import run_sharded

        logp, h = run_sharded(call, entropy)
    else:
        logp, h = LinearTokenStats.apply(call.hidden, call.weight, call.bias, call.target,
                                         call.temperature, 0.0, call.softcap,
                                         call.ignore_index, entropy, call.chunk)
    logp = logp.reshape(call.rows_shape)
    return (logp, h.reshape(call.rows_shape)) if entropy else logp

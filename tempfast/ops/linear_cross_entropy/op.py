"""The linear head's autograd: the custom ops ``tempfast::linear_cross_entropy`` and
``tempfast::linear_cross_entropy_backward``: classifier head + temperature cross-entropy, in row
chunks. It has no kernel of its own: each chunk runs the cross-entropy's rows
(:mod:`tempfast.ops.cross_entropy`, either path) over logits from a matrix product.

For ``hidden (N, H)``, ``weight (C, H)``, ``bias (C,)`` the logits ``z = hidden @ weight.T +
bias`` are never materialised whole. Rows are processed ``chunk`` at a time:

    z_c      = hidden_c @ weight.T + bias             (chunk x C, cuBLAS / torch)
    z_c     <- s (p - q) / T, written over z_c        (the core cross-entropy kernel, in place)
    dhidden_c = z_c @ weight                          (chunk x H)
    dweight += z_c.T @ hidden_c                       (fp32 accumulator, C x H)
    dbias   += z_c.sum(0)                             (fp32 accumulator)

Peak extra memory: ``chunk * C`` logits in the input dtype, ``C * H * 4`` bytes for the fp32
weight gradient (plus, for 16-bit inputs where cuBLAS cannot add a 16-bit product straight into
fp32, one ``C x H`` 16-bit product per chunk, and the ``C x H`` gradient in the weight's dtype
that backward returns), ``N * H`` for the hidden gradient and ``C * 4`` for the bias gradient --
independent of ``N * C``.

With ``reduction`` mean or sum the gradients are computed in the forward pass (one pass over the
logits) and the backward pass only applies the upstream gradient. With ``"none"`` the forward pass
computes losses only and the backward pass recomputes each chunk with its rows' upstream
gradients.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_class_indices, check_temperature_values
from ..autograd import (
    apply_upstream,
    fused_scale,
    fused_upstream,
    reduce_rows,
    refuse_double_backward,
    row_scale,
    temperature_grad,
)
from ..cross_entropy.op import impl_for
from ..cross_entropy.torch_path import mean_divisor

CHUNK_ELEMENTS = 1 << 26  # default chunk: about 64M logits (128 MiB in bf16)


def default_chunk_rows(n_rows: int, n_classes: int) -> int:
    """Rows per chunk so that a chunk of logits holds about ``CHUNK_ELEMENTS`` values."""
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(n_classes, 1)))


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return hidden @ weight.t()
    return torch.addmm(bias, hidden, weight.t())


@functools.lru_cache(maxsize=8)
def _gemm_accumulates_in_fp32(device: torch.device) -> bool:
    """Whether ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` works for 16-bit ``a``,
    ``b`` on ``device`` (cuBLAS in recent PyTorch): 16-bit products added straight into the
    fp32 accumulator, without a ``C x H`` 16-bit temporary."""
    if device.type != "cuda":
        return False
    a = torch.zeros(2, 2, dtype=torch.bfloat16, device=device)
    acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
    try:
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _accumulate_weight_grad(acc: Tensor, grad_logits: Tensor, hidden: Tensor) -> None:
    """``acc += grad_logits.T @ hidden`` with an fp32 (or fp64) accumulator."""
    if grad_logits.dtype == acc.dtype:
        acc.addmm_(grad_logits.t(), hidden)
    elif _gemm_accumulates_in_fp32(acc.device):
        torch.addmm(acc, grad_logits.t(), hidden, out_dtype=acc.dtype, out=acc)
    else:
        acc += (grad_logits.t() @ hidden).to(acc.dtype)


def _chunked_pass(hidden, weight, bias, target, temperature, ignore_index, label_smoothing,
                  chunk, grad_scale, need_h, need_w, need_b, compute_loss, compute_dt):
    """One pass over the rows: per-row losses / dL/dT and, when ``grad_scale`` is given, the
    gradients scaled by it (``(1,)`` or ``(N,)``). Returns ``(loss_rows, dt_rows, dh, dw, db)``.
    """
    n_rows, n_classes = hidden.shape[0], weight.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    device = hidden.device
    loss_rows = torch.zeros(n_rows if compute_loss else 0, dtype=acc, device=device)
    dt_rows = torch.zeros(n_rows if compute_dt else 0, dtype=acc, device=device)
    grads = grad_scale is not None
    dh = torch.empty_like(hidden) if grads and need_h else hidden.new_empty(0)
    dw = torch.zeros(weight.shape, dtype=acc, device=device) if grads and need_w \
        else weight.new_empty(0, dtype=acc)
    db = torch.zeros(n_classes, dtype=acc, device=device) if grads and need_b \
        else weight.new_empty(0, dtype=acc)
    impl = impl_for(hidden)
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        h = hidden[r0:r1]
        logits = _chunk_logits(h, weight, bias)
        t = temperature if temperature.numel() == 1 else temperature[r0:r1]
        scale = None
        if grads:
            scale = grad_scale if grad_scale.numel() == 1 else grad_scale[r0:r1]
        loss_c, _lse, dt_c = impl.ce_rows(logits, target[r0:r1], t, None, ignore_index,
                                          label_smoothing, scale, logits if grads else None,
                                          compute_dt)
        if compute_loss:
            loss_rows[r0:r1] = loss_c
        if compute_dt:
            dt_rows[r0:r1] = dt_c
        if grads and need_h:
            torch.mm(logits, weight, out=dh[r0:r1])
        if grads and need_w:
            _accumulate_weight_grad(dw, logits, h)
        if grads and need_b:
            db += logits.sum(0, dtype=acc)
        del logits  # free this chunk before the next one is allocated
    return loss_rows, dt_rows, dh, dw, db


@torch.library.custom_op("tempfast::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_2d(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    temperature: Tensor,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    chunk: int,
    fused_grads: list[bool],
    compute_dt: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, dt_rows, dhidden, dweight, dbias, divisor)``; the gradients are those for
    an upstream gradient of 1, computed for the inputs flagged in ``fused_grads`` (hidden,
    weight, bias), else empty; ``dweight`` / ``dbias`` are fp32 (fp64 for fp64 inputs)."""
    check_temperature_values(temperature)
    check_class_indices(target, weight.shape[0], ignore_index)
    divisor = mean_divisor(target, None, ignore_index, weight.shape[0],
                           accumulation_dtype(hidden.dtype))
    any_grad = any(fused_grads)
    scale = None
    if any_grad:
        scale = fused_scale(divisor, reduction, hidden.dtype)
    loss_rows, dt_rows, dh, dw, db = _chunked_pass(
        hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk, scale,
        *fused_grads, True, compute_dt)
    return reduce_rows(loss_rows, divisor, reduction), dt_rows, dh, dw, db, divisor


@linear_cross_entropy_2d.register_fake
def _(hidden, weight, bias, target, temperature, ignore_index, label_smoothing, reduction, chunk,
      fused_grads, compute_dt):
    n_rows = hidden.shape[0]
    acc = {"dtype": accumulation_dtype(hidden.dtype)}
    return (hidden.new_empty(n_rows if reduction == "none" else (), **acc),
            hidden.new_empty(n_rows if compute_dt else 0, **acc),
            *_fake_grads(hidden, weight, fused_grads),
            hidden.new_empty((), **acc))


def _fake_grads(hidden: Tensor, weight: Tensor, needs: list[bool]) -> tuple[Tensor, ...]:
    """The shapes and dtypes of ``(dhidden, dweight, dbias)`` for the fake (meta) kernels:
    hidden's dtype for dhidden, the accumulation dtype for dweight / dbias, empty if not
    needed."""
    acc = {"dtype": accumulation_dtype(hidden.dtype)}
    need_h, need_w, need_b = needs
    return (torch.empty_like(hidden) if need_h else hidden.new_empty(0),
            weight.new_empty(weight.shape if need_w else 0, **acc),
            weight.new_empty(weight.shape[0] if need_b else 0, **acc))


@torch.library.custom_op("tempfast::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_2d(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    temperature: Tensor,
    ignore_index: int,
    label_smoothing: float,
    chunk: int,
    grad_scale: Tensor,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute the gradients ``(dhidden, dweight, dbias)`` chunk by chunk, each row scaled by
    ``grad_scale`` (``(1,)`` or ``(N,)``)."""
    _, _, dh, dw, db = _chunked_pass(hidden, weight, bias, target, temperature, ignore_index,
                                     label_smoothing, chunk, grad_scale, *needs, False, False)
    return dh, dw, db


@linear_cross_entropy_backward_2d.register_fake
def _(hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk,
      grad_scale, needs):
    return _fake_grads(hidden, weight, needs)


def _setup_context(ctx, inputs, output) -> None:
    (hidden, weight, bias, target, temperature, ignore_index, label_smoothing, reduction, chunk,
     fused_grads, _compute_dt) = inputs
    _loss, dt_rows, dh, dw, db, divisor = output
    ctx.mark_non_differentiable(dt_rows, dh, dw, db, divisor)
    # Only the loss is differentiated: without this, autograd would allocate and zero-fill a
    # gradient for every other output (an N x C buffer for ``grad``) on each backward.
    ctx.set_materialize_grads(False)
    ctx.fused = any(fused_grads)
    ctx.options = (ignore_index, label_smoothing, reduction, chunk)
    ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
    if ctx.fused:
        ctx.save_for_backward(dh, dw, db, dt_rows, divisor, temperature)
    else:
        ctx.save_for_backward(hidden, weight, bias, target, temperature, dt_rows, divisor)


def _backward(ctx, g_loss, *_unused):
    if g_loss is None:  # the loss was not differentiated (only its side outputs were used)
        return (None,) * 11
    refuse_double_backward("linear_cross_entropy", g_loss)
    ignore_index, label_smoothing, reduction, chunk = ctx.options
    need_h, need_w, need_b, _, need_t = ctx.needs_input_grad[:5]
    w_dtype, b_dtype = ctx.dtypes
    if ctx.fused:
        dh, dw, db, dt_rows, divisor, temperature = ctx.saved_tensors
        scale = row_scale(g_loss, divisor, reduction)
        upstream = fused_upstream(g_loss, divisor, reduction, dh.dtype if need_h else w_dtype)
        grad_h = apply_upstream(ctx, dh, upstream, "hidden") if need_h else None
        grad_w = apply_upstream(ctx, dw, upstream, "weight").to(w_dtype) if need_w else None
        grad_b = None
        if need_b:
            grad_b = apply_upstream(ctx, db.view(1, -1), upstream, "bias").view(-1).to(b_dtype)
    else:
        hidden, weight, bias, target, temperature, dt_rows, divisor = ctx.saved_tensors
        scale = row_scale(g_loss, divisor, reduction)
        dh, dw, db = linear_cross_entropy_backward_2d(
            hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk,
            scale, [need_h, need_w, need_b])
        grad_h = dh if need_h else None
        grad_w = dw.to(w_dtype) if need_w else None
        grad_b = db.to(b_dtype) if need_b else None
    grad_t = temperature_grad(dt_rows, scale, temperature) if need_t else None
    return grad_h, grad_w, grad_b, None, grad_t, None, None, None, None, None, None


linear_cross_entropy_2d.register_autograd(_backward, setup_context=_setup_context)

"""The linear head's autograd: the custom ops ``tempfast::linear_cross_entropy`` and
``tempfast::linear_cross_entropy_backward``: classifier head + temperature cross-entropy, in row
chunks. It has no kernel of its own: each chunk runs the cross-entropy's rows
(:mod:`tempfast.ops.cross_entropy`, either path) over logits from a matrix product.

For ``hidden (N, H)``, ``weight (C, H)``, ``bias (C,)`` the logits ``z = hidden @ weight.T +
bias`` are never materialised whole. Rows are processed ``chunk`` at a time
(:func:`default_chunk_rows`):

    z_c      = hidden_c @ weight.T + bias             (chunk x C, cuBLAS / torch)
    z_c     <- (p - q) / T, written over z_c          (the core cross-entropy kernel, in place)
    dhidden_c = z_c @ weight                          (chunk x H)
    dweight += z_c.T @ hidden_c                       (fp32 accumulator, C x H)
    dbias   += z_c.sum(0)                             (fp32 accumulator)

A mean or sum with one temperature takes the lean pass (:func:`_summed_pass`): the gradients
of the rows' *sum* are formed in the forward pass, the cross-entropy of each chunk writes the
chunk's summed loss and dL/dT into its row of one workspace, and nothing but the three GEMMs
runs per chunk on the host; the backward pass applies the mean's ``1 / N`` and the upstream
gradient (``dhidden * s``, ``dweight`` converted to the weight's dtype in the same pass).
``reduction="none"`` and a temperature per row take the per-row pass (:func:`_chunked_pass`):
with ``"none"`` the forward pass computes losses only and the backward pass makes each chunk's
logits again with its rows' upstream gradients.

Peak extra memory: ``chunk * C`` logits in the input dtype, ``C * H * 4`` bytes for the fp32
weight gradient (``accum_dtype=weight.dtype``: in the weight's dtype; plus, for 16-bit inputs
where cuBLAS cannot add a 16-bit product straight into fp32, one ``C x H`` 16-bit product per
chunk) and the ``C x H`` gradient in the weight's dtype that backward returns, ``N * H`` for
the hidden gradient and ``C * 4`` for the bias gradient -- independent of ``N * C``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_class_indices, check_temperature_values
from ..autograd import (
    apply_upstream,
    reduce_rows,
    refuse_double_backward,
    temperature_grad,
)
from ..cross_entropy.op import impl_for

CHUNK_ELEMENTS = 1 << 25  # a chunk holds at least about 32M logits (64 MiB in bf16) ...
WEIGHT_GRAD_SHARE = 4  # ... or up to a quarter of the weight gradient accumulator's bytes


def default_chunk_rows(n_rows: int, n_classes: int, hidden_size: int = 0, itemsize: int = 4,
                       accum_itemsize: int = 4) -> int:
    """Rows per chunk: a chunk of logits (``rows x C`` of ``itemsize`` bytes) holds about
    ``CHUNK_ELEMENTS`` values, or up to ``1 / WEIGHT_GRAD_SHARE`` of the ``C x H`` weight
    gradient accumulator (``accum_itemsize`` bytes per value) that the head holds anyway, when
    that is larger: ``H * accum_itemsize / (4 * itemsize)`` rows (2048 at H = 4096 in bf16 with
    fp32 accumulation), so that a wide hidden gets long GEMMs and few chunks."""
    by_elements = CHUNK_ELEMENTS // max(n_classes, 1)
    by_weight_grad = hidden_size * accum_itemsize // (WEIGHT_GRAD_SHARE * itemsize)
    return max(1, min(n_rows, max(by_elements, by_weight_grad)))


def _chunk_logits(hidden: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return hidden @ weight_t
    return torch.addmm(bias, hidden, weight_t)


@functools.lru_cache(maxsize=8)
def gemm_accumulates_in_fp32(device: torch.device) -> bool:
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


def _accumulate_weight_grad(acc: Tensor, grad_logits: Tensor, hidden: Tensor,
                            first: bool) -> None:
    """``acc = grad_logits.T @ hidden`` (``first``: ``acc`` is uninitialised) or ``acc +=`` it;
    ``acc`` fp32 / fp64, or the inputs' own dtype (``accum_dtype=weight.dtype``)."""
    beta = 0.0 if first else 1.0
    if grad_logits.dtype == acc.dtype:
        torch.addmm(acc, grad_logits.t(), hidden, beta=beta, out=acc)
    elif gemm_accumulates_in_fp32(acc.device):
        torch.addmm(acc, grad_logits.t(), hidden, beta=beta, out_dtype=acc.dtype, out=acc)
    elif first:
        acc.copy_(grad_logits.t() @ hidden)
    else:
        acc += (grad_logits.t() @ hidden).to(acc.dtype)


def _gradient_buffers(hidden: Tensor, weight: Tensor, needs: list[bool], accum: torch.dtype,
                      n_classes: int):
    """``(dh, dw, db)``: ``dh`` uninitialised, ``dw`` uninitialised (its first chunk overwrites
    it; zeros without rows), ``db`` zeros, each empty when not needed."""
    need_h, need_w, need_b = needs
    device, acc = hidden.device, accumulation_dtype(hidden.dtype)
    dh = torch.empty_like(hidden) if need_h else hidden.new_empty(0)
    make = torch.empty if hidden.shape[0] else torch.zeros
    dw = make(weight.shape, dtype=accum, device=device) if need_w \
        else weight.new_empty(0, dtype=accum)
    db = torch.zeros(n_classes, dtype=acc, device=device) if need_b \
        else weight.new_empty(0, dtype=acc)
    return dh, dw, db


def _fold_chunk_gradient(logits: Tensor, h: Tensor, weight: Tensor, dh_part: Tensor | None,
                         dw: Tensor, db: Tensor, first: bool, needs: list[bool]) -> None:
    """A chunk's gradient of the logits (written over them) into the three gradients."""
    need_h, need_w, need_b = needs
    if need_h:
        torch.mm(logits, weight, out=dh_part)
    if need_w:
        _accumulate_weight_grad(dw, logits, h, first)
    if need_b:
        db += logits.sum(0, dtype=db.dtype)


def _summed_pass(hidden, weight, bias, target, temperature, ignore_index, label_smoothing,
                 chunk, needs, compute_dt, accum, softcap, z_loss):
    """The lean pass of a mean or sum with one temperature: per chunk one GEMM for the logits,
    the cross-entropy (the gradient of the rows' sum written over the logits, the chunk's
    loss and dL/dT summed on the device into its row of one workspace) and the two gradient
    GEMMs; no per-chunk torch op besides the three GEMMs. Returns ``(sums, dh, dw, db)``:
    ``sums = (sum of the rows' losses, sum of their dL/dT)`` and the gradients of the rows'
    sum (an upstream gradient of 1 on every row)."""
    n_classes = weight.shape[0]
    impl = impl_for(hidden)
    dh, dw, db = _gradient_buffers(hidden, weight, needs, accum, n_classes)
    # No rows, no chunk (``split`` would give one empty chunk, whose launch writes no sums).
    h_parts, y_parts = (hidden.split(chunk), target.split(chunk)) if hidden.shape[0] else ((), ())
    dh_parts = dh.split(chunk) if needs[0] and h_parts else [None] * len(h_parts)
    weight_t = weight.t()
    sums = rows = cfg = None
    for k, (h, y) in enumerate(zip(h_parts, y_parts, strict=True)):
        logits = _chunk_logits(h, weight_t, bias)
        if sums is None:
            cfg, sums = impl.chunk_workspaces(logits, len(h_parts), softcap)
            rows = sums.unbind(0)
        impl.ce_chunk_sums(logits, y, temperature, ignore_index, label_smoothing, compute_dt,
                           rows[k], cfg, softcap, z_loss)
        _fold_chunk_gradient(logits, h, weight, dh_parts[k], dw, db, k == 0, needs)
        del logits  # free this chunk before the next one is allocated
    acc = accumulation_dtype(hidden.dtype)
    if sums is None:  # no rows
        return torch.zeros(2, dtype=acc, device=hidden.device), dh, dw, db
    # Each chunk's loss sum and dL/dT sum lie side by side in its workspace row.
    return sums[:, impl.CHUNK_SUMS_AT:impl.CHUNK_SUMS_AT + 2].sum(0), dh, dw, db


def _chunked_pass(hidden, weight, bias, target, temperature, ignore_index, label_smoothing,
                  chunk, grad_scale, needs, compute_loss, compute_dt, accum, softcap, z_loss):
    """One pass over the rows with per-row outputs (``reduction="none"``, or one temperature
    per row): per-row losses / dL/dT and, when ``grad_scale`` is given, the gradients scaled
    by it (``(1,)`` or ``(N,)``). Returns ``(loss_rows, dt_rows, dh, dw, db)``."""
    n_rows, n_classes = hidden.shape[0], weight.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    device = hidden.device
    loss_rows = torch.zeros(n_rows if compute_loss else 0, dtype=acc, device=device)
    dt_rows = torch.zeros(n_rows if compute_dt else 0, dtype=acc, device=device)
    grads = grad_scale is not None
    needs = needs if grads else [False, False, False]
    dh, dw, db = _gradient_buffers(hidden, weight, needs, accum, n_classes)
    impl = impl_for(hidden)
    weight_t = weight.t()
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        h = hidden[r0:r1]
        logits = _chunk_logits(h, weight_t, bias)
        t = temperature if temperature.numel() == 1 else temperature[r0:r1]
        scale = None
        if grads:
            scale = grad_scale if grad_scale.numel() == 1 else grad_scale[r0:r1]
        loss_c, _lse, dt_c = impl.ce_rows(logits, target[r0:r1], t, None, ignore_index,
                                          label_smoothing, scale, logits if grads else None,
                                          compute_dt, softcap, z_loss)
        if compute_loss:
            loss_rows[r0:r1] = loss_c
        if compute_dt:
            dt_rows[r0:r1] = dt_c
        if grads:
            _fold_chunk_gradient(logits, h, weight, dh[r0:r1] if needs[0] else None, dw, db,
                                 r0 == 0, needs)
        del logits  # free this chunk before the next one is allocated
    return loss_rows, dt_rows, dh, dw, db


def _accum_dtype(hidden: Tensor, weight: Tensor, in_weight_dtype: bool,
                 chunk: int) -> torch.dtype:
    """The weight gradient's accumulator: the weight's dtype on request, or when one chunk
    holds every row of a bf16 head (one product, accumulated in fp32 inside the GEMM and
    rounded once, as eager does: nothing is added across chunks; bf16 has fp32's range, so
    the unscaled sum cannot overflow, which fp16's could); else fp32 (fp64 for fp64)."""
    one_product = weight.dtype == torch.bfloat16 and hidden.shape[0] <= chunk
    return weight.dtype if in_weight_dtype or one_product else accumulation_dtype(hidden.dtype)


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
    accumulate_in_weight_dtype: bool,
    softcap: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, dt, dhidden, dweight, dbias, row_factor)``. The gradients are those of the
    rows' *sum* (an upstream gradient of 1 on every row's loss, the mean's factor left to the
    backward), computed for the inputs flagged in ``fused_grads`` (hidden, weight, bias), else
    empty; ``dweight`` is in the accumulation dtype (fp32; fp64 for fp64 inputs; the weight's
    with ``accumulate_in_weight_dtype`` or for a bf16 head in one chunk: :func:`_accum_dtype`),
    ``dbias`` fp32 / fp64. ``dt``: the sum of the rows'
    dL/dT at index 1 of a ``(2,)`` tensor (one temperature), or per row ``(N,)``;
    ``row_factor`` the derivative of the loss by each row's loss (``1 / divisor`` for the mean,
    its divisor taken as 1 when no row counts: every row's gradient is 0 then; else 1).
    ``softcap`` (0: none) and ``z_loss``: as in ``tempfast.cross_entropy`` (no class weights
    here, so the mean's divisor is the rows counted, the z-loss's too)."""
    check_temperature_values(temperature)
    check_class_indices(target, weight.shape[0], ignore_index)
    acc = accumulation_dtype(hidden.dtype)
    accum = _accum_dtype(hidden, weight, accumulate_in_weight_dtype, chunk)
    if reduction == "mean":
        divisor = (target != ignore_index).sum(dtype=acc)
        row_factor = divisor.clamp_min(1.0).reciprocal()  # rows are 0 when nothing counts
    else:
        divisor, row_factor = None, torch.ones((), dtype=acc, device=hidden.device)
    if reduction != "none" and temperature.numel() == 1:
        sums, dh, dw, db = _summed_pass(hidden, weight, bias, target, temperature, ignore_index,
                                        label_smoothing, chunk, fused_grads, compute_dt, accum,
                                        softcap, z_loss)
        loss = sums[0] / divisor if reduction == "mean" else sums[0].clone()  # no alias of dt
        return loss, sums, dh, dw, db, row_factor
    scale = torch.ones(1, dtype=acc, device=hidden.device) if any(fused_grads) else None
    loss_rows, dt_rows, dh, dw, db = _chunked_pass(
        hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk, scale,
        fused_grads, True, compute_dt, accum, softcap, z_loss)
    return reduce_rows(loss_rows, divisor, reduction), dt_rows, dh, dw, db, row_factor


@linear_cross_entropy_2d.register_fake
def _(hidden, weight, bias, target, temperature, ignore_index, label_smoothing, reduction, chunk,
      fused_grads, compute_dt, accumulate_in_weight_dtype, softcap=0.0, z_loss=0.0):
    n_rows = hidden.shape[0]
    acc = {"dtype": accumulation_dtype(hidden.dtype)}
    summed = reduction != "none" and temperature.numel() == 1
    dt_size = 2 if summed else (n_rows if compute_dt else 0)
    return (hidden.new_empty(n_rows if reduction == "none" else (), **acc),
            hidden.new_empty(dt_size, **acc),
            *_fake_grads(hidden, weight, fused_grads, accumulate_in_weight_dtype, chunk),
            hidden.new_empty((), **acc))


def _fake_grads(hidden: Tensor, weight: Tensor, needs: list[bool], in_weight_dtype: bool,
                chunk: int) -> tuple[Tensor, ...]:
    """The shapes and dtypes of ``(dhidden, dweight, dbias)`` for the fake (meta) kernels:
    hidden's dtype for dhidden, the accumulation dtypes for dweight / dbias, empty if not
    needed."""
    acc = {"dtype": accumulation_dtype(hidden.dtype)}
    need_h, need_w, need_b = needs
    return (torch.empty_like(hidden) if need_h else hidden.new_empty(0),
            weight.new_empty(weight.shape if need_w else 0,
                             dtype=_accum_dtype(hidden, weight, in_weight_dtype, chunk)),
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
    accumulate_in_weight_dtype: bool,
    softcap: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute the gradients ``(dhidden, dweight, dbias)`` chunk by chunk, each row scaled by
    ``grad_scale`` (``(1,)`` or ``(N,)``)."""
    accum = _accum_dtype(hidden, weight, accumulate_in_weight_dtype, chunk)
    _, _, dh, dw, db = _chunked_pass(hidden, weight, bias, target, temperature, ignore_index,
                                     label_smoothing, chunk, grad_scale, needs, False, False,
                                     accum, softcap, z_loss)
    return dh, dw, db


@linear_cross_entropy_backward_2d.register_fake
def _(hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk,
      grad_scale, needs, accumulate_in_weight_dtype, softcap=0.0, z_loss=0.0):
    return _fake_grads(hidden, weight, needs, accumulate_in_weight_dtype, chunk)


def _setup_context(ctx, inputs, output) -> None:
    (hidden, weight, bias, target, temperature, ignore_index, label_smoothing, reduction, chunk,
     fused_grads, _compute_dt, in_weight_dtype, softcap, z_loss) = inputs
    _loss, dt, dh, dw, db, row_factor = output
    ctx.mark_non_differentiable(dt, dh, dw, db, row_factor)
    # Only the loss is differentiated: without this, autograd would allocate and zero-fill a
    # gradient for every other output (an N x C buffer for ``grad``) on each backward.
    ctx.set_materialize_grads(False)
    ctx.fused = any(fused_grads)
    ctx.options = (ignore_index, label_smoothing, reduction, chunk, in_weight_dtype, softcap,
                   z_loss)
    ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
    if ctx.fused:
        ctx.save_for_backward(dh, dw, db, dt, row_factor, temperature)
    else:
        ctx.save_for_backward(hidden, weight, bias, target, temperature, dt, row_factor)


def _weight_grad(ctx, buf: Tensor, scale: Tensor, dtype: torch.dtype, key: str) -> Tensor:
    """A weight (or bias) gradient from its accumulator: ``buf * scale`` in ``dtype``, in one
    pass (in place when ``buf`` has ``dtype``, the memory-saving ``accum_dtype``:
    :func:`apply_upstream`)."""
    if buf.dtype == dtype:
        return apply_upstream(ctx, buf.view(buf.shape[0], -1), scale, key).view(buf.shape)
    return torch.mul(buf, scale, out=torch.empty(buf.shape, dtype=dtype, device=buf.device))


def _backward(ctx, g_loss, *_unused):
    if g_loss is None:  # the loss was not differentiated (only its side outputs were used)
        return (None,) * 14
    refuse_double_backward("linear_cross_entropy", g_loss)
    ignore_index, label_smoothing, reduction, chunk, in_weight_dtype, softcap, z_loss = \
        ctx.options
    need_h, need_w, need_b, _, need_t = ctx.needs_input_grad[:5]
    w_dtype, b_dtype = ctx.dtypes
    grad_h = grad_w = grad_b = None
    if ctx.fused:
        dh, dw, db, dt, row_factor, temperature = ctx.saved_tensors
        scale = g_loss.detach() * row_factor  # 0-dim: d loss / d row, times the upstream
        if need_h:  # out of place: the saved buffer stays valid for a retained graph
            grad_h = dh * scale
        if need_w:
            grad_w = _weight_grad(ctx, dw, scale, w_dtype, "weight")
        if need_b:
            grad_b = _weight_grad(ctx, db, scale, b_dtype, "bias")
    else:
        hidden, weight, bias, target, temperature, dt, row_factor = ctx.saved_tensors
        scale = g_loss.detach().to(row_factor.dtype) * row_factor
        dh, dw, db = linear_cross_entropy_backward_2d(
            hidden, weight, bias, target, temperature, ignore_index, label_smoothing, chunk,
            scale.reshape(-1), [need_h, need_w, need_b], in_weight_dtype, softcap, z_loss)
        grad_h = dh if need_h else None
        grad_w = dw.to(w_dtype) if need_w else None
        grad_b = db.to(b_dtype) if need_b else None
    grad_t = None
    if need_t:
        summed = reduction != "none" and temperature.numel() == 1
        grad_t = (dt[1:] * scale).reshape(temperature.shape) if summed \
            else temperature_grad(dt, scale.reshape(-1), temperature)
    return (grad_h, grad_w, grad_b, None, grad_t) + (None,) * 9


linear_cross_entropy_2d.register_autograd(_backward, setup_context=_setup_context)

"""The distillation loss's autograd: the custom op ``tempfast::distillation``.

Math, per row (logits ``s`` of the student, ``t`` of the teacher, temperature ``T``;
``a = t / T``, ``b = s / T``, ``p_t = softmax(a)``, ``p_s = softmax(b)``):

    KL    = sum p_t (log p_t - log p_s)  >= 0          kd_row = T^2 KL
    d kd_row / ds = T (p_s - p_t)
    d kd_row / dt = T p_t ((log p_t - log p_s) - KL)
    d kd_row / dT = 2 T KL + T (-Cov_pt(a, a - b) + E_pt[b] - E_ps[b])

With class-index ``target`` the hard-label cross-entropy of the student at ``T = 1`` is added
in the same pass: ``ce_row = lse(s) - s_y`` (0 for ``ignore_index`` rows), gradient
``softmax(s) - onehot(y)``. The loss is ``alpha * KD + (1 - alpha) * CE``: KD reduced by
``reduction`` (``batchmean``: sum / N, ``mean``: sum / (N C), ``sum``, ``none``), CE as
``F.cross_entropy`` reduces it (``batchmean`` and ``mean``: sum / rows not ignored).

The forward pass writes the student's gradient (and the teacher's when it is differentiated)
for an upstream gradient of 1 while it has both rows on chip, and the per-row dL/dT; the
backward pass only multiplies them by the upstream gradient (skipped on the device when it is
1). fp16 gradients keep the mean's ``1 / divisor`` for the backward pass, as the cross-entropy
does (:func:`~tempfast.ops.autograd.defers_mean`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_class_indices, check_temperature_values
from ..autograd import apply_upstream, mean_factor, refuse_double_backward, temperature_grad
from ..dispatch import runs_triton
from . import torch_path

REDUCTIONS = ("batchmean", "mean", "sum", "none")


def impl_for(x: Tensor):
    """The module that computes the rows of ``x``: ``triton_path`` or ``torch_path``."""
    if runs_triton(x):
        from . import triton_path

        return triton_path
    return torch_path


def kd_divisor(reduction: str, n_rows: int, n_cols: int) -> int:
    """The KD part's divisor: rows (``batchmean``), elements (``mean``), else 1."""
    return {"batchmean": n_rows, "mean": n_rows * n_cols}.get(reduction, 1)


def defers(dtype: torch.dtype, reduction: str) -> bool:
    """fp16 gradients receive the mean's ``1 / divisor`` in the backward pass (see
    :func:`~tempfast.ops.autograd.defers_mean`)."""
    return dtype == torch.float16 and reduction in ("batchmean", "mean")


# --------------------------------------------------------------------------------------------
# The custom op and its autograd.
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tempfast::distillation", mutates_args=())
def distillation_2d(
    student: Tensor,
    teacher: Tensor,
    temperature: Tensor,
    target: Tensor | None,
    ignore_index: int,
    alpha: float,
    reduction: str,
    teacher_grad: bool,
    compute_dt: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, grad_s, grad_t, dt_rows)`` for 2-D logits ``(N, C)``.

    ``loss``: scalar, or ``(N,)`` for ``"none"``. ``grad_s`` / ``grad_t``: the gradients for an
    upstream gradient of 1 (without the mean's factor for fp16, see :func:`defers`), ``grad_t``
    empty unless ``teacher_grad``. ``dt_rows``: ``(N,)`` d kd_row / dT (without ``alpha`` and
    the divisor) when ``compute_dt``, else empty. ``alpha`` weighs the KD part only when
    ``target`` is given (pass 1.0 otherwise).
    """
    check_temperature_values(temperature)
    if target is not None:
        check_class_indices(target, student.shape[1], ignore_index)
    n_rows, n_cols = student.shape
    cdt = accumulation_dtype(student.dtype)
    divisor = kd_divisor(reduction, n_rows, n_cols)
    defer = defers(student.dtype, reduction)
    kd_scale = alpha if defer else alpha / max(divisor, 1)
    ce_scale = n_valid = None
    if target is not None:
        n_valid = (target != ignore_index).sum().to(cdt).reshape(1)
        if reduction in ("batchmean", "mean"):
            ce_scale = (1.0 - alpha) * mean_factor(torch.ones_like(n_valid), n_valid)
            if defer:
                ce_scale = ce_scale * divisor
        else:
            ce_scale = torch.full_like(n_valid, 1.0 - alpha)
    if n_rows == 0:
        kd = ce = dt = student.new_zeros(0, dtype=cdt)
        grad_s = torch.empty_like(student, memory_format=torch.contiguous_format)
        grad_t = grad_s.clone() if teacher_grad else student.new_empty(0)
    else:
        kd, ce, grad_s, grad_t, dt = impl_for(student).distill_rows(
            student, teacher, temperature, target, ignore_index, kd_scale, ce_scale,
            teacher_grad, compute_dt)
    if reduction == "none":
        loss = kd.clone() if target is None else alpha * kd + (1.0 - alpha) * ce
    else:
        loss = kd.sum() / divisor if reduction != "sum" else kd.sum()
        if target is not None:
            ce_total = ce.sum()
            if reduction != "sum":
                ce_total = ce_total / n_valid.reshape(())
            loss = alpha * loss + (1.0 - alpha) * ce_total
    return loss, grad_s, grad_t, dt.clone() if compute_dt else dt


@distillation_2d.register_fake
def _(student, teacher, temperature, target, ignore_index, alpha, reduction, teacher_grad,
      compute_dt):
    n_rows = student.shape[0]
    acc = {"dtype": accumulation_dtype(student.dtype)}
    grad_s = torch.empty_like(student, memory_format=torch.contiguous_format)
    grad_t = torch.empty_like(teacher, memory_format=torch.contiguous_format) if teacher_grad \
        else student.new_empty(0)
    return (student.new_empty(n_rows if reduction == "none" else (), **acc), grad_s, grad_t,
            student.new_empty(n_rows if compute_dt else 0, **acc))


def _setup_context(ctx, inputs, output) -> None:
    student, _teacher, temperature, _target, _ii, alpha, reduction, _tg, _dt = inputs
    _loss, grad_s, grad_t, dt_rows = output
    ctx.mark_non_differentiable(grad_s, grad_t, dt_rows)
    ctx.set_materialize_grads(False)
    n_rows, n_cols = student.shape
    divisor = kd_divisor(reduction, n_rows, n_cols)
    ctx.post = 1.0 / max(divisor, 1) if defers(student.dtype, reduction) else 1.0
    ctx.t_factor = alpha / max(divisor, 1)
    ctx.save_for_backward(grad_s, grad_t, dt_rows, temperature)


def _scaled(ctx, buf: Tensor, g: Tensor, key: str) -> Tensor:
    """The gradient for the upstream ``g``: a scalar ``g`` rescales the buffer in place
    (:func:`~tempfast.ops.autograd.apply_upstream`: nothing moves when it is 1); a
    per-row ``g`` (``reduction="none"``) is applied out of place, so any number of backward
    passes, with any upstream rows zero, see the forward's gradient."""
    if g.numel() == 1:
        return apply_upstream(ctx, buf, g, key)
    return (buf.to(g.dtype) * g.unsqueeze(1)).to(buf.dtype)


def _backward(ctx, g_loss, _g_s, _g_t, _g_dt):
    if g_loss is None:
        return (None,) * 9
    refuse_double_backward("distillation_loss", g_loss)
    grad_s, grad_t, dt_rows, temperature = ctx.saved_tensors
    need_s, need_t, need_temp = ctx.needs_input_grad[:3]
    g = g_loss.detach().to(dt_rows.dtype).reshape(-1)
    out_s = out_t = out_temp = None
    upstream = g * ctx.post if ctx.post != 1.0 else g
    if need_s:
        out_s = _scaled(ctx, grad_s, upstream, "student")
    if need_t and grad_t.numel() == grad_s.numel():
        out_t = _scaled(ctx, grad_t, upstream, "teacher")
    if need_temp:
        out_temp = temperature_grad(dt_rows, g * ctx.t_factor, temperature)
    return out_s, out_t, out_temp, None, None, None, None, None, None


distillation_2d.register_autograd(_backward, setup_context=_setup_context)

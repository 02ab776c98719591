"""The cross-entropy's autograd: the custom ops ``tempfast::cross_entropy``,
``tempfast::cross_entropy_backward`` and ``tempfast::cross_entropy_inplace_`` (traced calls and
the calls no eager route takes) and :class:`FusedCrossEntropy` (eager mean and sum).

All take 2-D logits ``(N, C)``; ``target`` is ``(N,)`` int64 class indices or ``(N, C)``
probabilities; ``temperature`` fp32 ``(1,)`` or ``(N,)`` (fp64 for fp64 logits; on the eager
route also a one-value tensor as given, or None with the number by value); ``weight`` ``(C,)``
or ``None``. The custom ops take primitives; the autograd Functions take the normalised call
(:class:`.call.CrossEntropyCall`).

Two ways to get the logits' gradient:

* **fused** (``reduction`` mean or sum): the forward pass writes
  ``(s * p - c) / (T * divisor)`` while it has the row on chip, so the backward pass only
  multiplies by the incoming scalar gradient ``g`` -- and skips even that, on the device, when
  ``g == 1`` (the usual ``loss.backward()``). The logits are read once and the gradient written
  once. (fp16 keeps ``1 / divisor`` for the backward pass: see
  :func:`~tempfast.ops.autograd.defers_mean`.)
* **recompute** (``reduction="none"``, or a probability target that needs its own gradient):
  the forward pass stores only the per-row log-sum-exp; the backward pass re-reads the logits.

Eager reduced calls take :class:`FusedCrossEntropy` (one ``autograd.Function`` around the
path's ``ce_reduced`` / ``apply_upstream_``: on CUDA two launches forward, one backward, a few
allocations on the host); traced calls (``torch.compile``, export, any dispatch mode) take the
custom ops, which compose the same row kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_class_indices, check_temperature_values
from ..autograd import (
    apply_upstream,
    defers_mean,
    fused_scale,
    fused_upstream,
    reduce_rows,
    refuse_double_backward,
    row_scale,
    temperature_grad,
)
from ..dispatch import runs_triton
from . import torch_path
from .torch_path import mean_divisor, z_loss_scale

if TYPE_CHECKING:
    from .call import CrossEntropyCall


def impl_for(x: Tensor):
    """The module that computes the rows of ``x``: ``triton_path`` or ``torch_path``."""
    if runs_triton(x):
        from . import triton_path

        return triton_path
    return torch_path


def _check_values(logits: Tensor, target: Tensor, temperature: Tensor, ignore_index: int) -> None:
    check_temperature_values(temperature)
    if target.dim() == 1:
        check_class_indices(target, logits.shape[1], ignore_index)


# --------------------------------------------------------------------------------------------
# Forward op: loss (+ fused gradient).
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tempfast::cross_entropy", mutates_args=())
def cross_entropy_2d(
    logits: Tensor,
    target: Tensor,
    temperature: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    fused_grad: bool,
    compute_dt: bool,
    softcap: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, lse, grad, dt_rows, divisor)``.

    ``loss``: scalar, or ``(N,)`` for ``"none"``. ``lse``: ``(N,)``. ``grad``: the logits'
    gradient for an incoming gradient of 1, ``(N, C)`` in the logits' dtype, when
    ``fused_grad`` (else empty). ``dt_rows``: ``(N,)`` d(loss_row)/dT when ``compute_dt`` (else
    empty). ``divisor``: the mean's divisor (scalar). Everything but ``grad`` is fp32 (fp64 for
    fp64 logits). ``softcap`` (0: none) and ``z_loss``: see ``kernels/cross_entropy.py``.
    """
    _check_values(logits, target, temperature, ignore_index)
    n_rows, n_cols = logits.shape
    divisor = mean_divisor(target, weight, ignore_index, n_cols, accumulation_dtype(logits.dtype))
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if fused_grad \
        else logits.new_empty(0)
    if n_rows == 0:
        loss_rows = logits.new_zeros(0, dtype=divisor.dtype)
        return (reduce_rows(loss_rows, divisor, reduction), loss_rows.clone(), grad,
                loss_rows.clone(), divisor)
    scale = fused_scale(divisor, reduction, logits.dtype)
    z_scale = z_loss_scale(target, weight, ignore_index, divisor, reduction) if z_loss else None
    loss_rows, lse, dt_rows = impl_for(logits).ce_rows(
        logits, target, temperature, weight, ignore_index, label_smoothing,
        scale if fused_grad else None, grad if fused_grad else None, compute_dt, softcap,
        z_loss, z_scale,
    )
    # the rows may be views of one workspace: outputs of a custom op must not alias
    return (reduce_rows(loss_rows, divisor, reduction), lse.clone(), grad, dt_rows.clone(),
            divisor)


@cross_entropy_2d.register_fake
def _(logits, target, temperature, weight, ignore_index, label_smoothing, reduction,
      fused_grad, compute_dt, softcap=0.0, z_loss=0.0):
    n_rows = logits.shape[0]
    f32 = {"dtype": accumulation_dtype(logits.dtype)}
    loss = logits.new_empty(n_rows if reduction == "none" else (), **f32)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if fused_grad \
        else logits.new_empty(0)
    return (loss, logits.new_empty(n_rows, **f32), grad,
            logits.new_empty(n_rows if compute_dt else 0, **f32), logits.new_empty((), **f32))


@torch.library.custom_op("tempfast::cross_entropy_backward", mutates_args=())
def cross_entropy_backward_2d(
    logits: Tensor,
    target: Tensor,
    temperature: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    scale: Tensor,
    softcap: float = 0.0,
    z_loss: float = 0.0,
    z_scale: Tensor | None = None,
) -> Tensor:
    """The logits' gradient ``scale / T * (s * p - c)`` recomputed from the logits (``scale``:
    the upstream gradient per row, ``(1,)`` or ``(N,)``; ``z_scale``: the z-loss's factor)."""
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if logits.numel():
        impl_for(logits).ce_rows(logits, target, temperature, weight, ignore_index,
                                 label_smoothing, scale, grad, False, softcap, z_loss, z_scale)
    return grad


@cross_entropy_backward_2d.register_fake
def _(logits, target, temperature, weight, ignore_index, label_smoothing, scale, softcap=0.0,
      z_loss=0.0, z_scale=None):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _target_grad(logits: Tensor, temperature: Tensor, weight: Tensor | None, lse: Tensor,
                 label_smoothing: float, scale: Tensor, target: Tensor,
                 softcap: float) -> Tensor:
    """d loss / d q for probability targets: ``-g (1 - eps) w (a / T - lse)`` (``a`` the
    soft-capped logits)."""
    a = logits.to(lse.dtype)
    if softcap:
        a = softcap * torch.tanh(a / softcap)
    logp = a / temperature.reshape(-1, 1) - lse.unsqueeze(1)
    scale = scale.unsqueeze(1) * (label_smoothing - 1.0)
    grad = logp * scale if weight is None else logp * scale * weight.to(lse.dtype)
    return grad.to(target.dtype)


def _setup_context(ctx, inputs, output) -> None:
    (logits, target, temperature, weight, ignore_index, label_smoothing, reduction,
     fused_grad, _compute_dt, softcap, z_loss) = inputs
    _loss, lse, grad, dt_rows, divisor = output
    ctx.mark_non_differentiable(lse, grad, dt_rows, divisor)
    # Only the loss is differentiated: without this, autograd would allocate and zero-fill a
    # gradient for every other output (an N x C buffer for ``grad``) on each backward.
    ctx.set_materialize_grads(False)
    ctx.fused = fused_grad
    ctx.options = (ignore_index, label_smoothing, reduction, softcap, z_loss)
    if fused_grad:
        ctx.save_for_backward(grad, dt_rows, divisor, temperature)
    else:
        ctx.save_for_backward(logits, target, temperature, weight, lse, dt_rows, divisor)


def _backward(ctx, g_loss, _g_lse, _g_grad, _g_dt, _g_divisor):
    if g_loss is None:  # the loss was not differentiated (only its side outputs were used)
        return (None,) * 11
    refuse_double_backward("cross_entropy", g_loss)
    ignore_index, label_smoothing, reduction, softcap, z_loss = ctx.options
    need_logits, need_target, need_t = ctx.needs_input_grad[:3]
    grad_logits = grad_target = grad_t = None
    if ctx.fused:
        grad, dt_rows, divisor, temperature = ctx.saved_tensors
        scale = row_scale(g_loss, divisor, reduction)
        if need_logits:
            upstream = fused_upstream(g_loss, divisor, reduction, grad.dtype)
            grad_logits = apply_upstream(ctx, grad, upstream)
    else:
        logits, target, temperature, weight, lse, dt_rows, divisor = ctx.saved_tensors
        scale = row_scale(g_loss, divisor, reduction)
        if need_logits:
            z_scale = z_loss_scale(target, weight, ignore_index, divisor, reduction) \
                if z_loss else None
            grad_logits = cross_entropy_backward_2d(logits, target, temperature, weight,
                                                    ignore_index, label_smoothing, scale,
                                                    softcap, z_loss, z_scale)
        if need_target:
            grad_target = _target_grad(logits, temperature, weight, lse, label_smoothing, scale,
                                       target, softcap)
    if need_t:
        grad_t = temperature_grad(dt_rows, scale, temperature)
    return (grad_logits, grad_target, grad_t) + (None,) * 8


cross_entropy_2d.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# In-place mode: the forward pass writes the gradient into the logits buffer.
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tempfast::cross_entropy_inplace_", mutates_args=("logits",))
def cross_entropy_inplace_2d(
    logits: Tensor,
    target: Tensor,
    temperature: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_dt: bool,
    softcap: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Like ``cross_entropy`` with ``fused_grad``, but the gradient overwrites ``logits``.
    Returns ``(loss, dt_rows, divisor, lse)``."""
    _check_values(logits, target, temperature, ignore_index)
    n_cols = logits.shape[1]
    divisor = mean_divisor(target, weight, ignore_index, n_cols, accumulation_dtype(logits.dtype))
    scale = fused_scale(divisor, reduction, logits.dtype)
    if logits.shape[0] == 0:
        loss_rows = logits.new_zeros(0, dtype=divisor.dtype)
        return (reduce_rows(loss_rows, divisor, reduction), loss_rows.clone(), divisor,
                loss_rows.clone())
    z_scale = z_loss_scale(target, weight, ignore_index, divisor, reduction) if z_loss else None
    loss_rows, lse, dt_rows = impl_for(logits).ce_rows(
        logits, target, temperature, weight, ignore_index, label_smoothing, scale, logits,
        compute_dt, softcap, z_loss, z_scale,
    )
    return (reduce_rows(loss_rows.clone(), divisor, reduction), dt_rows.clone(), divisor,
            lse.clone())


@cross_entropy_inplace_2d.register_fake
def _(logits, target, temperature, weight, ignore_index, label_smoothing, reduction,
      compute_dt, softcap=0.0, z_loss=0.0):
    n_rows = logits.shape[0]
    f32 = {"dtype": accumulation_dtype(logits.dtype)}
    return (logits.new_empty(n_rows if reduction == "none" else (), **f32),
            logits.new_empty(n_rows if compute_dt else 0, **f32), logits.new_empty((), **f32),
            logits.new_empty(n_rows, **f32))


class CrossEntropyInplace(torch.autograd.Function):
    """Autograd for :func:`cross_entropy_inplace_2d` (the ``inplace_op`` route): the backward
    pass returns the logits buffer, which the forward pass filled with the gradient, rescaled
    by the incoming gradient (:func:`apply_upstream`). ``temperature``: a ``(1,)`` or ``(N,)``
    tensor; the other arguments come from ``call``."""

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: Tensor,
                call: CrossEntropyCall) -> tuple[Tensor, Tensor]:
        loss, dt_rows, divisor, lse = cross_entropy_inplace_2d(
            logits, call.target, temperature, call.weight, call.ignore_index,
            call.label_smoothing, call.reduction, ctx.needs_input_grad[1], call.softcap,
            call.z_loss,
        )
        ctx.reduction = call.reduction
        ctx.save_for_backward(logits, dt_rows, divisor, temperature)
        ctx.mark_non_differentiable(lse)
        return loss, lse

    @staticmethod
    def backward(ctx, g_loss, _g_lse):
        refuse_double_backward("cross_entropy", g_loss)
        buf, dt_rows, divisor, temperature = ctx.saved_tensors
        grad = apply_upstream(ctx, buf, fused_upstream(g_loss, divisor, ctx.reduction, buf.dtype))
        grad_t = None
        if ctx.needs_input_grad[1]:
            grad_t = temperature_grad(dt_rows, row_scale(g_loss, divisor, ctx.reduction),
                                      temperature)
        return grad, grad_t, None


# --------------------------------------------------------------------------------------------
# The eager route of a fused (mean / sum) cross-entropy.
# --------------------------------------------------------------------------------------------
class FusedCrossEntropy(torch.autograd.Function):
    """``reduction`` mean or sum, eager (the ``fused`` and ``fused_inplace`` routes): the
    forward pass writes the gradient for an upstream gradient of 1 (into ``logits`` itself
    with ``inplace``), the backward pass applies the upstream gradient (the path's
    ``apply_upstream_``). ``temperature``: a tensor (one value, possibly 0-dim, or one per
    row) or None, the number ``call.t_value`` then passed by value; the other arguments come
    from ``call``. Returns the loss, and with ``call.return_z_loss`` the rows' log-sum-exps
    too (not differentiable)."""

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: Tensor | None, call: CrossEntropyCall,
                inplace: bool) -> Tensor | tuple[Tensor, Tensor]:
        if temperature is not None:
            check_temperature_values(temperature)
        if not call.probs:
            check_class_indices(call.target, logits.shape[1], call.ignore_index)
        impl = impl_for(logits)
        defer = defers_mean(logits.dtype, call.reduction)
        compute_dt = ctx.needs_input_grad[1]
        grad = None
        if inplace:
            grad = logits
        elif ctx.needs_input_grad[0]:
            grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        res = impl.ce_reduced(logits, call.target, temperature, call.t_value, call.weight,
                              call.ignore_index, call.label_smoothing, call.reduction, grad,
                              compute_dt, defer, call.softcap, call.z_loss)
        if inplace:
            torch.autograd.graph.increment_version(logits)
        # saved, not held: after a backward that frees the graph, autograd can hand the buffer
        # to ``.grad`` without a copy
        ctx.save_for_backward(grad)
        ctx.state = (impl, res, defer)
        ctx.t_grad, ctx.t_shape = None, None
        if compute_dt:
            ctx.t_grad = "scalar" if temperature.numel() == 1 else "rows"
            ctx.t_shape = temperature.shape
        if not call.return_z_loss:
            return res.loss
        lse = res.lse
        ctx.mark_non_differentiable(lse)
        return res.loss, lse

    @staticmethod
    def backward(ctx, g_loss, *_g_lse):
        refuse_double_backward("cross_entropy", g_loss)
        impl, res, defer = ctx.state
        (grad,) = ctx.saved_tensors
        first = getattr(ctx, "first_upstream", None)
        if first is None:
            ctx.first_upstream = g_loss  # kept for a second pass through a retained graph
            grad_t = impl.apply_upstream_(grad, g_loss, res, ctx.t_grad, defer, ctx.t_shape)
            return grad, grad_t, None, None
        return _again(grad, g_loss, first), _again_t(res, ctx.t_grad, g_loss), None, None


def _again(grad: Tensor | None, g: Tensor, first: Tensor) -> Tensor | None:
    """A later backward through a retained graph: ``grad * g / g_first`` out of place (the
    buffer holds the first call's gradient)."""
    if grad is None:
        return None
    if bool((first == 0).any()):  # a rare path (retain_graph): a host check is affordable
        raise RuntimeError("tempfast: the first backward through this graph had a zero upstream "
                           "gradient, which erased the fused gradient; recompute the loss")
    acc = accumulation_dtype(grad.dtype)
    return (grad.to(acc) * (g.to(acc) / first.to(acc))).to(grad.dtype)


def _again_t(res, t_grad: str | None, g: Tensor) -> Tensor | None:
    if t_grad is None:
        return None
    dt = res.dt_rows() if t_grad == "rows" else res.dt_total()
    return dt * g.to(dt.dtype)

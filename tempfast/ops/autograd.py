"""Autograd helpers shared by the ops: reductions, the upstream gradient applied to a gradient
computed in the forward pass, and the refusal of double backward.

Shapes: ``loss_rows``, ``dt_rows`` ``(N,)``; ``divisor`` the mean's divisor (0-dim); an upstream
gradient ``g`` is 0-dim (mean / sum) or ``(N,)`` (``"none"``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .._checks import accumulation_dtype
from .rescale import rescale_


def reduce_rows(loss_rows: Tensor, divisor: Tensor, reduction: str) -> Tensor:
    """``"none"``: the rows; ``"sum"``: their sum; ``"mean"``: their sum over ``divisor``."""
    if reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    return total / divisor if reduction == "mean" else total


def mean_factor(numerator: Tensor, divisor: Tensor) -> Tensor:
    """``numerator / divisor`` for the gradient of a mean, 0 where ``divisor`` is 0.

    ``divisor`` is 0 only when no row counts (all ignored, or every counted row has weight 0):
    then every row's gradient is 0, as torch gives for all rows ignored, instead of ``0 * inf``
    = NaN. (The mean itself stays ``0 / 0`` = NaN, as in torch.) No host synchronisation."""
    return torch.where(divisor == 0, torch.zeros_like(numerator), numerator / divisor)


def row_scale(g: Tensor, divisor: Tensor, reduction: str) -> Tensor:
    """d(loss)/d(loss_row) times the upstream gradient: ``(1,)`` for mean/sum, ``(N,)`` else."""
    g = g.to(divisor.dtype)
    if reduction == "mean":
        return mean_factor(g, divisor).reshape(1)
    return g.reshape(1) if reduction == "sum" else g


def defers_mean(dtype: torch.dtype, reduction: str) -> bool:
    """fp16 gradients keep the mean's ``1 / divisor`` out of the forward pass: divided by ``N``
    (thousands of rows) before a loss scaler's factor arrives, most of them would underflow
    fp16. They receive ``g / divisor`` in the backward pass instead (one more pass)."""
    return reduction == "mean" and dtype == torch.float16


def fused_scale(divisor: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """The factor a forward pass folds into a gradient it writes: ``1 / divisor`` for the mean
    (unless deferred, see :func:`defers_mean`), else 1. Shape ``(1,)``."""
    if reduction == "mean" and not defers_mean(dtype, reduction):
        return mean_factor(torch.ones_like(divisor), divisor).reshape(1)
    return divisor.new_ones(1)


def fused_upstream(g: Tensor, divisor: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """What the backward pass multiplies such a gradient by: ``g`` (``g / divisor`` if the
    forward pass deferred the mean)."""
    return row_scale(g, divisor, reduction) if defers_mean(dtype, reduction) else g


def temperature_grad(dt_rows: Tensor, scale: Tensor, temperature: Tensor) -> Tensor:
    """dL/dT in the temperature's shape: per-row ``dt_rows * scale``, summed for a scalar T."""
    dt = dt_rows * scale
    return dt.sum().reshape(temperature.shape) if temperature.numel() == 1 else dt


def _mul_rows(buf: Tensor, g: Tensor) -> Tensor:
    """``buf * g`` row-wise (``g`` of shape ``(1,)`` or ``(N,)``), out of place, in fp32."""
    factor = g if g.numel() == 1 else g.unsqueeze(1)
    return (buf.to(factor.dtype) * factor).to(buf.dtype)


def is_eager(t: Tensor) -> bool:
    """True for a plain tensor outside any tracing (``torch.compile``, export, fake tensors,
    any dispatch mode)."""
    return (type(t) is torch.Tensor and not torch.compiler.is_compiling()
            and _get_current_dispatch_mode() is None)


def refuse_double_backward(op: str, t: Tensor) -> None:
    """Raise if a backward pass runs with ``create_graph=True``: the ops' backward passes are
    not differentiable, and returning gradients without a graph would be silently wrong."""
    if torch.is_grad_enabled() and is_eager(t):
        raise RuntimeError(f"tempfast.{op}: double backward (create_graph=True) is not "
                           f"supported; use tempfast.reference.{op} for higher-order gradients")


def apply_upstream(ctx, buf: Tensor, g: Tensor, key: str = "logits") -> Tensor:
    """A gradient from a 2-D buffer ``buf`` holding it for an upstream gradient of 1.

    The first backward call rescales ``buf`` in place (rows whose ``g`` is exactly 1 are skipped
    on the device: no memory traffic, no synchronisation) and returns it. A later call through
    a retained graph returns ``buf * g / g_first`` out of place, so earlier results are never
    modified; it raises if ``g_first`` had a zero (the information is gone). ``key`` names the
    buffer when one backward rescales several. While traced the product is always out of place.
    """
    g = g.detach().to(accumulation_dtype(buf.dtype)).reshape(-1)
    if not is_eager(buf):
        return _mul_rows(buf, g)
    if not hasattr(ctx, "first_upstream"):
        ctx.first_upstream = {}
    first = ctx.first_upstream.get(key)
    if first is None:
        ctx.first_upstream[key] = g.clone()
        if buf.numel():
            # ``.data``: this rescale must not bump the saved buffer's version counter, or a
            # retained graph could not be traversed again.
            rescale_(buf.data, g)
        return buf
    if bool((first == 0).any()):  # a rare path (retain_graph): a host check is affordable
        raise RuntimeError("tempfast: the first backward through this graph had a zero upstream "
                           "gradient, which erased the fused gradient; recompute the loss")
    return _mul_rows(buf, g / first)

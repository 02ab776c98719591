"""The softmax's autograd: the custom ops ``tempfast::softmax`` and ``tempfast::softmax_backward``
(traced calls) and :class:`Softmax` (eager calls).

Both work on 2-D ``(N, C)`` tensors along dim 1 (:mod:`.call` moves any ``dim`` last and
flattens the rest). ``temperature`` is fp32 (fp64 for fp64 inputs), ``(1,)`` or ``(N,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_temperature_values
from .. import autocast
from ..autograd import refuse_double_backward
from ..dispatch import runs_triton
from . import torch_path


def impl_for(x: Tensor):
    """The module that computes the rows of ``x``: ``triton_path`` or ``torch_path``."""
    if runs_triton(x):
        from . import triton_path

        return triton_path
    return torch_path


@torch.library.custom_op("tempfast::softmax", mutates_args=())
def softmax_2d(x: Tensor, temperature: Tensor, log: bool) -> Tensor:
    """``softmax(x / T)`` (``log=True``: ``log_softmax``) over dim 1 of ``x (N, C)``."""
    check_temperature_values(temperature)
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return impl_for(x).softmax_forward(x, temperature, log)


@softmax_2d.register_fake
def _(x: Tensor, temperature: Tensor, log: bool) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


autocast.register("softmax", "softmax")


@torch.library.custom_op("tempfast::softmax_backward", mutates_args=())
def softmax_backward_2d(
    y: Tensor, dy: Tensor, temperature: Tensor, log: bool, x: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(dL/dx, dL/dT per row)`` from the forward output ``y``, its gradient ``dy`` and, when
    the temperature needs a gradient, the forward input ``x`` (else ``None``: empty ``dT``)."""
    if y.numel() == 0:
        n_dt = y.shape[0] if x is not None else 0
        return (torch.zeros_like(y, memory_format=torch.contiguous_format),
                torch.zeros(n_dt, dtype=accumulation_dtype(y.dtype), device=y.device))
    return impl_for(y).softmax_backward(y, dy, temperature, log, x)


@softmax_backward_2d.register_fake
def _(y: Tensor, dy: Tensor, temperature: Tensor, log: bool,
      x: Tensor | None) -> tuple[Tensor, Tensor]:
    n_dt = y.shape[0] if x is not None else 0
    return (torch.empty_like(y, memory_format=torch.contiguous_format),
            y.new_empty(n_dt, dtype=accumulation_dtype(y.dtype)))


def _setup_context(ctx, inputs, output) -> None:
    x, temperature, log = inputs
    ctx.log = log
    ctx.t_grad = ctx.needs_input_grad[1]
    ctx.save_for_backward(output, temperature, x if ctx.t_grad else None)


def _backward(ctx, dy: Tensor):
    refuse_double_backward("log_softmax" if ctx.log else "softmax", dy)
    y, temperature, x = ctx.saved_tensors
    dx, dt_row = softmax_backward_2d(y, dy, temperature, ctx.log, x)
    dt = None
    if ctx.t_grad:
        dt = dt_row.sum().reshape(temperature.shape) if temperature.numel() == 1 else dt_row
    return dx, dt, None


softmax_2d.register_autograd(_backward, setup_context=_setup_context)


class Softmax(torch.autograd.Function):
    """The eager route of :func:`softmax_2d` on plain tensors: the same implementation
    functions, with a Python-number temperature passed by value (``temperature`` is then
    ``None``): no tensor is made for it and no fill kernel runs."""

    @staticmethod
    def forward(ctx, x, temperature, t_value, log):
        if temperature is not None:
            check_temperature_values(temperature)
        y = impl_for(x).softmax_forward(x, temperature, log, t_value)
        ctx.log, ctx.t_value = log, t_value
        ctx.t_grad = ctx.needs_input_grad[1]
        ctx.save_for_backward(y, temperature, x if ctx.t_grad else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        refuse_double_backward("log_softmax" if ctx.log else "softmax", dy)
        y, temperature, x = ctx.saved_tensors
        dx, dt_row = impl_for(y).softmax_backward(y, dy, temperature, ctx.log, x, ctx.t_value)
        dt = None
        if ctx.t_grad:
            dt = dt_row.sum().reshape(temperature.shape) if temperature.numel() == 1 else dt_row
        return dx, dt, None, None

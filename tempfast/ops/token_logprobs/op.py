"""The token statistics' autograd: the custom ops ``tempfast::token_stats`` and
``tempfast::token_stats_backward`` (traced calls) and :class:`TokenStats` (eager calls).

Both work on ``x (N, V)`` with class indices ``target (N,)`` (int64) and return, per row,
``(logp, H, lse)``: ``log softmax(a / T)[y]``, the entropy of ``softmax(a / T)`` (empty
unless ``entropy``) and its log-sum-exp, with ``a = softcap tanh(x / softcap)`` (``softcap``
0: ``a = x``). Each of the three outputs is differentiable (the cross-entropy with z-loss
differentiates ``lse``); the math of the backward pass is in ``kernels/token_logprobs.py``.
An eager call whose entropy receives no gradient runs the backward without the entropy's
terms (the custom op, traced, receives zeros and runs them whenever ``entropy`` is set).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import accumulation_dtype, check_class_indices, check_temperature_values
from ..autograd import refuse_double_backward
from ..dispatch import runs_triton
from . import torch_path


def impl_for(x: Tensor):
    """The module that computes the rows of ``x``: ``triton_path`` or ``torch_path``."""
    if runs_triton(x):
        from . import triton_path

        return triton_path
    return torch_path


def check_values(n_cols: int, target: Tensor, temperature: Tensor | None,
                 ignore_index: int) -> None:
    """The values a host-memory call reads (a CUDA call gives NaN rows instead)."""
    if temperature is not None:
        check_temperature_values(temperature)
    check_class_indices(target, n_cols, ignore_index)


def _forward(x: Tensor, target: Tensor, temperature: Tensor | None, t_value: float,
             softcap: float, ignore_index: int, entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    check_values(x.shape[1], target, temperature, ignore_index)
    return impl_for(x).token_forward(x, target, temperature, t_value, softcap, ignore_index,
                                     entropy)


def temperature_grad(x: Tensor, target: Tensor, temperature: Tensor | None, t_value: float,
                     softcap: float, ignore_index: int, saved: tuple[Tensor, Tensor, Tensor],
                     grads: tuple[Tensor | None, Tensor | None, Tensor | None],
                     compute_dt: bool) -> tuple[Tensor, Tensor]:
    """``(dL/dx, dL/dT per row)`` from the forward's ``saved = (logp, H, lse)`` and the
    upstream ``grads = (g_lp, g_H, g_lse)`` (``None``: no gradient); dL/dT per row by
    :func:`dt_from_sums` (empty without ``compute_dt``)."""
    logp, h, lse = saved
    g_lp, g_h, g_lse = grads
    gx, sums = impl_for(x).token_backward(x, target, temperature, t_value, softcap,
                                          ignore_index, h, lse, g_lp, g_h, g_lse, compute_dt)
    if not compute_dt:
        return gx, sums.new_zeros(0)
    return gx, dt_from_sums(logp, h, lse, sums, grads, temperature, t_value)


def dt_from_sums(logp: Tensor, h: Tensor, lse: Tensor, sums: Tensor,
                 grads: tuple[Tensor | None, Tensor | None, Tensor | None],
                 temperature: Tensor | None, t_value: float) -> Tensor:
    """dL/dT per row, ``(g_H S2 - g_lp (logp - S1) - g_lse (lse + S1)) / T``, from the
    backward's sums ``S (N, 2)`` (``kernels/token_logprobs.py``)."""
    g_lp, g_h, g_lse = grads
    s1 = sums[:, 0]
    dt = torch.zeros_like(s1)
    if g_lp is not None:
        dt = dt - g_lp.to(dt.dtype) * (logp - s1)
    if g_lse is not None:
        dt = dt - g_lse.to(dt.dtype) * (lse + s1)
    if g_h is not None:
        dt = dt + g_h.to(dt.dtype) * sums[:, 1]
    return dt / (temperature.to(dt.dtype) if temperature is not None else t_value)


def _dt_of(dt_rows: Tensor, temperature: Tensor) -> Tensor:
    """dL/dT in the temperature's shape (a one-value T: the rows' sum)."""
    if temperature.numel() == 1:
        return dt_rows.sum().reshape(temperature.shape).to(temperature.dtype)
    return dt_rows.to(temperature.dtype)


@torch.library.custom_op("tempfast::token_stats", mutates_args=())
def token_stats_2d(x: Tensor, target: Tensor, temperature: Tensor, softcap: float,
                   ignore_index: int, entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, H, lse)`` of the rows of ``x (N, V)`` (see the module docstring)."""
    return _forward(x, target, temperature, 0.0, softcap, ignore_index, entropy)


@token_stats_2d.register_fake
def _(x, target, temperature, softcap, ignore_index, entropy):
    n, cdt = x.shape[0], accumulation_dtype(x.dtype)
    return (x.new_empty(n, dtype=cdt), x.new_empty(n if entropy else 0, dtype=cdt),
            x.new_empty(n, dtype=cdt))


@torch.library.custom_op("tempfast::token_stats_backward", mutates_args=())
def token_stats_backward_2d(
    x: Tensor, target: Tensor, temperature: Tensor, softcap: float, ignore_index: int,
    logp: Tensor, h: Tensor, lse: Tensor, g_lp: Tensor, g_h: Tensor | None, g_lse: Tensor,
    compute_dt: bool,
) -> tuple[Tensor, Tensor]:
    """``(dL/dx, dL/dT per row)`` (see :func:`temperature_grad`)."""
    return temperature_grad(x, target, temperature, 0.0, softcap, ignore_index,
                            (logp, h, lse), (g_lp, g_h, g_lse), compute_dt)


@token_stats_backward_2d.register_fake
def _(x, target, temperature, softcap, ignore_index, logp, h, lse, g_lp, g_h, g_lse,
      compute_dt):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            lse.new_empty(x.shape[0] if compute_dt else 0))


def _setup_context(ctx, inputs, output) -> None:
    x, target, temperature, softcap, ignore_index, entropy = inputs
    ctx.softcap, ctx.ignore_index, ctx.entropy = softcap, ignore_index, entropy
    ctx.t_grad = ctx.needs_input_grad[2]
    ctx.save_for_backward(x, target, temperature, *output)


def _backward(ctx, g_lp: Tensor, g_h: Tensor, g_lse: Tensor):
    refuse_double_backward("token_logprobs", g_lp)
    x, target, temperature, logp, h, lse = ctx.saved_tensors
    gx, dt = token_stats_backward_2d(x, target, temperature, ctx.softcap, ctx.ignore_index,
                                     logp, h, lse, g_lp, g_h if ctx.entropy else None, g_lse,
                                     ctx.t_grad)
    return gx, None, _dt_of(dt, temperature) if ctx.t_grad else None, None, None, None


token_stats_2d.register_autograd(_backward, setup_context=_setup_context)


class TokenStats(torch.autograd.Function):
    """The eager route of :func:`token_stats_2d` on plain tensors: the same implementation
    functions, a Python-number temperature passed by value (``temperature`` None), and no
    entropy terms in the backward pass when the entropy receives no gradient."""

    @staticmethod
    def forward(ctx, x, target, temperature, t_value, softcap, ignore_index, entropy):
        out = _forward(x, target, temperature, t_value, softcap, ignore_index, entropy)
        ctx.set_materialize_grads(False)
        ctx.args = (t_value, softcap, ignore_index)
        ctx.t_grad = ctx.needs_input_grad[2]
        ctx.save_for_backward(x, target, temperature, *out)
        return out

    @staticmethod
    def backward(ctx, g_lp, g_h, g_lse):
        x, target, temperature, *saved = ctx.saved_tensors
        if g_lp is None and g_h is None and g_lse is None:
            return (None,) * 7
        refuse_double_backward("token_logprobs",
                               next(g for g in (g_lp, g_h, g_lse) if g is not None))
        t_value, softcap, ignore_index = ctx.args
        gx, dt = temperature_grad(x, target, temperature, t_value, softcap, ignore_index,
                                  tuple(saved), (g_lp, g_h, g_lse), ctx.t_grad)
        return gx, None, _dt_of(dt, temperature) if ctx.t_grad else None, None, None, None, None

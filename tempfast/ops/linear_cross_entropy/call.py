"""One fused-linear-head call: its arguments checked and normalised once (:func:`normalise`),
its route (:func:`route`) and its loss (:func:`run`).

Routes:

* ``custom_op``: the custom op ``tempfast::linear_cross_entropy``, which computes the logits
  ``chunk`` rows at a time and, for ``mean`` and ``sum``, every gradient in the forward pass.
* ``class_parallel``: ``process_group`` given (the weight holds this rank's classes, possibly
  none): :mod:`tempfast.ops.class_parallel`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ... import _checks
from .. import class_parallel
from ..cross_entropy.call import check_extras
from .op import default_chunk_rows, linear_cross_entropy_2d

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class LinearCall(NamedTuple):
    """A linear-head call, normalised: ``hidden (N, H)`` (leading dimensions flattened),
    ``weight (C, H)``, ``bias (C,)`` or None, ``target (N,)`` int64, the temperature ``(1,)``
    or ``(N,)`` in the accumulation dtype, ``chunk`` rows per chunk; the loss of ``"none"`` has
    ``rows_shape``."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    target: Tensor
    temperature: Tensor
    ignore_index: int
    label_smoothing: float
    reduction: str
    chunk: int
    rows_shape: torch.Size
    process_group: ProcessGroup | None = None  # class-parallel: the ranks that share the classes
    start: int | None = None  # class-parallel: this rank's first class, if given
    accumulate_in_weight_dtype: bool = False  # the weight gradient's accumulator dtype
    softcap: float = 0.0  # the cap of ``softcap tanh(z / softcap)`` before ``/ T``; 0: none
    z_loss: float = 0.0  # the z-loss's coefficient


def normalise(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
              temperature: float | Tensor, *, ignore_index: int, reduction: str,
              label_smoothing: float, chunk_size: int | None, process_group=None,
              start: int | None = None, accum_dtype: torch.dtype | None = None,
              softcap: float | None = None, z_loss: float = 0.0) -> LinearCall:
    """Check every argument once (a one-line error naming the first bad one) and normalise
    them into a :class:`LinearCall`. With ``process_group``, ``weight`` and ``bias`` are this
    rank's rows of a class-parallel head (``C_r``, possibly 0)."""
    sharded = process_group is not None
    if sharded:
        process_group = class_parallel.check_group(process_group)
        start = class_parallel.check_start(start)
    elif start is not None:
        raise ValueError("start: only meaningful with process_group (a class-sharded weight)")
    classes = "C_r" if sharded else "C"
    _checks.check_floating("hidden", hidden)
    _checks.check_floating("weight", weight)
    if hidden.dim() == 0:
        raise ValueError("hidden: expected shape (*, H), got a 0-dim tensor")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight: expected shape ({classes}, {hidden.shape[-1]}) to match "
                         f"hidden (*, H), got {tuple(weight.shape)}")
    if weight.shape[0] == 0 and not sharded:
        raise ValueError("weight: the class dimension (first) is empty")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype}")
    if bias is not None:
        _checks.check_floating("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias: dtype {bias.dtype} differs from hidden's {hidden.dtype}")
    rows_shape = hidden.shape[:-1]
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.shape != rows_shape:
        raise ValueError(f"target: expected shape {tuple(rows_shape)} (class indices), got "
                         f"{tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target: class indices must be an integer tensor, got {target.dtype}")
    _checks.check_reduction(reduction)
    label_smoothing = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    _checks.check_same_device(hidden=hidden, weight=weight, bias=bias, target=target)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    acc = _checks.accumulation_dtype(hidden.dtype)
    in_weight_dtype = _check_accum_dtype(accum_dtype, acc, weight.dtype, sharded)
    t = _checks.temperature_rows(temperature, rows_shape, hidden.device, acc)
    n_rows = math.prod(rows_shape)
    if chunk_size is None:
        accum_size = torch.empty((), dtype=weight.dtype if in_weight_dtype else acc).element_size()
        chunk_size = default_chunk_rows(n_rows, weight.shape[0], hidden.shape[-1],
                                        hidden.element_size(), accum_size)
    extras = check_extras(softcap, z_loss, False)
    return LinearCall(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                      target.reshape(-1).long(), t, ignore_index, label_smoothing, reduction,
                      chunk_size, rows_shape, process_group, start, in_weight_dtype, **extras)


def _check_accum_dtype(accum_dtype: torch.dtype | None, acc: torch.dtype,
                       weight_dtype: torch.dtype, sharded: bool) -> bool:
    """Whether the weight gradient accumulates in the weight's own dtype (``accum_dtype`` the
    weight's dtype, not the default fp32 / fp64), or a one-line error."""
    if accum_dtype is None or accum_dtype == acc:
        return False
    if accum_dtype != weight_dtype:
        raise ValueError(f"accum_dtype: expected None, {acc} or the weight's dtype "
                         f"{weight_dtype}, got {accum_dtype}")
    if sharded:
        raise ValueError("accum_dtype: the class-parallel head accumulates in fp32 only")
    return True


def route(call: LinearCall) -> str:
    """The route of ``call`` (see the module docstring)."""
    return "custom_op" if call.process_group is None else "class_parallel"


def run(call: LinearCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 inputs), a scalar or ``rows_shape``."""
    if route(call) == "class_parallel":
        return class_parallel.run(call)
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and call.hidden.requires_grad, grad_on and call.weight.requires_grad,
             grad_on and call.bias is not None and call.bias.requires_grad]
    fused = needs if call.reduction != "none" else [False, False, False]
    loss = linear_cross_entropy_2d(
        call.hidden, call.weight, call.bias, call.target, call.temperature, call.ignore_index,
        call.label_smoothing, call.reduction, call.chunk, fused,
        grad_on and call.temperature.requires_grad, call.accumulate_in_weight_dtype,
        call.softcap, call.z_loss)[0]
    return loss.reshape(call.rows_shape) if call.reduction == "none" else loss

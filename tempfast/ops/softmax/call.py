"""One softmax call: its arguments checked and normalised once (:func:`normalise`), the route it
takes (:func:`route`) and its result (:func:`run`).

Routes:

* ``empty``: no element: nothing to normalise; the result is an empty tensor of ``x``'s shape
  (a learnable ``T`` still receives a zero gradient).
* ``aten``: a small eager CPU call whose temperature needs no gradient
  (:func:`tempfast.ops.dispatch.small_on_cpu`): stock aten ops, eager PyTorch's host cost and
  twice differentiable (:func:`.torch_path.small_softmax`).
* ``eager``: any other eager call: :class:`.op.Softmax`, the temperature passed by value when
  it is a number (no tensor made for it).
* ``custom_op``: a traced call (``torch.compile``, export, fake tensors, any dispatch mode):
  the custom op ``tempfast::softmax``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ... import _checks
from ..autocast import autocast_input
from ..autograd import is_eager
from ..dispatch import small_on_cpu
from .op import Softmax, softmax_2d
from .torch_path import small_softmax


class SoftmaxCall(NamedTuple):
    """A softmax call, normalised: ``rows (N, C)`` are ``x`` with ``dim`` moved last and the
    rest flattened (a view where possible); the temperature is ``temperature`` (a tensor:
    one value or one per row, in the accumulation dtype) or ``t_value`` (a number, by value,
    when ``temperature`` is None)."""

    rows: Tensor
    temperature: Tensor | None
    t_value: float
    log: bool
    moved_shape: torch.Size  # x's shape with dim last: the result's, before moving dim back
    dim: int | None  # where the classes go back to; None when they were last already
    out_shape: torch.Size  # the result's shape (x's)


def normalise(x: Tensor, temperature: float | Tensor, dim: int, log: bool) -> SoftmaxCall:
    """Check every argument once (a one-line error naming the first bad one) and normalise
    them into a :class:`SoftmaxCall`. Under autocast, ``x`` is cast as autocast casts the
    input of ``torch.softmax`` (:mod:`tempfast.ops.autocast`)."""
    _checks.check_floating("x", x)
    x = autocast_input(x, "softmax")
    if x.dim() == 0:  # one class: as torch, the result has x's 0-dim shape
        t, t_value = _checks.temperature_of_rows(temperature, torch.Size(()), x)
        return SoftmaxCall(x.reshape(1, 1), t, t_value, log, torch.Size((1,)), None, x.shape)
    dim = _checks.check_dim(dim, x.dim())
    moved = x.movedim(dim, -1) if dim != x.dim() - 1 else x
    t, t_value = _checks.temperature_of_rows(temperature, moved.shape[:-1], x)
    n_rows = math.prod(moved.shape[:-1])  # not -1: an empty x may have no classes either
    rows = moved if moved.dim() == 2 else moved.reshape(n_rows, moved.shape[-1])
    return SoftmaxCall(rows, t, t_value, log, moved.shape, dim if moved is not x else None,
                       x.shape)


def route(call: SoftmaxCall) -> str:
    """The route of ``call`` (see the module docstring)."""
    if call.rows.numel() == 0:
        return "empty"
    if not is_eager(call.rows):
        return "custom_op"
    t = call.temperature
    learnable = t is not None and t.requires_grad and torch.is_grad_enabled()
    return "aten" if small_on_cpu(call.rows, learnable) else "eager"


def run(call: SoftmaxCall) -> Tensor:
    """The result of ``call``, shaped like its input."""
    way = route(call)
    t, t_value = call.temperature, call.t_value
    if way == "empty":
        y = call.rows.clone()
        if t is not None:
            _checks.check_temperature_values(t.detach())
            if t.requires_grad:
                y = y + t.sum().to(y.dtype) * 0
    elif way == "aten":
        y = small_softmax(call.rows, t if t is not None else t_value, call.log)
    elif way == "eager":
        y = Softmax.apply(call.rows, t, t_value, call.log)
    else:
        y = softmax_2d(call.rows, _checks.temperature_tensor(t, t_value, call.rows), call.log)
    if y.shape != call.moved_shape:
        y = y.reshape(call.moved_shape)
    if call.dim is not None:
        y = y.movedim(-1, call.dim)
    return y if y.shape == call.out_shape else y.reshape(call.out_shape)

"""One ``token_logprobs`` call: its arguments checked and normalised once (:func:`normalise`),
the route it takes (:func:`route`) and its result (:func:`run`).

Routes:

* ``empty``: no token: empty results (a learnable ``T`` still receives a zero gradient).
* ``eager``: a plain tensor outside any tracing: :class:`.op.TokenStats`, the temperature
  passed by value when it is a number.
* ``custom_op``: a traced call (``torch.compile``, export, fake tensors): the custom op
  ``tempfast::token_stats``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ... import _checks
from ..autograd import is_eager
from .op import TokenStats, token_stats_2d


class TokenCall(NamedTuple):
    """A call, normalised: ``rows (N, V)`` are the logits with the leading dimensions
    flattened; ``target (N,)`` int64; the temperature ``temperature`` (a tensor: one value or
    one per token, in the accumulation dtype) or ``t_value`` (a number, by value, when
    ``temperature`` is None); ``softcap`` 0 for none; results are shaped ``out_shape`` (the
    target's)."""

    rows: Tensor
    target: Tensor
    temperature: Tensor | None
    t_value: float
    softcap: float
    ignore_index: int
    entropy: bool
    out_shape: torch.Size


def check_token_target(target: Tensor, logits: Tensor) -> None:
    """Class indices of every position of class-last ``logits (..., V)``: an integer tensor
    of shape ``logits.shape[:-1]``."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target: expected shape {tuple(logits.shape[:-1])} (the logits' "
                         f"shape without the classes), got {tuple(target.shape)}")


def normalise(logits: Tensor, target: Tensor, temperature: float | Tensor,
              softcap: float | None, ignore_index: int, return_entropy: bool) -> TokenCall:
    """Check every argument once (a one-line error naming the first bad one) and normalise
    them into a :class:`TokenCall`."""
    _checks.check_floating("logits", logits)
    if logits.dim() == 0:
        raise ValueError("logits: expected at least 1 dimension (the classes, last), got a "
                         "0-dim tensor")
    check_token_target(target, logits)
    _checks.check_same_device(logits=logits, target=target)
    ignore_index = _checks.check_ignore_index(ignore_index)
    cap = _checks.check_softcap(softcap)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy: expected a bool, got {type(return_entropy).__name__}")
    n_cols = logits.shape[-1]
    n_rows = math.prod(target.shape)
    if n_cols == 0 and n_rows > 0:
        raise ValueError("logits: need at least one class (the last dimension is 0)")
    t, t_value = _checks.temperature_of_rows(temperature, target.shape, logits)
    rows = logits.reshape(n_rows, n_cols)
    return TokenCall(rows, target.reshape(n_rows).long(), t, t_value, cap, ignore_index,
                     return_entropy, target.shape)


def route(call: TokenCall) -> str:
    """The route of ``call`` (see the module docstring)."""
    if call.rows.shape[0] == 0:
        return "empty"
    return "eager" if is_eager(call.rows) else "custom_op"


def run(call: TokenCall) -> Tensor | tuple[Tensor, Tensor]:
    """``logp`` (and, with ``entropy``, ``(logp, H)``), shaped like the target."""
    way = route(call)
    t = call.temperature
    if way == "empty":
        zero = call.rows.new_zeros(call.out_shape, dtype=_checks.accumulation_dtype(
            call.rows.dtype)) + call.rows.sum() * 0
        if t is not None and t.requires_grad:
            zero = zero + t.sum().to(zero.dtype) * 0
        logp, h = zero, zero.clone()
    elif way == "eager":
        logp, h, _ = TokenStats.apply(call.rows, call.target, t, call.t_value, call.softcap,
                                      call.ignore_index, call.entropy)
    else:
        logp, h, _ = token_stats_2d(call.rows, call.target,
                                    _checks.temperature_tensor(t, call.t_value, call.rows),
                                    call.softcap, call.ignore_index, call.entropy)
    logp = logp.reshape(call.out_shape)
    return (logp, h.reshape(call.out_shape)) if call.entropy else logp

"""One cross-entropy call: its arguments checked and normalised once (:func:`normalise`), the
route it takes (:func:`route`) and its loss (:func:`run`).

Routes (the gradient of every fused route is written in the forward pass, while the row is on
chip, and the backward pass only applies the upstream gradient):

* ``aten``: a small eager CPU call whose temperature needs no gradient
  (:func:`tempfast.ops.dispatch.small_on_cpu`): stock aten ops, eager PyTorch's host cost, twice
  differentiable (:func:`.torch_path.small_cross_entropy`). The plain call (int64 class
  indices, a number for the temperature, no weight, torch's layout) does not get this far:
  :func:`plain_loss` recognises it before anything is normalised and calls the aten op: at
  64 x 10 the checks are the call's whole cost.
* ``fused``: an eager mean or sum with rows, whose probability target (if any) needs no
  gradient: :class:`.op.FusedCrossEntropy`, two launches forward and one backward on CUDA, the
  temperature passed by value when it is a number.
* ``fused_inplace``: the same with ``inplace_backward``: the gradient overwrites the logits.
* ``inplace_op``: ``inplace_backward`` otherwise (traced, ``reduction="none"``, no rows): the
  custom op ``tempfast::cross_entropy_inplace_``.
* ``class_parallel``: ``process_group`` given: :mod:`tempfast.ops.class_parallel`.
* ``custom_op``: everything else (traced calls, ``reduction="none"``, probability targets that
  need their own gradient, no rows): the custom op ``tempfast::cross_entropy``, its gradient
  fused into the forward pass when the loss is reduced and the logits need it, else recomputed.

``inplace_backward`` without any gradient to compute is a plain call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch._C import _len_torch_dispatch_stack

from ... import _checks, backend
from .. import class_parallel, dispatch
from ..autograd import is_eager
from ..dispatch import small_on_cpu
from .op import CrossEntropyInplace, FusedCrossEntropy, cross_entropy_2d
from .torch_path import REDUCTION_CODES, small_cross_entropy

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class CrossEntropyCall(NamedTuple):
    """A cross-entropy call, normalised: 2-D ``logits (N, C)`` with the classes last (a view
    where possible); ``target`` ``(N,)`` int64 class indices or ``(N, C)`` probabilities; the
    temperature ``temperature`` (a tensor: one value or one per row, in the accumulation
    dtype) or ``t_value`` (a number, by value, when ``temperature`` is None); the loss of
    ``reduction="none"`` has ``rows_shape``."""

    logits: Tensor
    target: Tensor
    temperature: Tensor | None
    t_value: float
    weight: Tensor | None
    ignore_index: int
    label_smoothing: float
    reduction: str
    rows_shape: torch.Size
    inplace_backward: bool
    process_group: ProcessGroup | None = None  # class-parallel: the ranks that share the classes
    start: int | None = None  # class-parallel: this rank's first class, if given
    softcap: float = 0.0  # the cap of ``softcap tanh(z / softcap)`` before ``/ T``; 0: none
    z_loss: float = 0.0  # the z-loss's coefficient
    return_z_loss: bool = False  # also return the z-term (for logging)

    @property
    def probs(self) -> bool:
        """Probability targets (else class indices)."""
        return self.target.dim() == 2

    @property
    def t_grad(self) -> bool:
        """Whether dL/dT is computed (a temperature tensor that requires grad)."""
        t = self.temperature
        return t is not None and t.requires_grad and torch.is_grad_enabled()


def normalise(logits: Tensor, target: Tensor, temperature: float | Tensor,
              weight: Tensor | None, ignore_index: int, reduction: str,
              label_smoothing: float, class_dim: int | None, inplace_backward: bool,
              process_group=None, start: int | None = None, softcap: float | None = None,
              z_loss: float = 0.0, return_z_loss: bool = False) -> CrossEntropyCall:
    """Check every argument once (a one-line error naming the first bad one) and normalise
    them into a :class:`CrossEntropyCall`.

    With ``process_group`` the logits are this rank's classes (possibly none), the class
    indices global and ``weight`` holds every class (checked against the group's class count
    by the class-parallel route, once it knows it)."""
    call = _checked_call(logits, target, temperature, weight, ignore_index, reduction,
                         label_smoothing, class_dim, inplace_backward, process_group, start)
    extras = check_extras(softcap, z_loss, return_z_loss)
    return call._replace(**extras) if extras else call


def check_extras(softcap: float | None, z_loss: float, return_z_loss: bool) -> dict:
    """``softcap``, ``z_loss`` and ``return_z_loss`` checked: the fields of a
    :class:`CrossEntropyCall` that differ from their defaults."""
    extras = {}
    cap = _checks.check_softcap(softcap)
    if cap:
        extras["softcap"] = cap
    if isinstance(z_loss, bool) or not isinstance(z_loss, int | float):
        raise TypeError(f"z_loss: expected a float, got {type(z_loss).__name__}")
    if not math.isfinite(z_loss) or z_loss < 0:
        raise ValueError(f"z_loss: must be finite and >= 0, got {z_loss}")
    if z_loss:
        extras["z_loss"] = float(z_loss)
    if not isinstance(return_z_loss, bool):
        raise TypeError(f"return_z_loss: expected a bool, got {type(return_z_loss).__name__}")
    if return_z_loss:
        extras["return_z_loss"] = True
    return extras


def loss(logits: Tensor, target: Tensor, temperature: float | Tensor, weight: Tensor | None,
         ignore_index: int, reduction: str, label_smoothing: float, class_dim: int | None,
         inplace_backward: bool, process_group=None, start: int | None = None,
         softcap: float | None = None, z_loss: float = 0.0,
         return_z_loss: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The loss of ``tempfast.cross_entropy``'s arguments: the plain call's (:func:`plain_loss`)
    when it is one, else :func:`run` of :func:`normalise`."""
    if (weight is None and class_dim is None and not inplace_backward and process_group is None
            and start is None and softcap is None and not z_loss and not return_z_loss):
        plain = plain_loss(logits, target, temperature, ignore_index, reduction,
                           label_smoothing)
        if plain is not None:
            return plain
    return run(normalise(logits, target, temperature, weight, ignore_index, reduction,
                         label_smoothing, class_dim, inplace_backward, process_group, start,
                         softcap, z_loss, return_z_loss))


def plain_loss(logits: Tensor, target: Tensor, temperature: float | Tensor, ignore_index: int,
               reduction: str, label_smoothing: float) -> Tensor | None:
    """The loss of the plain call, or ``None`` when this is not one.

    The plain call: a small eager CPU call (:func:`tempfast.ops.dispatch.small_on_cpu`'s rule)
    on the torch backend with int64 class indices, a number ``0 < T < inf`` and torch's layout,
    and no weight, ``class_dim``, ``inplace_backward`` or process group (the caller checks
    those). Its host time is its whole cost, so it is recognised here, before anything is
    normalised, and runs ``F.cross_entropy(z / T, ...)``'s aten op on the logits (16-bit
    logits in fp32). Shapes are left to torch's kernel: it accepts what tempfast accepts, with
    the same meaning; what it refuses gets tempfast's error from the full checks."""
    if (type(logits) is Tensor and type(target) is Tensor and type(temperature) in _SCALARS
            and type(ignore_index) is int and type(label_smoothing) in _SCALARS
            and type(reduction) is str
            and 0.0 < temperature < _INF and 0.0 <= label_smoothing <= 1.0
            and logits.is_cpu and target.dtype is _INT64):
        upcast = _UPCAST.get(logits.dtype)
        code = REDUCTION_CODES.get(reduction)
        if (upcast is not None and code is not None
                and logits.numel() <= dispatch.SMALL_CPU_ELEMENTS
                and backend.get_backend() != "triton" and not torch.compiler.is_compiling()
                and not _len_torch_dispatch_stack()):
            try:
                return _CROSS_ENTROPY_LOSS((logits.float() if upcast else logits) / temperature,
                                           target, None, code, ignore_index, label_smoothing)
            except (IndexError, RuntimeError, ValueError):
                _explain_plain_failure(logits, target, temperature, ignore_index, reduction,
                                       label_smoothing)
                raise
    return None


def _checked_call(logits, target, temperature, weight, ignore_index, reduction,
                  label_smoothing, class_dim, inplace_backward, process_group,
                  start) -> CrossEntropyCall:
    """:func:`normalise` by the full checks."""
    sharded = process_group is not None
    if sharded:
        if inplace_backward:
            raise ValueError("inplace_backward: not supported with process_group")
        process_group = class_parallel.check_group(process_group)
        start = class_parallel.check_start(start)
    elif start is not None:
        raise ValueError("start: only meaningful with process_group (class-parallel logits)")
    _checks.check_floating("logits", logits)
    if logits.dim() == 0:
        classes = "C_r" if sharded else "C"
        raise ValueError(f"logits: expected shape (N, {classes}), ({classes},) or "
                         f"(N, {classes}, d1, ...), got a 0-dim tensor")
    cdim = _checks.class_dim_of(class_dim, logits.dim())
    num_classes = logits.shape[cdim]
    if num_classes == 0 and not sharded:
        raise ValueError(f"logits: the class dimension (dim {cdim}) is empty")
    probs = _check_target(target, logits, cdim, class_dim is not None, sharded)
    _checks.check_reduction(reduction)
    label_smoothing = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    if not sharded:
        _checks.check_weight(weight, num_classes)
    _checks.check_same_device(logits=logits, target=target, weight=weight)
    if probs and ignore_index != -100:
        raise ValueError("ignore_index: not supported with probability targets (as in torch)")
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight: the class weights cannot be differentiated (as in torch); "
                         "pass weight.detach()")
    leaf = logits.is_leaf  # before movedim: its view is never a leaf
    if cdim != logits.dim() - 1:
        logits = logits.movedim(cdim, -1)
        if probs:
            target = target.movedim(cdim, -1)
    rows_shape = logits.shape[:-1]
    t, t_value = _checks.temperature_of_rows(temperature, rows_shape, logits)
    n_rows = math.prod(rows_shape)
    logits_2d = logits if logits.dim() == 2 else logits.reshape(n_rows, num_classes)
    if probs:
        target_2d = target if target.dim() == 2 else target.reshape(n_rows, num_classes)
    else:
        target_2d = target if target.dim() == 1 else target.reshape(-1)
        if target_2d.dtype != torch.int64:
            target_2d = target_2d.long()
    inplace = inplace_backward and torch.is_grad_enabled() and logits.requires_grad
    if inplace:
        logits_2d = _inplace_view(logits, num_classes, leaf, probs and target.requires_grad)
    return CrossEntropyCall(logits_2d, target_2d, t, t_value, weight, ignore_index,
                            label_smoothing, reduction, rows_shape, inplace, process_group, start)


def route(call: CrossEntropyCall) -> str:
    """The route of ``call`` (see the module docstring)."""
    if call.process_group is not None:
        return "class_parallel"
    eager = is_eager(call.logits)
    plain = not (call.inplace_backward or call.softcap or call.z_loss or call.return_z_loss)
    if eager and plain and small_on_cpu(call.logits, call.t_grad):
        return "aten"
    reduced = call.reduction != "none" and call.logits.shape[0] > 0
    if call.inplace_backward:
        return "fused_inplace" if eager and reduced else "inplace_op"
    target_grad = call.probs and call.target.requires_grad and torch.is_grad_enabled()
    if eager and reduced and not target_grad:
        return "fused"
    return "custom_op"


def run(call: CrossEntropyCall) -> Tensor | tuple[Tensor, Tensor]:
    """The loss of ``call``: fp32 (fp64 for fp64 logits), a scalar or ``rows_shape``; with
    ``return_z_loss`` the pair ``(loss, z-term)``, the z-term reduced as the loss."""
    way = route(call)
    if way == "aten":
        return _aten(call)
    if way == "class_parallel":
        return class_parallel.run(call)
    t, t_value = call.temperature, call.t_value
    lse = None
    if way in ("fused", "fused_inplace"):
        loss = FusedCrossEntropy.apply(call.logits, t, call, way == "fused_inplace")
        if call.return_z_loss:
            loss, lse = loss
    else:
        tensor_t = _checks.temperature_tensor(t, t_value, call.logits)
        if way == "inplace_op":
            loss, lse = CrossEntropyInplace.apply(call.logits, tensor_t, call)
        else:
            grad_on = torch.is_grad_enabled()
            target_grad = call.probs and call.target.requires_grad and grad_on
            fused = (grad_on and call.logits.requires_grad and call.reduction != "none"
                     and not target_grad)
            loss, lse = cross_entropy_2d(call.logits, call.target, tensor_t, call.weight,
                                         call.ignore_index, call.label_smoothing,
                                         call.reduction, fused, call.t_grad, call.softcap,
                                         call.z_loss)[:2]
    loss = loss.reshape(call.rows_shape) if call.reduction == "none" else loss
    if not call.return_z_loss:
        return loss
    return loss, z_term(lse.detach(), call)


def z_term(lse: Tensor, call: CrossEntropyCall) -> Tensor:
    """The z-loss alone, ``z_loss * lse^2``, over the rows that count (not ignored), reduced
    as the loss: per row, summed, or averaged over those rows (not weighted)."""
    counted = None if call.probs else call.target != call.ignore_index
    rows = lse * lse if counted is None else torch.where(counted, lse * lse, 0.0)
    rows = call.z_loss * rows
    if call.reduction == "none":
        return rows.reshape(call.rows_shape)
    total = rows.sum()
    if call.reduction == "sum":
        return total
    return total / (rows.numel() if counted is None else counted.sum())


def _explain_plain_failure(logits: Tensor, target: Tensor, temperature: float,
                           ignore_index: int, reduction: str, label_smoothing: float) -> None:
    """The plain call (:func:`plain_loss`) failed in torch's kernel: raise tempfast's error for
    it where the full checks have one (a shape, an index out of range)."""
    try:
        full = _checked_call(logits, target, temperature, None, ignore_index, reduction,
                             label_smoothing, None, False, None, None)
        if not full.probs:
            _checks.check_class_indices(full.target, full.logits.shape[1], ignore_index)
    except ValueError as error:  # not "during handling of" torch's error: ours alone
        raise error from None


def _aten(call: CrossEntropyCall) -> Tensor:
    """The ``aten`` route, its values checked as the other routes check them; the loss shaped
    as :func:`run` shapes it."""
    t = call.temperature
    if t is not None:
        _checks.check_temperature_values(t.detach())
    try:
        loss = small_cross_entropy(call.logits, call.target,
                                   t if t is not None else call.t_value, call.weight,
                                   call.ignore_index, call.reduction, call.label_smoothing)
    except (IndexError, RuntimeError):
        if not call.probs:  # torch's "Target 60 is out of bounds": say it tempfast's way
            _checks.check_class_indices(call.target, call.logits.shape[1], call.ignore_index)
        raise
    return loss.reshape(call.rows_shape) if call.reduction == "none" else loss


def _check_target(target: Tensor, logits: Tensor, class_dim: int, layout_given: bool,
                  sharded: bool) -> bool:
    """Validate ``target`` against ``logits`` (classes at ``class_dim``); True for probability
    targets, False for class indices."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    rows_shape = logits.shape[:class_dim] + logits.shape[class_dim + 1:]
    if target.shape == logits.shape and target.dtype.is_floating_point:
        if sharded and target.requires_grad and torch.is_grad_enabled():
            raise ValueError("target: probability targets that require grad are not supported "
                             "with process_group; pass target.detach()")
        return True
    if target.shape == rows_shape:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(
                f"target: class-index targets of shape {tuple(target.shape)} must be an integer "
                f"tensor, got {target.dtype} (probability targets have the logits' shape)"
            )
        return False
    hint = ""
    if not layout_given and logits.dim() >= 3 and target.shape == logits.shape[:-1]:
        hint = ("; the classes are at dim 1, as in torch: for class-last logits such as "
                "(B, S, C) pass class_dim=-1")
    elif sharded:
        hint = " (probabilities: this rank's classes)"
    raise ValueError(
        f"target: expected shape {tuple(rows_shape)} (class indices) or {tuple(logits.shape)} "
        f"(probabilities), got {tuple(target.shape)}{hint}"
    )


def _inplace_view(logits: Tensor, num_classes: int, leaf: bool, target_grad: bool) -> Tensor:
    """The ``(N, C)`` view of the logits that ``inplace_backward`` writes the gradient over."""
    if leaf:
        raise ValueError("inplace_backward: logits is a leaf tensor that requires grad; "
                         "overwriting it would corrupt it and its .grad (torch refuses "
                         "in-place changes to such leaves): pass a layer's output")
    if target_grad:
        raise ValueError("inplace_backward: a probability target that requires grad needs "
                         "the logits, which the in-place mode overwrites")
    try:
        logits_view = logits.view(-1, num_classes)
    except RuntimeError:
        logits_view = None
    if logits_view is None or logits_view.stride(-1) != 1:
        raise ValueError("inplace_backward: logits must be viewable as (rows, C) with unit "
                         "stride along the class dimension")
    return logits_view


_UPCAST = {torch.float32: False, torch.float64: False, torch.bfloat16: True,
           torch.float16: True}  # the plain call's dtypes: whether it computes in fp32
_SCALARS = (float, int)
_INT64 = torch.int64
_INF = math.inf
_CROSS_ENTROPY_LOSS = torch._C._nn.cross_entropy_loss

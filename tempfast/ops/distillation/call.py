"""One distillation-loss call: its arguments checked and normalised once (:func:`normalise`),
its route (:func:`route`) and its loss (:func:`run`).

One route, ``custom_op``: every call, eager or traced, runs the custom op
``tempfast::distillation``, which writes both gradients and dL/dT in the forward pass. A
teacher given as log-probabilities at ``T`` (``teacher_log_probs``) is multiplied by ``T``
first (one elementwise pass over it), so that the kernels' ``/ T`` gives it back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ... import _checks
from .op import REDUCTIONS, distillation_2d


class DistillationCall(NamedTuple):
    """A distillation call, normalised: ``student`` and ``teacher`` ``(N, C)`` (classes last,
    the leading dimensions flattened), the temperature ``(1,)`` or ``(N,)`` in the
    accumulation dtype, ``target`` ``(N,)`` int64 or None; the loss of ``"none"`` has
    ``rows_shape``."""

    student: Tensor
    teacher: Tensor
    temperature: Tensor
    target: Tensor | None
    alpha: float
    reduction: str
    ignore_index: int
    rows_shape: torch.Size
    teacher_log_probs: bool = False  # the teacher is log softmax(t / T) already


def normalise(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor, *,
              target: Tensor | None, alpha: float, reduction: str,
              ignore_index: int, teacher_log_probs: bool = False) -> DistillationCall:
    """Check every argument once (a one-line error naming the first bad one) and normalise
    them into a :class:`DistillationCall`."""
    _checks.check_floating("student_logits", student_logits)
    _checks.check_floating("teacher_logits", teacher_logits)
    if student_logits.dim() == 0:
        raise ValueError("student_logits: expected shape (*, C), got a 0-dim tensor")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits: expected the student's shape "
                         f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}")
    if teacher_logits.dtype != student_logits.dtype:
        raise TypeError(f"teacher_logits: dtype {teacher_logits.dtype} differs from "
                        f"student_logits' {student_logits.dtype}")
    num_classes = student_logits.shape[-1]
    if num_classes == 0:
        raise ValueError("student_logits: the class dimension (last) is empty")
    check_reduction(reduction)
    alpha = _checks.check_fraction("alpha", alpha)
    ignore_index = _checks.check_ignore_index(ignore_index)
    rows_shape = student_logits.shape[:-1]
    if target is not None:
        _check_target(target, rows_shape)
    _checks.check_same_device(student_logits=student_logits, teacher_logits=teacher_logits,
                              target=target)
    t = _checks.temperature_rows(temperature, rows_shape, student_logits.device,
                                 _checks.accumulation_dtype(student_logits.dtype))
    if not isinstance(teacher_log_probs, bool):
        raise TypeError(f"teacher_log_probs: expected a bool, got "
                        f"{type(teacher_log_probs).__name__}")
    if teacher_log_probs and t.requires_grad and torch.is_grad_enabled():
        raise ValueError("teacher_log_probs: the temperature cannot be learned with teacher "
                         "log-probabilities, which were computed at one fixed T; pass "
                         "temperature.detach()")
    return DistillationCall(student_logits.reshape(-1, num_classes),
                            teacher_logits.reshape(-1, num_classes), t,
                            None if target is None else target.reshape(-1).long(),
                            alpha if target is not None else 1.0, reduction, ignore_index,
                            rows_shape, teacher_log_probs)


def check_reduction(reduction: str) -> None:
    """The distillation's reductions: those of ``F.kl_div``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def route(call: DistillationCall) -> str:
    """Every call takes the custom op (see the module docstring)."""
    del call
    return "custom_op"


def run(call: DistillationCall) -> Tensor:
    """The loss of ``call``: fp32 (fp64 for fp64 logits), a scalar or ``rows_shape``."""
    grad_on = torch.is_grad_enabled()
    teacher = call.teacher
    if call.teacher_log_probs:  # softmax(T lt / T) = softmax(lt): the kernels divide by T
        teacher = teacher * call.temperature.reshape(-1, 1).to(teacher.dtype)
    loss = distillation_2d(call.student, teacher, call.temperature, call.target,
                           call.ignore_index, call.alpha, call.reduction,
                           grad_on and teacher.requires_grad,
                           grad_on and call.temperature.requires_grad)[0]
    return loss.reshape(call.rows_shape) if call.reduction == "none" else loss


def _check_target(target: Tensor, rows_shape: torch.Size) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target: class indices must be an integer tensor, got {target.dtype}")
    if target.shape != rows_shape:
        raise ValueError(f"target: expected shape {tuple(rows_shape)} (one class index per "
                         f"row), got {tuple(target.shape)}")

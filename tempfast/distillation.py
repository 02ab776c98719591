"""Knowledge distillation (Hinton et al. 2015): the fused temperature KL loss.

    loss = tempfast.distillation_loss(student_logits, teacher_logits, temperature=4.0)
    loss = tempfast.distillation_loss(s, t, 4.0, target=y, alpha=0.9)

Classes are the last dimension: logits ``(*, C)``, one row per leading index. The module form
is :class:`tempfast.nn.DistillationLoss`. The math and the kernels:
:mod:`tempfast.ops.distillation` and ``kernels/README.md`` ("Distillation").
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks
from .ops.distillation import REDUCTIONS, distillation_2d


def _check_target(target: Tensor, rows_shape: torch.Size) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target: class indices must be an integer tensor, got {target.dtype}")
    if target.shape != rows_shape:
        raise ValueError(f"target: expected shape {tuple(rows_shape)} (one class index per "
                         f"row), got {tuple(target.shape)}")


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    target: Tensor | None = None,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
) -> Tensor:
    """``F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
    reduction) * T**2``, fused; with ``target``, ``alpha * that + (1 - alpha) * CE(s, target)``.

    Args:
        student_logits: ``(*, C)`` floating tensor (classes last).
        teacher_logits: the same shape and dtype. It receives a gradient only if it requires
            grad (``d/dt = T p_t (log p_t - log p_s - KL)`` per row).
        temperature: ``T > 0``: a number, a 0-dim tensor, or one value per row (shape ``(*,)``);
            ``T**2`` multiplies each row's KL. A tensor that requires grad receives
            ``dL/dT = 2 T KL + T (-Cov_pt(a, a - b) + E_pt[b] - E_ps[b])`` per row
            (``a = t / T``, ``b = s / T``).
        target: optional class indices ``(*,)`` (integer): adds the hard-label cross-entropy of
            the student at ``T = 1``; rows equal to ``ignore_index`` contribute no CE term.
        alpha: the KD part's weight in ``[0, 1]``, used only with ``target`` (without it the
            loss is the KD term alone, whatever ``alpha``).
        reduction: ``"batchmean"`` (KD: sum / rows, as ``F.kl_div``), ``"mean"`` (KD: sum /
            (rows * C), as ``F.kl_div``'s ``"mean"``), ``"sum"``, or ``"none"`` (per row, shape
            ``(*,)``). The CE part is reduced like ``F.cross_entropy``: for ``"batchmean"`` and
            ``"mean"``, its sum over the rows not ignored divided by their number (NaN when all
            are ignored, as in torch); ``"sum"`` its sum; ``"none"`` per row (0 when ignored).
        ignore_index: the class-index value whose rows have no CE term.

    Returns:
        the fp32 loss (fp64 for fp64 logits): a scalar, or ``(*,)`` for ``"none"``. No rows:
        ``"batchmean"`` / ``"mean"`` give NaN (0 / 0, as ``F.kl_div``), ``"sum"`` 0.

    Argument problems raise a one-line ``ValueError`` (``TypeError`` for a wrong type or dtype)
    that names the argument; a temperature that is not finite and positive, or a class index
    outside ``[0, C)`` that is not ``ignore_index``, raises for CPU tensors (on CUDA, with no
    host synchronisation, the row is NaN instead).
    """
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
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    alpha = _checks.check_fraction("alpha", alpha)
    ignore_index = _checks.check_ignore_index(ignore_index)
    rows_shape = student_logits.shape[:-1]
    if target is not None:
        _check_target(target, rows_shape)
    _checks.check_same_device(student_logits=student_logits, teacher_logits=teacher_logits,
                              target=target)
    t = _checks.temperature_rows(temperature, rows_shape, student_logits.device,
                                 _checks.accumulation_dtype(student_logits.dtype))
    s2 = student_logits.reshape(-1, num_classes)
    t2 = teacher_logits.reshape(-1, num_classes)
    y = None if target is None else target.reshape(-1).long()
    grad_on = torch.is_grad_enabled()
    loss = distillation_2d(s2, t2, t, y, ignore_index, alpha if y is not None else 1.0,
                           reduction, grad_on and teacher_logits.requires_grad,
                           grad_on and t.requires_grad)[0]
    return loss.reshape(rows_shape) if reduction == "none" else loss

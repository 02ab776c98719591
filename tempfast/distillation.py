"""Kept for existing imports: ``tempfast.distillation.distillation_loss`` is
:func:`tempfast.distillation_loss` (``tempfast/functional.py``; the op in
``tempfast/ops/distillation/``)."""

from .functional import distillation_loss

__all__ = ["distillation_loss"]

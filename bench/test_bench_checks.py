"""The correctness check of every benchmark case must fail on wrong results.

Each test takes a real CPU case, swaps its provider for a subtly wrong one (the non-target
gradient entries zeroed or doubled, the temperature off by 2.5%) and expects
:meth:`bench.cases.Case.check` to raise. The unmodified case is the control.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from . import cases

WRONG_T = cases.TEMPERATURE * 1.025


def _spec(op: str, classes: int, dtype: str) -> cases.Spec:
    return next(s for s in cases.all_specs("cpu") if s.op == op and s.classes == classes
                and s.dtype == dtype and s.provider == "torch_eager")


class _EditGrad(torch.autograd.Function):
    """Identity forward; the backward passes ``edit(grad)`` on."""

    @staticmethod
    def forward(ctx, x: Tensor, edit: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.edit = edit
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.edit(grad), None


def _scale_non_target(y: Tensor, factor: float) -> Callable[[Tensor], Tensor]:
    def edit(grad: Tensor) -> Tensor:
        out = grad * factor
        rows = torch.arange(grad.shape[0])
        out[rows, y] = grad[rows, y]
        return out
    return edit


def _wrong_cross_entropy(case: cases.Case, kind: str) -> Callable[[], Tensor]:
    x, y = case.x, case.y
    if kind == "temperature":
        return lambda: F.cross_entropy(x / WRONG_T, y)
    factor = {"non-target zeroed": 0.0, "non-target doubled": 2.0}[kind]
    return lambda: F.cross_entropy(_EditGrad.apply(x, _scale_non_target(y, factor))
                                   / cases.TEMPERATURE, y)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("classes", [32000, 262144])
@pytest.mark.parametrize("kind", ["temperature", "non-target zeroed", "non-target doubled"])
def test_cross_entropy_check_rejects_a_wrong_gradient(kind: str, classes: int,
                                                      dtype: str) -> None:
    case = cases.Case(_spec("ce_fwd_bwd", classes, dtype))
    case.check()
    case.forward = _wrong_cross_entropy(case, kind)
    with pytest.raises(AssertionError, match="differs from the reference"):
        case.check()


@pytest.mark.parametrize("op,classes,dtype,wrong_t", [
    ("softmax_fwd", 1000, "bf16", WRONG_T), ("softmax_fwd", 262144, "fp32", WRONG_T),
    ("softmax_fwd_bwd", 1000, "bf16", WRONG_T), ("softmax_fwd_bwd", 1000, "fp32", WRONG_T),
    ("ce_fwd", 1000, "fp32", WRONG_T),
    # A bf16 mean loss alone cannot show a 2.5% temperature error: eager's own bf16 loss is
    # off by up to 0.8% (TOLERANCES), the 2.5% error moves the loss by about 0.3%.
    ("ce_fwd", 1000, "bf16", cases.TEMPERATURE / 2)])
def test_check_rejects_a_wrong_temperature(op: str, classes: int, dtype: str,
                                           wrong_t: float) -> None:
    case = cases.Case(_spec(op, classes, dtype))
    case.check()
    x = case.x
    case.forward = (lambda: torch.softmax(x / wrong_t, -1)) if case.softmax \
        else (lambda: F.cross_entropy(x / wrong_t, case.y))
    with pytest.raises(AssertionError, match="differs from the reference"):
        case.check()

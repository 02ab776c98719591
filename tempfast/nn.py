"""Modules wrapping the tempfast ops.

A learnable temperature is stored as ``log T`` (a parameter named ``log_temperature``), so it
stays positive under any optimiser step; read it back with the ``temperature`` property.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import functional as F


class _Temperature(nn.Module):
    """Holds ``T``: a fixed buffer, or a learnable ``log T`` parameter."""

    def __init__(self, temperature: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature: must be finite and > 0, got {temperature}")
        self.learnable = learnable
        log_t = torch.tensor(math.log(float(temperature)))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """The current temperature ``T = exp(log_temperature)`` (a 0-dim tensor)."""
        return self.log_temperature.exp()

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.4g}, learnable={self.learnable}"


class TemperatureSoftmax(_Temperature):
    """``softmax(x / T, dim)`` (``log=True``: log-softmax) as a module."""

    def __init__(self, temperature: float = 1.0, dim: int = -1, learnable: bool = False,
                 log: bool = False) -> None:
        super().__init__(temperature, learnable)
        self.dim = dim
        self.log = log

    def forward(self, x: Tensor) -> Tensor:
        op = F.log_softmax if self.log else F.softmax
        return op(x, self.temperature, self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim={self.dim}, log={self.log}"


class TemperatureCrossEntropyLoss(_Temperature):
    """``F.cross_entropy(logits / T, target, ...)`` as a loss module (class dimension last).

    With ``learnable=True``, ``T`` is trained with the model (like CLIP's logit scale): its
    gradient comes from the fused kernel, ``dL/dT = (sum q z - sum p z) / T**2`` per row.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        learnable: bool = False,
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(temperature, learnable)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.inplace_backward = inplace_backward

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            logits,
            target,
            self.temperature,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")

"""Modules wrapping the tempfast ops.

A learnable temperature is stored as ``log T`` (a parameter named ``log_temperature``), so it
stays positive under any optimiser step; read it back with the ``temperature`` property.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from . import functional as F


class _Temperature(nn.Module):
    """Holds ``T``: a fixed buffer, or a learnable ``log T`` parameter."""

    def __init__(self, temperature: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, Real | Tensor):
            raise TypeError("temperature: expected a number, got "
                            f"{type(temperature).__name__}")
        if isinstance(temperature, Tensor) and temperature.numel() != 1:
            raise ValueError("temperature: expected one value, got a tensor of shape "
                             f"{tuple(temperature.shape)}")
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature <= 0:
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


class LinearTemperatureCrossEntropy(_Temperature):
    """A classifier head fused with the temperature cross-entropy: ``(N, H) -> loss``.

    ``forward(hidden, target)`` returns ``F.cross_entropy((hidden @ W.T + b) / T, target)``
    computed in row chunks, so the ``N x C`` logits never exist (see
    :func:`tempfast.functional.linear_cross_entropy` for the memory bound). Logits for a few
    rows are available on request (``logits_rows=``), and :meth:`predict` returns the argmax
    class chunk by chunk, for accuracy without the full logits.
    """

    def __init__(self, in_features: int, num_classes: int, temperature: float = 1.0,
                 learnable: bool = False, bias: bool = True, *, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0,
                 chunk_size: int | None = None, device=None, dtype=None) -> None:
        super().__init__(temperature, learnable)
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, hidden: Tensor, target: Tensor,
                logits_rows: slice | Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The loss; with ``logits_rows`` (a slice or index tensor over the flattened rows),
        also ``(loss, logits of those rows)``. Features in another dtype than the head (bf16
        features from autocast, say) run the head in the features' dtype, as autocast would."""
        weight, bias = self.linear.weight, self.linear.bias
        if weight.dtype != hidden.dtype:
            weight = weight.to(hidden.dtype)
            bias = bias.to(hidden.dtype) if bias is not None else None
        loss = F.linear_cross_entropy(
            hidden, weight, target, bias, self.temperature,
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, chunk_size=self.chunk_size)
        if logits_rows is None:
            return loss
        rows = hidden.reshape(-1, hidden.shape[-1])[logits_rows]
        return loss, nn.functional.linear(rows, weight, bias)

    @torch.no_grad()
    def predict(self, hidden: Tensor) -> Tensor:
        """Argmax class of every row of ``hidden (*, H)``, shape ``(*)``, in row chunks."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        chunk = self.chunk_size or max(1, (1 << 26) // self.linear.out_features)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for r0 in range(0, flat.shape[0], chunk):
            rows = flat[r0:r0 + chunk]
            out[r0:r0 + chunk] = self.linear(rows.to(self.linear.weight.dtype)).argmax(-1)
        return out.reshape(hidden.shape[:-1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"

"""Argument checks shared by the ops (each op's ``normalise`` composes them, once per call).

Every check runs before any kernel launch and raises a one-line error that names the
argument. Checks of *shapes, dtypes and Python scalars* run in ``normalise`` (they are static,
so ``torch.compile`` folds them away). Checks of tensor *values* (temperature values, class
indices) need the data; they run once inside the op, where the values are read, and only for
tensors in host memory, so that no op ever waits on the GPU (see
:func:`check_temperature_values` and :func:`check_class_indices`).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of losses, log-sum-exps, temperatures and dL/dT: fp64 for fp64 inputs, else
    fp32 (fp16 / bf16 / fp32 inputs all accumulate in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_floating(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point or x.dtype.is_complex:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dtype not in _KERNEL_DTYPES and x.dtype != torch.float64:
        raise TypeError(
            f"{name}: dtype {x.dtype} is not supported; use float32, float16, bfloat16 or float64"
        )


def check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name}: on {dev}, but {first_name} is on {first}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in ``[0, 1]``; a one-line error naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must lie in [0, 1], got {value}")
    return value


def check_label_smoothing(label_smoothing: float) -> float:
    return check_fraction("label_smoothing", label_smoothing)


def check_softcap(softcap: float | None) -> float:
    """``softcap`` as a float (0.0 for ``None``); a one-line error unless finite and > 0."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, Real):
        raise TypeError(f"softcap: expected a float or None, got {type(softcap).__name__}")
    value = float(softcap)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"softcap: must be finite and > 0 (or None), got {value}")
    return value


def check_ignore_index(ignore_index: int) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    return ignore_index


def check_dim(dim: int, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim: expected an int, got {type(dim).__name__}")
    if ndim == 0 or not -ndim <= dim < ndim:
        raise IndexError(f"dim: {dim} is out of range for a tensor with {ndim} dimensions")
    return dim % ndim


def class_dim_of(class_dim: int | None, ndim: int) -> int:
    """The class dimension of ``ndim``-dimensional logits, as a non-negative index.

    ``None`` is torch's layout (``F.cross_entropy``): dim 1 of ``(N, C, d1, ...)``, dim 0 of a
    single example ``(C,)``. Any other int is taken as given (``-1``: class-last, as in
    ``(B, S, C)`` language-model logits).
    """
    if class_dim is None:
        return 0 if ndim == 1 else 1
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise TypeError(f"class_dim: expected an int or None, got {type(class_dim).__name__}")
    if not -ndim <= class_dim < ndim:
        raise IndexError(f"class_dim: {class_dim} is out of range for logits with {ndim} "
                         "dimensions")
    return class_dim % ndim


def check_weight(weight: Tensor | None, num_classes: int) -> None:
    if weight is None:
        return
    check_floating("weight", weight)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"weight: expected shape ({num_classes},) (one per class), got {tuple(weight.shape)}"
        )


def temperature_rows(temperature: float | Tensor, rows_shape: torch.Size,
                     device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalise ``temperature`` to a ``dtype`` tensor of shape ``(1,)`` or ``(N,)``.

    ``temperature`` is a Python number, a 0-dim tensor, a 1-element tensor, or a tensor of
    shape ``rows_shape`` (one temperature per row; ``N = prod(rows_shape)``; a flat ``(N,)``
    tensor is also accepted). Conversions are differentiable, so a tensor that requires grad
    receives its gradient through the returned view.
    """
    if isinstance(temperature, bool):
        raise TypeError("temperature: expected a float or a tensor, got bool")
    if isinstance(temperature, Real):
        value = float(temperature)
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(f"temperature: must be finite and > 0, got {value}")
        return torch.full((1,), value, dtype=dtype, device=device)
    if not isinstance(temperature, Tensor):
        raise TypeError(
            f"temperature: expected a float or a tensor, got {type(temperature).__name__}"
        )
    if not temperature.dtype.is_floating_point:
        raise TypeError(f"temperature: expected a floating-point tensor, got {temperature.dtype}")
    if temperature.device != device:
        raise ValueError(f"temperature: on {temperature.device}, but the input is on {device}")
    n_rows = math.prod(rows_shape)
    if temperature.numel() == 1 and temperature.dim() <= 1:
        return temperature.reshape(1).to(dtype)
    if tuple(temperature.shape) in (tuple(rows_shape), (n_rows,)):
        return temperature.reshape(n_rows).to(dtype)
    raise ValueError(
        f"temperature: expected a scalar or one value per row (shape {tuple(rows_shape)}), "
        f"got shape {tuple(temperature.shape)}"
    )


def temperature_of_rows(temperature: float | Tensor, rows_shape: torch.Size,
                        like: Tensor) -> tuple[Tensor | None, float]:
    """The temperature of an op whose rows have ``rows_shape``, checked once: ``(None, T)`` for
    a Python number (passed to the kernels by value), else ``(t, 0.0)`` with ``t`` a tensor in
    ``like``'s accumulation dtype: a one-value tensor of that dtype on ``like``'s device as it
    is (0-dim or ``(1,)``: no reshape, no op), otherwise :func:`temperature_rows`' ``(1,)`` or
    ``(N,)`` view. Its values are checked where they are read (:func:`check_temperature_values`,
    in the op)."""
    if isinstance(temperature, float | int) and not isinstance(temperature, bool):
        value = float(temperature)
        if not value > 0.0 or value == float("inf"):
            raise ValueError(f"temperature: must be finite and > 0, got {value}")
        return None, value
    dtype = accumulation_dtype(like.dtype)
    if (isinstance(temperature, Tensor) and temperature.dtype == dtype
            and temperature.device == like.device and temperature.dim() <= 1
            and temperature.numel() == 1):
        return temperature, 0.0
    return temperature_rows(temperature, rows_shape, like.device, dtype), 0.0


def temperature_tensor(t: Tensor | None, t_value: float, like: Tensor) -> Tensor:
    """The temperature of :func:`temperature_of_rows` as a tensor (a number becomes ``(1,)`` in
    ``like``'s accumulation dtype): what the custom ops take."""
    if t is not None:
        return t
    return torch.full((1,), t_value, dtype=accumulation_dtype(like.dtype), device=like.device)


def check_temperature_values(t: Tensor) -> None:
    """Raise if a host-memory temperature tensor holds a value <= 0, NaN or inf."""
    if t.device.type != "cpu" or t.numel() == 0:
        return
    bad = ~(torch.isfinite(t) & (t > 0))
    if bool(bad.any()):
        value = t[bad][0].item()
        raise ValueError(f"temperature: must be finite and > 0, got {value}")


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise if a host-memory class-index target lies outside [0, C) and is not ignore_index."""
    if target.device.type != "cpu" or target.numel() == 0:
        return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0].item())
        raise ValueError(
            f"target: class index {value} is out of range [0, {num_classes}) "
            f"and is not ignore_index ({ignore_index})"
        )

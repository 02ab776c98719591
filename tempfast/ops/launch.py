"""Helpers of the Triton launchers (``triton_path.py`` of each op): the device's limits, the
residency of a compiled kernel, the launch configuration of a row-wise kernel and the
cooperative slices launch.

Launchers never read tensor values on the host (no synchronisation); the path and block sizes
come from :mod:`tempfast.kernels.heuristics`. Inputs need unit stride along the class
dimension (other layouts are copied once); the row stride is free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..kernels.heuristics import LaunchConfig, row_config, slices_phases, vector_width
from ..kernels.heuristics import resident_programs as occupancy


@functools.lru_cache(maxsize=16)
def device_limits(device: torch.device) -> dict | None:
    """SMs, registers, threads and shared memory per SM of a CUDA device (None off CUDA)."""
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    return {"sms": p.multi_processor_count,
            "regs_per_sm": getattr(p, "regs_per_multiprocessor", 65536),
            "threads_per_sm": getattr(p, "max_threads_per_multi_processor", 2048),
            "shared_per_sm": getattr(p, "shared_memory_per_multiprocessor", 228 * 1024)}


def num_sms(device: torch.device) -> int | None:
    limits = device_limits(device)
    return limits["sms"] if limits else None


# (kernel, args, kwargs) -> programs resident at once; bench.static installs one that reads the
# binary it compiles (the recording runs on CPU tensors without the interpreter).
resident_override: Callable[[object, tuple, dict], int] | None = None
_RESIDENT: dict[tuple, int] = {}


def _specialisation_key(args: tuple) -> tuple:
    """What the JIT specialises on, roughly: dtypes and 16-byte alignment of tensors,
    divisibility by 16 and equality to 1 of integers."""
    key = []
    for a in args:
        if isinstance(a, Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, bool) or not isinstance(a, int):
            key.append(type(a))
        else:
            key.append((a % 16 == 0, a == 1))
    return tuple(key)


def resident_programs(kernel, args: tuple, kwargs: dict, device: torch.device) -> int:
    """Programs of ``kernel`` (compiled for these arguments) that fit on the device at once.
    1 off CUDA: the interpreter runs one program at a time."""
    if resident_override is not None:
        return resident_override(kernel, args, kwargs)
    limits = device_limits(device)
    if limits is None:
        return 1
    key = (kernel.fn.__name__, tuple(sorted(kwargs.items())), _specialisation_key(args), device)
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()
        _RESIDENT[key] = occupancy(compiled.n_regs, compiled.metadata.shared,
                                   compiled.metadata.num_warps, **limits)
    return _RESIDENT[key]


def unit_col_stride(x: Tensor) -> Tensor:
    """``x`` with unit stride along dim 1 (a copy only when it has not)."""
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


def stride_of(rows: Tensor) -> int:
    """0 for a broadcast ``(1,)`` per-row tensor, 1 for ``(N,)``."""
    return 0 if rows.numel() == 1 else 1


def row_vector_width(x: Tensor, *others: Tensor) -> int:
    """The ``VEC`` hint of rows of ``x`` (and ``others`` read or written alike): elements per
    16 bytes when ``C`` and every row stride are multiples of it, else 1."""
    n_rows, n_cols = x.shape
    strides = [t.stride(0) for t in (x, *others) if t.dim() == 2 and n_rows > 1]
    return vector_width(n_cols, x.element_size(), *strides)


def config_for(x: Tensor, n_inputs: int = 1, *others: Tensor) -> LaunchConfig:
    """The launch configuration for rows of ``x`` (and ``others`` read or written alike)."""
    n_rows, n_cols = x.shape
    return row_config(n_rows, n_cols, x.element_size(), num_sms(x.device), n_inputs,
                      row_vector_width(x, *others))


def temperature_args(t: Tensor | None, t_value: float, fallback: Tensor) -> tuple:
    """``(t_ptr, stride_t, t_value)`` of a kernel: a temperature by value (``t_value > 0``)
    passes ``fallback`` as the never-read pointer."""
    if t_value > 0:
        return fallback, 0, float(t_value)
    return t.contiguous(), stride_of(t), 0.0


def launch_slices(kernel, args: tuple, kw: dict, cfg: LaunchConfig, items: int,
                  device: torch.device) -> None:
    """The cooperative one-read launch (``PHASE = 0``) when it is deadlock-free, else the two
    phases."""
    resident = resident_programs(kernel, args, {**kw, "PHASE": 0}, device)
    if slices_phases(cfg.n_slices, resident) == 1:
        kernel[(min(resident, items),)](*args, **kw, PHASE=0)
    else:
        kernel[(items,)](*args, **kw, PHASE=1)
        kernel[(items,)](*args, **kw, PHASE=2)

"""Helpers of the Triton launchers (``triton_path.py`` of each op): the device's limits, the
residency of a compiled kernel, the launch configuration of a row-wise kernel and the
cooperative slices launch.

Launchers never read tensor values on the host (no synchronisation); the path and block sizes
come from :mod:`tempfast.kernels.heuristics`. Inputs need unit stride along the class
dimension (other layouts are copied once); the row stride is free.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .. import backend
from ..kernels.heuristics import LaunchConfig, row_config, slices_phases, vector_width
from ..kernels.heuristics import resident_programs as occupancy

COOPERATIVE_ENV = "TEMPFAST_COOPERATIVE"
# Polls of a cooperative wait before a program gives up (its item then goes to the repair
# launch). A normal wait lasts while the other slices of its row are loaded (microseconds, a
# few hundred polls of an L2 atomic at most); this bound is only reached when the row's other
# programs cannot run (residency misjudged, SMs taken by other work).
MAX_POLLS = 1 << 14
_wait = {"max_polls": MAX_POLLS, "poll_add": 0}


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


def quiet_interpreter(launcher: Callable) -> Callable:
    """Under ``TRITON_INTERPRET=1`` the kernels run as numpy code, whose masked lanes (``0 *
    -inf``, ``1 / 0`` where a mask discards the result) raise RuntimeWarnings the caller did
    not cause: silenced for the launches of ``launcher`` (numpy's error state, restored after).
    Off the interpreter the wrapper only tests ``TRITON_INTERPRET`` and calls through."""
    @functools.wraps(launcher)
    def launch(*args, **kwargs):
        if not backend.interpreter_enabled():
            return launcher(*args, **kwargs)
        import numpy

        with numpy.errstate(all="ignore"):
            return launcher(*args, **kwargs)
    return launch


def cooperative_setting() -> bool | None:
    """``TEMPFAST_COOPERATIVE``: ``"0"`` forces the two-launch slices path, ``"1"`` the
    cooperative launch even where residency cannot be shown (the interpreter included: its
    bounded waits give up and the repair launch finishes their items); unset or empty, the
    launcher decides (:func:`cooperative_grid`)."""
    raw = os.environ.get(COOPERATIVE_ENV)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    if value not in ("0", "1"):
        raise ValueError(f"{COOPERATIVE_ENV}: must be 0 or 1 (or unset), got {raw!r}")
    return value == "1"


def cooperative_grid(kernel, args: tuple, kw: dict, n_slices: int, items: int,
                     device: torch.device) -> int | None:
    """The grid of the cooperative one-read launch (``PHASE = 0``: at most the programs that
    fit on the device at once), or ``None`` for the two launches: cooperative when at least
    ``n_slices`` programs fit (every wait then ends without a give-up, unless other work holds
    the SMs), or when ``TEMPFAST_COOPERATIVE=1``."""
    forced = cooperative_setting()
    if forced is False:
        return None
    # the PHASE = 0 binary: the wait's arguments (max_polls, poll_add, repair) are not
    # specialised on, any values compile it
    resident = resident_programs(kernel, (*args, *wait_args(), 0), {**kw, "PHASE": 0}, device)
    if forced or slices_phases(n_slices, resident) == 1:
        return max(1, min(resident, items))
    return None


def wait_args() -> tuple[int, int]:
    """``(max_polls, poll_add)`` of a cooperative launch (see :func:`wait_hook`)."""
    return _wait["max_polls"], _wait["poll_add"]


@contextlib.contextmanager
def wait_hook(max_polls: int, poll_add: int = 0) -> Iterator[None]:
    """For tests: cooperative waits give up after ``max_polls`` polls, and each poll adds
    ``poll_add`` arrivals (1: a wait that succeeds after polling, once the row's other
    partials were published by a ``PHASE = 1`` launch)."""
    saved = dict(_wait)
    _wait.update(max_polls=max_polls, poll_add=poll_add)
    try:
        yield
    finally:
        _wait.update(saved)


def run_slices(kernel, args: tuple, kw: dict, grid: int | None, items: int,
               stats_kw: dict | None = None) -> None:
    """Launch a slices kernel: with a cooperative ``grid``, ``PHASE = 0`` and then the repair
    launch (``PHASE = 2`` over the listed items, always run: nothing on the host knows whether
    a wait gave up), else ``PHASE = 1`` (with ``stats_kw``, default ``kw``) and ``PHASE = 2``
    over every item. The kernels take ``(*args, max_polls, poll_add, repair)``."""
    max_polls, poll_add = wait_args()
    if grid is not None:
        kernel[(grid,)](*args, max_polls, poll_add, 0, **kw, PHASE=0)
        kernel[(grid,)](*args, max_polls, poll_add, 1, **kw, PHASE=2)
    else:
        kernel[(items,)](*args, max_polls, poll_add, 0, **(stats_kw or kw), PHASE=1)
        kernel[(items,)](*args, max_polls, poll_add, 0, **kw, PHASE=2)


def launch_slices(kernel, args: tuple, kw: dict, cfg: LaunchConfig, items: int,
                  device: torch.device) -> None:
    """The cooperative one-read launch and its repair launch when :func:`cooperative_grid`
    allows it, else the two phases."""
    grid = cooperative_grid(kernel, args, kw, cfg.n_slices, items, device)
    run_slices(kernel, args, kw, grid, items)

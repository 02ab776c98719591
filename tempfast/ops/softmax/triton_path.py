"""The Triton path of the softmax: launchers of ``kernels/softmax.py``, with the contract of
``torch_path.py`` (see there for the shapes).

Rows path: one launch. Slices path: one workspace (header, ``SOFTMAX_PARTIALS`` per work
item, the backward's dL/dT shares, one int32 counter per row, the repair list; zeroed) and the
cooperative launch with its repair launch, or the two-phase fallback
(:func:`tempfast.ops.launch.launch_slices`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import common
from ...kernels import softmax as kernels
from ...kernels.heuristics import LaunchConfig, cdiv
from ..launch import (
    config_for,
    launch_slices,
    quiet_interpreter,
    temperature_args,
    unit_col_stride,
)


def _slices_workspace(n_rows: int, cfg: LaunchConfig, extra: int, device) -> tuple[Tensor, int]:
    """A zeroed workspace for a slices launch: header, ``SOFTMAX_PARTIALS`` per item, ``extra``
    slots, one int32 counter per row and the repair list (one int32 per item); returns it
    and the counters' offset."""
    items = n_rows * cfg.n_slices
    sync_off = common.WS_HEADER.value + common.SOFTMAX_PARTIALS.value * items + extra
    return torch.zeros(sync_off + n_rows + items, dtype=torch.float32, device=device), sync_off


@quiet_interpreter
def softmax_forward(x: Tensor, t: Tensor | None, log: bool, t_value: float = 0.0) -> Tensor:
    """See :func:`tempfast.ops.softmax.torch_path.softmax_forward`."""
    x = unit_col_stride(x)
    n_rows, n_cols = x.shape
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    cfg = config_for(x, 1, y)
    if cfg.path == "rows":
        kernels.softmax_rows_kernel[(cdiv(n_rows, cfg.block_n),)](
            x, x.stride(0), *temperature_args(t, t_value, x), y, y.stride(0), n_rows, n_cols,
            LOG=log, VEC=cfg.vec, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps)
        return y
    ws, sync_off = _slices_workspace(n_rows, cfg, 0, x.device)
    items = n_rows * cfg.n_slices
    args = (x, x.stride(0), *temperature_args(t, t_value, ws), y, y.stride(0), ws, sync_off,
            n_rows, n_cols, cfg.n_slices, items)
    kw = {"LOG": log, "VEC": cfg.vec, "BLOCK_C": cfg.block_c, "BLOCK_S": cfg.block_s,
          "num_warps": cfg.num_warps}
    launch_slices(kernels.softmax_slices_kernel, args, kw, cfg, items, x.device)
    return y


@quiet_interpreter
def softmax_backward(y: Tensor, dy: Tensor, t: Tensor | None, log: bool, x: Tensor | None,
                     t_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """See :func:`tempfast.ops.softmax.torch_path.softmax_backward`."""
    y = unit_col_stride(y)
    dy = unit_col_stride(dy)
    n_rows, n_cols = y.shape
    compute_dt = x is not None
    x = unit_col_stride(x) if compute_dt else y
    dx = torch.empty((n_rows, n_cols), dtype=y.dtype, device=y.device)
    cfg = config_for(y, 3 if compute_dt else 2, dy, x, dx)
    if cfg.path == "rows":
        dt = torch.empty(n_rows if compute_dt else 0, dtype=torch.float32, device=y.device)
        kernels.softmax_bwd_rows_kernel[(cdiv(n_rows, cfg.block_n),)](
            y, y.stride(0), dy, dy.stride(0), x, x.stride(0), *temperature_args(t, t_value, dt),
            dx, dx.stride(0), dt, n_rows, n_cols, LOG=log, COMPUTE_DT=compute_dt, VEC=cfg.vec,
            BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
        return dx, dt
    items = n_rows * cfg.n_slices
    ws, sync_off = _slices_workspace(n_rows, cfg, items, y.device)
    dt_off = sync_off - items
    args = (y, y.stride(0), dy, dy.stride(0), x, x.stride(0), *temperature_args(t, t_value, ws),
            dx, dx.stride(0), ws, dt_off, sync_off, n_rows, n_cols, cfg.n_slices, items)
    kw = {"LOG": log, "COMPUTE_DT": compute_dt, "VEC": cfg.vec, "BLOCK_C": cfg.block_c,
          "BLOCK_S": cfg.block_s, "num_warps": cfg.num_warps}
    launch_slices(kernels.softmax_bwd_slices_kernel, args, kw, cfg, items, y.device)
    if not compute_dt:
        return dx, ws[:0]
    return dx, ws[dt_off:sync_off].view(n_rows, cfg.n_slices).sum(1)

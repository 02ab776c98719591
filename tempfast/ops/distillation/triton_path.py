"""The Triton path of the distillation loss: the launcher of ``kernels/distillation.py``.

Same contract as :func:`.torch_path.distill_rows`. No host reads of tensor values; the path and
block sizes come from :func:`tempfast.kernels.distillation.distill_config`. The slices path
reads each input once in its cooperative launch (``kd_coop_slices_kernel``, with the bounded
wait and the repair launch of the cross-entropy's) for fp32 inputs
(:func:`tempfast.kernels.distillation.coop_pays`) when the row's slices can be resident at
once; else, and under the interpreter, two launches and a combine between them. Inputs need unit
stride along the classes (other layouts are copied once); the row stride is free. One fp32
workspace holds the per-row outputs (KD loss, CE loss, dL/dT at ``{0, N, 2N} + row``), and on
the slices path the slices' partials and dL/dT shares.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import common
from ...kernels import distillation as kernels
from ...kernels.distillation import (
    DISTILL_BLOCK_S,
    DISTILL_COMBINE_ROWS,
    distill_config,
    distill_warps,
)
from ...kernels.heuristics import LaunchConfig, cdiv
from ..launch import (
    cooperative_grid,
    quiet_interpreter,
    row_vector_width,
    run_slices,
    unit_col_stride,
)


def config_for(x: Tensor, n_inputs: int = 2, *others: Tensor,
               extras: bool = False) -> LaunchConfig:
    """The launch configuration for rows of ``x`` (and ``others`` read or written alike)."""
    n_rows, n_cols = x.shape
    return distill_config(n_rows, n_cols, x.element_size(), row_vector_width(x, *others),
                          extras)


@quiet_interpreter
def distill_rows(student: Tensor, teacher: Tensor, temperature: Tensor, target: Tensor | None,
                 ignore_index: int, kd_scale: float, ce_scale: Tensor | None,
                 teacher_grad: bool, compute_dt: bool):
    """See :func:`.torch_path.distill_rows`."""
    s = unit_col_stride(student)
    t = unit_col_stride(teacher)
    n_rows, n_cols = s.shape
    grad_s = torch.empty((n_rows, n_cols), dtype=s.dtype, device=s.device)
    grad_t = torch.empty((n_rows, n_cols) if teacher_grad else 0, dtype=t.dtype,
                         device=t.device)
    g_t = grad_t if teacher_grad else grad_s
    flags = (int(target is not None), int(teacher_grad), int(compute_dt))
    extras = any(flags)  # plain KD compiles without the hard-label term, grad_t and dL/dT
    cfg = config_for(s, 2, t, grad_s, g_t, extras=extras)
    slices = cfg.path == "slices"
    one_read = slices and kernels.coop_pays(s.element_size())
    coop = kernels.coop_config(n_rows, n_cols, cfg.vec, extras) if one_read else cfg
    # partials and dL/dT shares sized for either launch (the cooperative one has more slices)
    items = n_rows * max(cfg.n_slices, coop.n_slices) if slices else 0
    slots = kernels.KD_PARTIALS.value
    part_off = 3 * n_rows
    stats_off = part_off + slots * items
    share_off = stats_off + (slots * n_rows if items else 0)
    ws = torch.empty(share_off + items, dtype=torch.float32, device=s.device)
    temp = temperature.float().contiguous()
    y = target if target is not None else ws
    cs = ce_scale.float().contiguous() if ce_scale is not None else ws
    head = (s, s.stride(0), t, t.stride(0), temp, 0 if temp.numel() == 1 else 1, y, cs,
            grad_s, grad_s.stride(0), g_t, g_t.stride(0), ws)
    if cfg.path == "rows":
        kernels.kd_rows_kernel[(cdiv(n_rows, cfg.block_n),)](
            *head, n_rows, n_cols, ignore_index, float(kd_scale), *flags, EXTRAS=extras,
            VEC=cfg.vec, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    elif one_read and _one_read(head, part_off, stats_off, share_off, n_rows, n_cols, coop,
                                ignore_index, kd_scale, flags, extras):
        cfg = coop
    else:
        args = (*head, part_off, stats_off, share_off, n_rows, n_cols, cfg.n_slices,
                ignore_index, float(kd_scale), *flags)
        kw = {"VEC": cfg.vec, "BLOCK_C": cfg.block_c}
        stats_warps = distill_warps(cfg.block_c) if extras else cfg.num_warps
        kernels.kd_slices_kernel[(items,)](*args, **kw, PHASE=1, EXTRAS=False,
                                              num_warps=stats_warps)
        kernels.kd_combine_kernel[(cdiv(n_rows, DISTILL_COMBINE_ROWS),)](
            ws, part_off, stats_off, n_rows, cfg.n_slices, cdiv(cfg.n_slices, DISTILL_BLOCK_S),
            flags[0],
            BLOCK_R=DISTILL_COMBINE_ROWS, BLOCK_S=DISTILL_BLOCK_S, num_warps=4)
        kernels.kd_slices_kernel[(items,)](*args, **kw, PHASE=2, EXTRAS=extras,
                                              num_warps=cfg.num_warps)
    kd = ws[:n_rows]
    ce = ws[n_rows:2 * n_rows] if target is not None else ws[:0]
    if not compute_dt:
        dt = ws[:0]
    elif cfg.path == "rows":
        dt = ws[2 * n_rows:3 * n_rows]
    else:
        used = n_rows * cfg.n_slices
        dt = ws[share_off:share_off + used].view(n_rows, cfg.n_slices).sum(1)
    return kd, ce, grad_s, grad_t, dt


def _one_read(head: tuple, part_off: int, stats_off: int, share_off: int, n_rows: int,
              n_cols: int, cfg: LaunchConfig, ignore_index: int, kd_scale: float, flags: tuple,
              extras: bool) -> bool:
    """The slices path's cooperative one-read launch and its repair launch, when
    :func:`tempfast.ops.launch.cooperative_grid` allows it (at least ``n_slices`` programs
    resident at once, or ``TEMPFAST_COOPERATIVE=1``); False: the two launches run instead.
    The protocol's state (ticket, give-ups, an arrival and a ready counter per row, the repair
    list) is one zeroed int32 workspace."""
    items = n_rows * cfg.n_slices
    sync_off = common.WS_HEADER.value
    device = head[0].device
    sync = torch.zeros(sync_off + 2 * n_rows + items, dtype=torch.int32, device=device)
    block_s = kernels.coop_block_s(cfg.n_slices)
    args = (*head, part_off, stats_off, share_off, sync, sync_off, n_rows, n_cols, cfg.n_slices,
            items, cdiv(cfg.n_slices, block_s), ignore_index, float(kd_scale), *flags)
    kw = {"EXTRAS": extras, "VEC": cfg.vec, "BLOCK_C": cfg.block_c, "BLOCK_S": block_s,
          "num_warps": cfg.num_warps}
    grid = cooperative_grid(kernels.kd_coop_slices_kernel, args, kw, cfg.n_slices, items, device)
    if grid is None:
        return False
    run_slices(kernels.kd_coop_slices_kernel, args, kw, grid, items)
    return True

"""The Triton path of the distillation loss: the launcher of ``kernels/distillation.py``.

Same contract as :func:`.torch_path.distill_rows`. No host reads of tensor values; the path and
block sizes come from :func:`tempfast.kernels.distillation.distill_config`. Inputs need unit
stride along the classes (other layouts are copied once); the row stride is free. One fp32
workspace holds the per-row outputs (KD loss, CE loss, dL/dT at ``{0, N, 2N} + row``), and on
the slices path the slices' partials and dL/dT shares.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import distillation as kernels
from ...kernels.distillation import (
    DISTILL_BLOCK_S,
    DISTILL_COMBINE_ROWS,
    distill_config,
    distill_warps,
)
from ...kernels.heuristics import LaunchConfig, cdiv
from ..launch import quiet_interpreter, row_vector_width, unit_col_stride


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
    items = n_rows * cfg.n_slices if cfg.path == "slices" else 0
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
        dt = ws[share_off:share_off + items].view(n_rows, cfg.n_slices).sum(1)
    return kd, ce, grad_s, grad_t, dt

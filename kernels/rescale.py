"""Backward pass of a fused cross-entropy: apply the upstream gradient to what the forward wrote.

The forward pass stored the logits' gradient for an upstream gradient of 1 (and dL/dT in its
workspace). :func:`grad_apply_kernel` multiplies them by the upstream gradient ``g`` (a
device scalar, never read on the host): ``dT_out = g * dT``; ``buf *= g * r`` where ``r`` is
1, or the mean's ``1 / divisor`` when the forward deferred it (fp16). When the factor is
exactly 1 (plain ``loss.backward()``) the grid exits after one scalar load: no memory traffic,
no host synchronisation. The grid is persistent (a few programs per SM) and walks
``[BLOCK_N, BLOCK_C]`` tiles with a stride of the grid size.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import WS_ROW_FACTOR, col_mask, row_offset
from .heuristics import DEFAULT_NUM_SMS, MIN_BLOCK_C, TILE_ELEMENTS, cdiv, next_pow2

APPLY_PROGRAMS_PER_SM = 4  # persistent grid of the gradient apply


def apply_config(n_rows: int, n_cols: int, num_sms: int | None = None) -> tuple[int, int, int, int]:
    """``(BLOCK_N, BLOCK_C, num_warps, programs)`` of the backward's gradient apply: 4096-value
    tiles, a persistent grid of ``APPLY_PROGRAMS_PER_SM`` programs per SM (or fewer tiles)."""
    block_c = max(MIN_BLOCK_C, min(next_pow2(n_cols), 4096))
    block_n = max(1, min(TILE_ELEMENTS // block_c, next_pow2(n_rows)))
    tiles = cdiv(n_rows, block_n) * cdiv(n_cols, block_c)
    programs = max(1, min(tiles, APPLY_PROGRAMS_PER_SM * (num_sms or DEFAULT_NUM_SMS)))
    return block_n, block_c, 8, programs


@triton.jit
def grad_apply_kernel(buf_ptr, stride_buf, g_ptr, ws_ptr, dt_off, dt_out_ptr, n_dt,
                      n_rows, n_cols, n_col_tiles, n_tiles, tiles_per_program, dt_per_program,
                      defer, VEC: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_DT: tl.constexpr):
    """``dt_out[i] = g * ws[dt_off + i]`` for ``i < n_dt``; ``buf[N, C] *= g * r``, skipped
    when that factor is 1. Tile ``t`` covers rows ``(t // n_col_tiles) * BLOCK_N`` and columns
    ``(t % n_col_tiles) * BLOCK_C``; ``VEC``: the row stride and ``C`` are multiples of it
    (16 bytes)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    g = tl.load(g_ptr).to(tl.float32)
    offs = tl.arange(0, BLOCK_DT)
    for i in range(0, dt_per_program):
        o = (i * n_programs + pid) * BLOCK_DT + offs
        ok = o < n_dt
        tl.store(dt_out_ptr + o, tl.load(ws_ptr + dt_off + o, mask=ok, other=0.0) * g, mask=ok)
    factor = g
    if defer != 0:
        factor = g * tl.load(ws_ptr + WS_ROW_FACTOR)
    if factor != 1.0:
        for i in range(0, tiles_per_program):
            tile = i * n_programs + pid
            rows = (tile // n_col_tiles).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
            cols = (tile % n_col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
            mask = (((rows < n_rows) & (tile < n_tiles))[:, None]
                    & col_mask(cols, n_cols, VEC)[None, :])
            offs2 = row_offset(rows, stride_buf, VEC)[:, None] + cols[None, :]
            x = tl.load(buf_ptr + offs2, mask=mask, other=0.0).to(tl.float32)
            tl.store(buf_ptr + offs2, (x * factor).to(buf_ptr.dtype.element_ty), mask=mask)


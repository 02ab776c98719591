"""Temperature softmax / log-softmax, forward and backward, over the last dim of ``(N, C)``.

Forward, per row, with ``k = log2(e) / T``, ``u = k x``, ``m = max u``, ``s = sum 2^(u - m)``:

    softmax      y = 2^(u - m) / s
    log_softmax  y = ln2 (u - m - log2 s)

Backward, with ``dy`` the incoming gradient (``p = exp(y)`` for log-softmax):

    softmax      dx = y (dy - A) / T,   A = sum(dy y)
    log_softmax  dx = (dy - p A) / T,   A = sum(dy)
    dL/dT        = -sum(dx x) / T       (accumulated while dx is written: no cancellation
                                         between two large sums)

All sums are fp32; outputs are stored in the output buffer's dtype; offsets are 64-bit. A
temperature that is not finite and positive gives NaN for its row.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cross_entropy import _scale_log2


@triton.jit
def _max_sum(x_row, k, c_start, c_end, n_chunks, BLOCK_C: tl.constexpr):
    """Online ``(m, s)`` of ``u = k x`` over columns ``[c_start, c_end)`` (log2 units)."""
    m = tl.full((), -float("inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        u = tl.where(mask, tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32) * k,
                     -float("inf"))
        m_new = tl.maximum(m, tl.max(u, axis=0))
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp2(m - m_ref) + tl.sum(tl.exp2(u - m_ref), axis=0)
        m = m_new
    return m, s


@triton.jit
def _write_softmax(x_row, y_row, k, m_ref, s, c_start, c_end, n_chunks, LOG: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Store softmax (or log-softmax) for columns ``[c_start, c_end)`` given the row's max
    ``m_ref`` (0 for a row of -inf) and ``s = sum 2^(u - m_ref)``."""
    log2_s = tl.log2(s)
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        u = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32) * k - m_ref
        if LOG:
            out = (u - log2_s) * 0.6931471805599453
        else:
            out = tl.exp2(u) / s
        tl.store(y_row + cols, out.to(y_row.dtype.element_ty), mask=mask)


@triton.jit
def softmax_single_pass_kernel(x_ptr, stride_x, t_ptr, stride_t, y_ptr, stride_y,
                               n_rows, n_cols, LOG: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_C: tl.constexpr):
    """``BLOCK_N`` whole rows per program (``C <= BLOCK_C``): one read, one write."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    k = _scale_log2(tl.load(t_ptr + rows * stride_t, mask=row_mask, other=1.0))
    u = tl.where(mask, x.to(tl.float32) * k[:, None], -float("inf"))
    m = tl.max(u, axis=1)
    m = tl.where(row_mask & (m > -float("inf")), m, 0.0)
    e = tl.exp2(u - m[:, None])
    s = tl.sum(e, axis=1)
    if LOG:
        out = ((u - m[:, None]) - tl.log2(s)[:, None]) * 0.6931471805599453
    else:
        out = e / s[:, None]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], out.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def softmax_stream_kernel(x_ptr, stride_x, t_ptr, stride_t, y_ptr, stride_y, n_cols, n_chunks,
                          LOG: tl.constexpr, BLOCK_C: tl.constexpr):
    """One row per program: an online max / sum pass, then a write pass."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    m, s = _max_sum(x_row, k, 0, n_cols, n_chunks, BLOCK_C)
    m_ref = tl.where(m == -float("inf"), 0.0, m)
    _write_softmax(x_row, y_ptr + row * stride_y, k, m_ref, s, 0, n_cols, n_chunks, LOG, BLOCK_C)


@triton.jit
def softmax_split_stats_kernel(x_ptr, stride_x, t_ptr, stride_t, part_ptr, n_cols,
                               chunks_per_split, BLOCK_C: tl.constexpr):
    """Grid ``(N, splits)``: ``part[row, split] = (m, s)`` of one column range."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    c_start = split * chunks_per_split * BLOCK_C
    c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    m, s = _max_sum(x_ptr + row * stride_x, k, c_start, c_end, chunks_per_split, BLOCK_C)
    out = part_ptr + (row * tl.num_programs(1) + split) * 2
    tl.store(out, m)
    tl.store(out + 1, s)


@triton.jit
def softmax_split_finish_kernel(x_ptr, stride_x, t_ptr, stride_t, y_ptr, stride_y, part_ptr,
                                n_cols, chunks_per_split, LOG: tl.constexpr,
                                BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid ``(N, splits)``: combine the row's partials, write one column range."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs = tl.arange(0, BLOCK_S)
    smask = offs < n_splits
    part = part_ptr + row * n_splits * 2 + offs * 2
    m_i = tl.load(part, mask=smask, other=-float("inf"))
    m = tl.max(m_i, axis=0)
    m_ref = tl.where(m == -float("inf"), 0.0, m)
    s = tl.sum(tl.where(smask, tl.load(part + 1, mask=smask, other=0.0) * tl.exp2(m_i - m_ref),
                        0.0), axis=0)
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    c_start = split * chunks_per_split * BLOCK_C
    c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
    _write_softmax(x_ptr + row * stride_x, y_ptr + row * stride_y, k, m_ref, s, c_start, c_end,
                   chunks_per_split, LOG, BLOCK_C)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _bwd_row_sum(y_row, dy_row, c_start, c_end, n_chunks, LOG: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """``A`` of the module docstring over columns ``[c_start, c_end)``."""
    a = tl.full((), 0.0, tl.float32)
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            a += tl.sum(dy, axis=0)
        else:
            a += tl.sum(dy * tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32), axis=0)
    return a


@triton.jit
def _write_bwd(y_row, dy_row, x_row, dx_row, a, inv_t, c_start, c_end, n_chunks,
               LOG: tl.constexpr, COMPUTE_DT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Store ``dx`` for columns ``[c_start, c_end)`` given the row sum ``A``; return
    ``sum(dx x)`` over them (0 unless COMPUTE_DT)."""
    dx_x = tl.full((), 0.0, tl.float32)
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = (dy - tl.exp(y) * a) * inv_t
        else:
            dx = y * (dy - a) * inv_t
        tl.store(dx_row + cols, dx.to(dx_row.dtype.element_ty), mask=mask)
        if COMPUTE_DT:
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            dx_x += tl.sum(tl.where(dx != 0.0, dx * x, 0.0), axis=0)
    return dx_x


@triton.jit
def softmax_bwd_single_pass_kernel(y_ptr, stride_y, dy_ptr, stride_dy, x_ptr, stride_x, t_ptr,
                                   stride_t, dx_ptr, stride_dx, dt_ptr, n_rows, n_cols,
                                   LOG: tl.constexpr, COMPUTE_DT: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``BLOCK_N`` whole rows per program: reads ``y`` and ``dy`` once, writes ``dx``."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0)
    y = y.to(tl.float32)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    inv_t = _scale_log2(tl.load(t_ptr + rows * stride_t, mask=row_mask, other=1.0))
    inv_t = inv_t * 0.6931471805599453
    if LOG:
        a = tl.sum(dy, axis=1)
        dx = (dy - tl.where(mask, tl.exp(y), 0.0) * a[:, None]) * inv_t[:, None]
    else:
        a = tl.sum(dy * y, axis=1)
        dx = y * (dy - a[:, None]) * inv_t[:, None]
    tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=mask)
    if COMPUTE_DT:
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        dx_x = tl.sum(tl.where(dx != 0.0, dx * x.to(tl.float32), 0.0), axis=1)
        tl.store(dt_ptr + rows, -dx_x * inv_t, mask=row_mask)


@triton.jit
def softmax_bwd_stream_kernel(y_ptr, stride_y, dy_ptr, stride_dy, x_ptr, stride_x, t_ptr,
                              stride_t, dx_ptr, stride_dx, dt_ptr, n_cols, n_chunks,
                              LOG: tl.constexpr, COMPUTE_DT: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    """One row per program: a pass for the row sum ``A``, then a write pass."""
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * stride_y
    dy_row = dy_ptr + row * stride_dy
    inv_t = _scale_log2(tl.load(t_ptr + row * stride_t)) * 0.6931471805599453
    a = _bwd_row_sum(y_row, dy_row, 0, n_cols, n_chunks, LOG, BLOCK_C)
    dx_x = _write_bwd(y_row, dy_row, x_ptr + row * stride_x, dx_ptr + row * stride_dx, a, inv_t,
                      0, n_cols, n_chunks, LOG, COMPUTE_DT, BLOCK_C)
    if COMPUTE_DT:
        tl.store(dt_ptr + row, -dx_x * inv_t)


@triton.jit
def softmax_bwd_split_stats_kernel(y_ptr, stride_y, dy_ptr, stride_dy, part_ptr, n_cols,
                                   chunks_per_split, LOG: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid ``(N, splits)``: ``part[row, split] = A`` of one column range."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    c_start = split * chunks_per_split * BLOCK_C
    c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
    a = _bwd_row_sum(y_ptr + row * stride_y, dy_ptr + row * stride_dy, c_start, c_end,
                     chunks_per_split, LOG, BLOCK_C)
    tl.store(part_ptr + row * tl.num_programs(1) + split, a)


@triton.jit
def softmax_bwd_split_finish_kernel(y_ptr, stride_y, dy_ptr, stride_dy, x_ptr, stride_x, t_ptr,
                                    stride_t, dx_ptr, stride_dx, dt_ptr, part_ptr, n_cols,
                                    chunks_per_split, LOG: tl.constexpr, COMPUTE_DT: tl.constexpr,
                                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid ``(N, splits)``: sum the row's partial ``A``; write ``dx`` for one column range and,
    with COMPUTE_DT, that range's share of dL/dT into ``dt[row, split]`` (summed by the
    launcher)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs = tl.arange(0, BLOCK_S)
    a = tl.sum(tl.load(part_ptr + row * n_splits + offs, mask=offs < n_splits, other=0.0),
               axis=0)
    inv_t = _scale_log2(tl.load(t_ptr + row * stride_t)) * 0.6931471805599453
    c_start = split * chunks_per_split * BLOCK_C
    c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
    dx_x = _write_bwd(y_ptr + row * stride_y, dy_ptr + row * stride_dy, x_ptr + row * stride_x,
                      dx_ptr + row * stride_dx, a, inv_t, c_start, c_end, chunks_per_split, LOG,
                      COMPUTE_DT, BLOCK_C)
    if COMPUTE_DT:
        tl.store(dt_ptr + row * n_splits + split, -dx_x * inv_t)

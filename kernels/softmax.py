"""Temperature softmax / log-softmax, forward and backward, over the last dim of ``(N, C)``.

Forward, per row, with ``k = log2(e) / T``, ``u = k x``, ``m = max u``, ``s = sum 2^(u - m)``:

    softmax      y = 2^(u - m) / s
    log_softmax  y = ln2 ((u - m) - log2 s)

Backward, with ``dy`` the incoming gradient (``p = exp(y)`` for log-softmax):

    softmax      dx = y (dy - A) / T,   A = sum(dy y)
    log_softmax  dx = (dy - p A) / T,   A = sum(dy)
    dL/dT        = -sum(dx x) / T       (accumulated while dx is written: no cancellation
                                         between two large sums)

Paths as in :mod:`.cross_entropy`: ``*_rows_kernel`` holds ``BLOCK_N`` whole rows on chip;
``*_slices_kernel`` cuts rows into slices whose partials (forward ``(m, s)``, backward ``A``)
are combined, one read (``PHASE == 0``, cooperative, then the repair launch) or two launches
(``PHASE`` 1 then 2). The slices kernels' workspace ``ws`` holds the header of :mod:`.common`
(the ticket and give-up counters), the partials at ``WS_HEADER + 2 * item``, the int32 row
counters at ``sync_off`` and the repair list after them (``sync_off + N``).

All sums are fp32; outputs are stored in the output buffer's dtype; offsets are 64-bit. A
temperature that is not finite and positive gives NaN for its row.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    SOFTMAX_PARTIALS,
    WS_HEADER,
    arrive_and_wait,
    col_mask,
    combine_max,
    give_up,
    rescale_to,
    row_offset,
    row_temperature,
    safe_max,
    temperature_scale,
    work_item,
)


@triton.jit
def _normalise(x, k, m, s, LOG: tl.constexpr):
    """``softmax`` (or ``log_softmax``) of a tile given the row max ``m`` and
    ``s = sum 2^(u - m)``."""
    if LOG:
        return (x * k[:, None] - m[:, None] - tl.log2(s)[:, None]) * LN2
    return tl.exp2(x * k[:, None] - m[:, None]) * (1.0 / s)[:, None]


@triton.jit
def softmax_rows_kernel(x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, stride_y,
                        n_rows, n_cols, LOG: tl.constexpr, VEC: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``BLOCK_N`` whole rows per program (``C <= BLOCK_C``): one read, one write."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    mask = row_mask[:, None] & col_mask(cols, n_cols, VEC)[None, :]
    x = tl.load(x_ptr + row_offset(rows, stride_x, VEC)[:, None] + cols[None, :], mask=mask,
                other=-float("inf")).to(tl.float32)
    k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, row_mask))
    m = safe_max(tl.max(x, axis=1) * k)
    s = tl.sum(tl.exp2(x * k[:, None] - m[:, None]), axis=1)
    out = _normalise(x, k, m, s, LOG)
    tl.store(y_ptr + row_offset(rows, stride_y, VEC)[:, None] + cols[None, :],
             out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["max_polls", "poll_add", "repair"])
def softmax_slices_kernel(x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, stride_y, ws_ptr,
                          sync_off, n_rows, n_cols, n_slices, n_items, max_polls, poll_add,
                          repair, LOG: tl.constexpr, PHASE: tl.constexpr, VEC: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Work item ``i``: slice ``i % n_slices`` of row ``i // n_slices``; partials ``(m, s)``
    of a slice at ``ws[WS_HEADER + 2 i]``. Protocol, phases and the wait's arguments as
    :func:`tempfast.kernels.cross_entropy.ce_slices_kernel`."""
    sync = ws_ptr.to(tl.pointer_type(tl.int32))
    turn = tl.program_id(0)
    item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)
    limit = max_polls
    while item < n_items:
        row = (item // n_slices).to(tl.int64)
        sl = item % n_slices
        rows = row + tl.arange(0, 1)
        cols = sl * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = col_mask(cols, n_cols, VEC)[None, :]
        k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, rows < n_rows))
        x = tl.load(x_ptr + row_offset(row, stride_x, VEC) + cols[None, :], mask=mask,
                    other=-float("inf"))
        x = x.to(tl.float32)
        row_part = ws_ptr + WS_HEADER + row * n_slices * SOFTMAX_PARTIALS
        if PHASE != 2:
            m_raw = tl.max(x, axis=1) * k
            s_l = tl.sum(tl.exp2(x * k[:, None] - safe_max(m_raw)[:, None]), axis=1)
            part = row_part + sl * SOFTMAX_PARTIALS + tl.arange(0, 1)
            tl.store(part, m_raw)
            tl.store(part + 1, s_l)
        finish = PHASE != 1
        if PHASE == 0:
            finish, limit = arrive_and_wait(sync + sync_off + row, n_slices, limit, poll_add)
            if not finish:
                give_up(sync, sync_off + n_rows, item)
        if finish:
            offs = tl.arange(0, BLOCK_S)
            ok = offs < n_slices
            m_i = tl.load(row_part + offs * SOFTMAX_PARTIALS, mask=ok, other=-float("inf"),
                          cache_modifier=".cg")
            _m, m = combine_max(m_i, ok)
            f_i = rescale_to(m_i, m, ok)
            s = tl.sum(tl.load(row_part + offs * SOFTMAX_PARTIALS + 1, mask=ok, other=0.0,
                               cache_modifier=".cg") * f_i, axis=0)
            one = tl.zeros((1,), tl.float32)
            out = _normalise(x, k, m + one, s + one, LOG)
            tl.store(y_ptr + row_offset(row, stride_y, VEC) + cols[None, :],
                     out.to(y_ptr.dtype.element_ty), mask=mask)
        turn += tl.num_programs(0)
        item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _bwd_tile(y, dy, a, inv_t, LOG: tl.constexpr):
    if LOG:
        return (dy - tl.exp2(y * LOG2E) * a[:, None]) * inv_t[:, None]
    return y * (dy - a[:, None]) * inv_t[:, None]


@triton.jit
def softmax_bwd_rows_kernel(y_ptr, stride_y, dy_ptr, stride_dy, x_ptr, stride_x, t_ptr,
                            stride_t, t_value, dx_ptr, stride_dx, dt_ptr, n_rows, n_cols,
                            LOG: tl.constexpr, COMPUTE_DT: tl.constexpr, VEC: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``BLOCK_N`` whole rows per program: reads ``y`` and ``dy`` once (and ``x`` for
    dL/dT), writes ``dx`` and ``dt[row]``."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    mask = row_mask[:, None] & col_mask(cols, n_cols, VEC)[None, :]
    cols = cols[None, :]
    y = tl.load(y_ptr + row_offset(rows, stride_y, VEC)[:, None] + cols, mask=mask, other=0.0)
    y = y.to(tl.float32)
    dy = tl.load(dy_ptr + row_offset(rows, stride_dy, VEC)[:, None] + cols, mask=mask,
                 other=0.0).to(tl.float32)
    k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, row_mask))
    inv_t = k * LN2
    if LOG:
        a = tl.sum(dy, axis=1)
    else:
        a = tl.sum(dy * y, axis=1)
    dx = _bwd_tile(y, dy, a, inv_t, LOG)
    tl.store(dx_ptr + row_offset(rows, stride_dx, VEC)[:, None] + cols,
             dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if COMPUTE_DT:
        x = tl.load(x_ptr + row_offset(rows, stride_x, VEC)[:, None] + cols, mask=mask,
                    other=0.0)
        dx_x = tl.sum(tl.where(dx != 0.0, dx * x.to(tl.float32), 0.0), axis=1)
        tl.store(dt_ptr + rows, -dx_x * inv_t, mask=row_mask)


@triton.jit(do_not_specialize=["max_polls", "poll_add", "repair"])
def softmax_bwd_slices_kernel(y_ptr, stride_y, dy_ptr, stride_dy, x_ptr, stride_x, t_ptr,
                              stride_t, t_value, dx_ptr, stride_dx, ws_ptr, dt_off, sync_off,
                              n_rows, n_cols, n_slices, n_items, max_polls, poll_add, repair,
                              LOG: tl.constexpr, COMPUTE_DT: tl.constexpr,
                              PHASE: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_S: tl.constexpr):
    """Slices of the backward: partial ``A`` of a slice at ``ws[WS_HEADER + 2 i]``; the
    slice's share of dL/dT at ``ws[dt_off + i]`` (the launcher sums a row's shares)."""
    sync = ws_ptr.to(tl.pointer_type(tl.int32))
    turn = tl.program_id(0)
    item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)
    limit = max_polls
    while item < n_items:
        row = (item // n_slices).to(tl.int64)
        sl = item % n_slices
        rows = row + tl.arange(0, 1)
        cols = sl * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = col_mask(cols, n_cols, VEC)[None, :]
        y = tl.load(y_ptr + row_offset(row, stride_y, VEC) + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row_offset(row, stride_dy, VEC) + cols[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        row_part = ws_ptr + WS_HEADER + row * n_slices * SOFTMAX_PARTIALS
        if PHASE != 2:
            if LOG:
                a_l = tl.sum(dy, axis=1)
            else:
                a_l = tl.sum(dy * y, axis=1)
            tl.store(row_part + sl * SOFTMAX_PARTIALS + tl.arange(0, 1), a_l)
        finish = PHASE != 1
        if PHASE == 0:
            finish, limit = arrive_and_wait(sync + sync_off + row, n_slices, limit, poll_add)
            if not finish:
                give_up(sync, sync_off + n_rows, item)
        if finish:
            offs = tl.arange(0, BLOCK_S)
            a = tl.sum(tl.load(row_part + offs * SOFTMAX_PARTIALS, mask=offs < n_slices,
                               other=0.0, cache_modifier=".cg"), axis=0)
            k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows,
                                                  rows < n_rows))
            inv_t = k * LN2
            dx = _bwd_tile(y, dy, a + tl.zeros((1,), tl.float32), inv_t, LOG)
            tl.store(dx_ptr + row_offset(row, stride_dx, VEC) + cols[None, :],
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DT:
                x = tl.load(x_ptr + row_offset(row, stride_x, VEC) + cols[None, :], mask=mask,
                            other=0.0)
                dx_x = tl.sum(tl.where(dx != 0.0, dx * x.to(tl.float32), 0.0), axis=1)
                tl.store(ws_ptr + dt_off + item + tl.arange(0, 1), -dx_x * inv_t)
        turn += tl.num_programs(0)
        item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)

"""Fused knowledge distillation: KL(p_t || p_s) T^2, the hard-label cross-entropy, both gradients
and dL/dT, reading the student's and the teacher's logits once.

Math (one row: student logits ``s``, teacher logits ``t``, temperature ``T``; base 2 with
``k = log2(e) / T``): ``u_s = k s``, ``u_t = k t``, ``m_* = max u_*``, ``e_* = 2^(u_* - m_*)``,
``S_* = sum e_*``, ``p_* = e_* / S_*``; ``r = (u_t - m_t) - (u_s - m_s)`` (so that
``log2 p_t - log2 p_s = r - log2 S_t + log2 S_s``):

    KL     = ln2 (E_pt[r] - log2 S_t + log2 S_s)   (clamped at 0; exactly 0 for s == t)
    kd_row = T^2 KL
    grad_s = kd_scale T (p_s - p_t)            + ce_scale (p1 - onehot(y))
    grad_t = kd_scale T p_t (ln2 (r - log2 S_t + log2 S_s) - KL)
    dkd/dT = 2 T KL + T ln2 (E_pt[u_s - m_s] - E_ps[u_s - m_s] - ln2 Cov_pt(u_t - m_t, r))

(the last line is ``2 T KL + T (-Cov_pt(a, a - b) + E_pt[b] - E_ps[b])`` with ``a = t / T``,
``b = s / T``: the covariance and the difference of expectations do not depend on the shifts).
The hard-label term is the student's cross-entropy at ``T = 1``: ``p1 = softmax(s)``,
``ce_row = ln2 (log2 S1 + max(m1 - log2(e) s_y, 0))`` (0 for ``ignore_index`` rows, NaN for a
class index outside ``[0, C)``); its gradient is one more exponential per element and a
compare with ``y``.

Two kernels carry a row: :func:`kd_rows_kernel` holds ``BLOCK_N`` whole rows of both inputs on
chip; :func:`kd_slices_kernel` cuts a row into ``n_slices`` slices of ``BLOCK_C`` columns:
``PHASE = 1`` stores each slice's partials (``KD_PARTIALS`` per slice, relative to the slice's
own maxima), :func:`kd_combine_kernel` combines each row's partials in slice order into the
row's statistics, ``PHASE = 2`` reads the slice again and writes it. :func:`kd_coop_slices_kernel`
reads each slice once: the cooperative launch of ``kernels/README.md`` (bounded wait, repair
launch), where the row's last slice to arrive combines the partials once and releases the
row's statistics to the others (used for fp32 inputs: :func:`coop_pays`). A per-slice share of
dL/dT goes to the workspace; the launcher sums the shares of a row (a fixed order).

``EXTRAS`` (constexpr) compiles in the hard-label term, the teacher's gradient and dL/dT; inside
that binary ``has_target``, ``teacher_grad`` and ``compute_dt`` are run-time flags (not
specialised), so that plain KD and one "everything" variant are the only binaries per block size.

Outputs go to an fp32 workspace ``ws``: per-row KD loss, CE loss and dL/dT at
``{0, N, 2N} + row``, then the slices' partials, the rows' statistics and the dL/dT shares.
fp32 arithmetic; gradients stored in their buffers' dtype; 64-bit row offsets. A temperature
that is not finite and positive gives a NaN row.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    arrive_and_wait,
    col_mask,
    give_up,
    rescale_to,
    row_offset,
    safe_max,
    temperature_scale,
    work_item,
)
from .heuristics import MIN_WARPS, WIDE_ROW, LaunchConfig, cdiv, next_pow2

# Partials of a slice: maxima (log2 units, -inf for none) and sums of the teacher (m_t, S_t),
# the student (m_s, S_s), D = sum e_t (u_t - u_s), A = sum e_t (u_t - m_t), and the
# hard-label cross-entropy's (m1, S1).
KD_PARTIALS = tl.constexpr(8)
Q_MT = tl.constexpr(0)
Q_ST = tl.constexpr(1)
Q_MS = tl.constexpr(2)
Q_SS = tl.constexpr(3)
Q_D = tl.constexpr(4)
Q_A = tl.constexpr(5)
Q_M1 = tl.constexpr(6)
Q_S1 = tl.constexpr(7)
_FLAGS = ["has_target", "teacher_grad", "compute_dt"]

# The distillation kernels hold two full-size inputs (student and teacher): ``row_limit(2)``
# values of each per program. Few block sizes, so that few binaries cover every shape.
DISTILL_BLOCKS = (32, 256, 1024, 4096)  # rows path: the smallest that holds a row
DISTILL_SMALL_ROWS = 32  # rows per program at BLOCK_C = 32 (1024 values of each input)
DISTILL_SLICE = 4096  # slices path: columns per slice
DISTILL_BLOCK_S = 64  # slices path: partials combined this many slices at a time
DISTILL_COMBINE_ROWS = 16  # slices path: rows per program of the combine between the phases
# values of each input per thread: plain KD keeps a few tiles live, the EXTRAS variant (the
# hard-label term, the teacher's gradient, dL/dT) about a dozen; fewer values per thread
# would spend the issue slots on the row reductions, more would spill
DISTILL_PER_THREAD = {False: 16, True: 8}
DISTILL_MAX_WARPS = 16
# the cooperative one-read launch keeps both slices in registers across its wait and computes
# the partials, the combine and the outputs in one program: half the slice of the two-launch
# path, at half the values per thread, so that no configuration spills
DISTILL_COOP_SLICE = 2048
DISTILL_COOP_BLOCK_S = (8, 128)  # the cooperative combine's tile: next_pow2(n_slices) within


def distill_warps(elements: int, extras: bool = False) -> int:
    """Warps for ``elements`` values of each input: :data:`DISTILL_PER_THREAD` per thread,
    within ``[1, 16]``."""
    per_warp = 32 * DISTILL_PER_THREAD[extras]
    return max(MIN_WARPS, min(DISTILL_MAX_WARPS, elements // per_warp))


def distill_config(n_rows: int, n_cols: int, elem_size: int, vec: int = 1,
                   extras: bool = False) -> LaunchConfig:
    """Path and block sizes of the distillation kernels: ``rows`` with ``BLOCK_C`` the
    smallest of :data:`DISTILL_BLOCKS` that holds a row (one row per program from 256 columns
    on, :data:`DISTILL_SMALL_ROWS` below), else ``slices`` of :data:`DISTILL_SLICE` columns
    (two launches and a combine between them; the first launch always takes the warps of plain
    KD). ``elem_size`` only matters through ``vec``; ``extras``: the EXTRAS variant."""
    del elem_size
    for block_c in DISTILL_BLOCKS:
        if n_cols <= block_c:
            block_n = DISTILL_SMALL_ROWS if block_c < WIDE_ROW else 1
            return LaunchConfig("rows", block_n, block_c, 1,
                                distill_warps(block_n * block_c, extras), vec)
    return LaunchConfig("slices", 1, DISTILL_SLICE, cdiv(n_cols, DISTILL_SLICE),
                        distill_warps(DISTILL_SLICE, extras), vec)


def coop_pays(elem_size: int) -> bool:
    """Whether the slices path tries the cooperative one-read launch: for fp32 inputs, where
    the static model puts it at 0.67-0.77x the two launches' time on the H100 and 0.85-1.00x
    on the H200 (N = 8192, C = 32000 and 262144); 16-bit inputs save half as many bytes by it
    and its waits are not hidden (latency-bound: 1.01-1.19x on the H100, 1.18-1.42x on the
    H200), so they keep the two launches."""
    return elem_size >= 4


def coop_block_s(n_slices: int) -> int:
    """The partials a row's last slice combines at once (a loop beyond): ``next_pow2(n_slices)``
    within :data:`DISTILL_COOP_BLOCK_S` (a fixed 64 costs every item of a 16-slice row the
    combine's code size in the model: the H200 went from 0.85x to 1.06x the two launches)."""
    low, high = DISTILL_COOP_BLOCK_S
    return min(high, max(low, next_pow2(n_slices)))


def coop_config(n_rows: int, n_cols: int, vec: int = 1, extras: bool = False) -> LaunchConfig:
    """The cooperative launch's slices: :data:`DISTILL_COOP_SLICE` columns, twice the warps of
    the two-launch path's per-thread values (8 values of each input per thread for plain KD, 4
    with ``EXTRAS``)."""
    del n_rows
    warps = min(DISTILL_MAX_WARPS, 2 * distill_warps(DISTILL_COOP_SLICE, extras))
    return LaunchConfig("slices", 1, DISTILL_COOP_SLICE, cdiv(n_cols, DISTILL_COOP_SLICE), warps,
                        vec)


@triton.jit
def _load_pair(s_ptr, stride_s, t_ptr, stride_t, rows, row_mask, cols, cmask,
               VEC: tl.constexpr):
    """Student and teacher tiles ``[rows, cols]`` in fp32 (``-inf`` outside the mask)."""
    mask = row_mask[:, None] & cmask[None, :]
    s_rows = s_ptr + row_offset(rows, stride_s, VEC)
    t_rows = t_ptr + row_offset(rows, stride_t, VEC)
    xs = tl.load(s_rows[:, None] + cols[None, :], mask=mask, other=-float("inf"))
    xt = tl.load(t_rows[:, None] + cols[None, :], mask=mask, other=-float("inf"))
    return xs.to(tl.float32), xt.to(tl.float32), s_rows


@triton.jit
def _load_slice(s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, row, sl, n_rows,
                n_cols, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Slice ``sl`` of row ``row``: ``(rows, row_mask, cols, cmask, T, k, xs, xt, s_rows)``
    (shapes ``[1]`` and ``[1, BLOCK_C]``; :func:`_load_pair`'s tiles)."""
    rows = row + tl.arange(0, 1)
    row_mask = rows < n_rows
    cols = sl * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = col_mask(cols, n_cols, VEC)
    temp = tl.load(temp_ptr + rows * stride_temp).to(tl.float32)
    xs, xt, s_rows = _load_pair(s_ptr, stride_s, t_ptr, stride_t, rows, row_mask, cols, cmask,
                                VEC)
    return rows, row_mask, cols, cmask, temp, temperature_scale(temp), xs, xt, s_rows


@triton.jit
def _hard_label(y_ptr, s_rows, rows, row_mask, ignore_index, n_cols, ce_scale_ptr):
    """``(y, valid, z_y, cs)``: the class index (clamped into ``[0, C)``), whether it counts,
    the student's logit at it, and the CE gradient's factor (0 for an ignored row, NaN for an
    index out of range)."""
    y = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (y != ignore_index)
    in_range = (y >= 0) & (y < n_cols)
    y = tl.minimum(tl.maximum(y, 0), n_cols - 1).to(tl.int32)
    z_y = tl.load(s_rows + y, mask=valid, other=0.0).to(tl.float32)
    cs = tl.load(ce_scale_ptr)
    cs = tl.where(valid, tl.where(in_range, cs, float("nan")), 0.0)
    return y, valid, z_y, cs


@triton.jit
def _hard_label_loss(m1, log2_s1, z_y, valid, cs):
    ce = (log2_s1 + tl.maximum(m1 - z_y * LOG2E, 0.0)) * LN2
    return tl.where(valid, tl.where(cs == cs, ce, float("nan")), 0.0)


@triton.jit
def _row_outputs(xs, xt, k, temp, m_s, m_t, s_s, s_t, e_r, e_a, m1, s1, y, cs, cols, kd_scale,
                 has_target, teacher_grad, compute_dt, EXTRAS: tl.constexpr):
    """The gradients and this tile's share of dL/dT (without ``2 T KL``) from the row's
    statistics: ``(kl, grad_s, grad_t, dt_share)``. ``e_r = E_pt[r]``, ``e_a = E_pt[u_t - m_t]``,
    all relative to the row maxima ``m_s``, ``m_t`` (shapes ``[R]``; tiles ``[R, BLOCK_C]``).
    Without ``EXTRAS`` the run-time flags are not read (plain KD)."""
    us = xs * k[:, None] - m_s[:, None]
    ut = xt * k[:, None] - m_t[:, None]
    es = tl.exp2(us)
    et = tl.exp2(ut)
    log_ratio = tl.log2(s_s) - tl.log2(s_t)
    kl = tl.maximum((e_r + log_ratio) * LN2, 0.0)
    f = kd_scale * temp
    f_t = f / s_t
    g = es * (f / s_s)[:, None] - et * f_t[:, None]
    gt = g
    dt = tl.zeros_like(kl)
    if EXTRAS:
        if has_target:
            e1 = tl.exp2(xs * LOG2E - m1[:, None])
            g += e1 * (cs / s1)[:, None] - tl.where(cols[None, :] == y[:, None], cs[:, None], 0.0)
        r = ut - us
        live = et > 0.0
        if teacher_grad:
            gt = tl.where(live, et * f_t[:, None]
                          * ((r + log_ratio[:, None]) * LN2 - kl[:, None]), 0.0)
        if compute_dt:
            pt = et * (1.0 / s_t)[:, None]
            cov = tl.sum(tl.where(live, pt * (ut - e_a[:, None]) * (r - e_r[:, None]), 0.0),
                         axis=1)
            eb_t = tl.sum(tl.where(live, pt * us, 0.0), axis=1)
            eb_s = tl.sum(tl.where(es > 0.0, es * us, 0.0), axis=1) / s_s
            dt = temp * LN2 * (eb_t - eb_s - LN2 * cov)
    return kl, g, gt, dt


@triton.jit
def _store_outputs(ws_ptr, rows, row_mask, n_rows, cmask, cols, gs_ptr, stride_gs, gt_ptr,
                   stride_gt, temp, kl, ce, g, gt, dt, write_row, has_target, teacher_grad,
                   compute_dt, EXTRAS: tl.constexpr, VEC: tl.constexpr):
    """Store the gradients of a tile and, where ``write_row``, the rows' KD loss (and CE loss,
    dL/dT); ``dt`` is the tile's share of dL/dT, the ``2 T KL`` term added by the row's
    writer."""
    out = ws_ptr + rows
    kd_row = temp * temp * kl
    tl.store(out, kd_row, mask=row_mask & write_row)
    mask = row_mask[:, None] & cmask[None, :]
    tl.store(gs_ptr + row_offset(rows, stride_gs, VEC)[:, None] + cols[None, :],
             g.to(gs_ptr.dtype.element_ty), mask=mask)
    if EXTRAS:
        if has_target:
            tl.store(out + n_rows, ce, mask=row_mask & write_row)
        if teacher_grad:
            tl.store(gt_ptr + row_offset(rows, stride_gt, VEC)[:, None] + cols[None, :],
                     gt.to(gt_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_FLAGS)
def kd_rows_kernel(
    s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, y_ptr, ce_scale_ptr,
    gs_ptr, stride_gs, gt_ptr, stride_gt, ws_ptr, n_rows, n_cols, ignore_index, kd_scale,
    has_target, teacher_grad, compute_dt,
    EXTRAS: tl.constexpr, VEC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``cdiv(N, BLOCK_N)``: ``BLOCK_N`` whole rows of both inputs per program
    (``C <= BLOCK_C``), each logit read once, each gradient element written once."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    cmask = col_mask(cols, n_cols, VEC)
    temp = tl.load(temp_ptr + rows * stride_temp, mask=row_mask, other=1.0).to(tl.float32)
    k = temperature_scale(temp)
    xs, xt, s_rows = _load_pair(s_ptr, stride_s, t_ptr, stride_t, rows, row_mask, cols, cmask,
                                VEC)
    m_s = safe_max(tl.max(xs, axis=1) * k)
    m_t = safe_max(tl.max(xt, axis=1) * k)
    us = xs * k[:, None] - m_s[:, None]
    ut = xt * k[:, None] - m_t[:, None]
    es = tl.exp2(us)
    et = tl.exp2(ut)
    s_s = tl.sum(es, axis=1)
    s_t = tl.sum(et, axis=1)
    live = et > 0.0
    inv_st = 1.0 / s_t
    e_r = tl.sum(tl.where(live, et * (ut - us), 0.0), axis=1) * inv_st
    e_a = tl.zeros_like(k)
    y = tl.zeros_like(rows).to(tl.int32)
    cs = tl.zeros_like(k)
    m1 = tl.zeros_like(k)
    s1 = tl.zeros_like(k) + 1.0
    ce = tl.zeros_like(k)
    if EXTRAS:
        if compute_dt:
            e_a = tl.sum(tl.where(live, et * ut, 0.0), axis=1) * inv_st
        if has_target:
            y, valid, z_y, cs = _hard_label(y_ptr, s_rows, rows, row_mask, ignore_index, n_cols,
                                            ce_scale_ptr)
            m1 = safe_max(tl.max(xs, axis=1) * LOG2E)
            s1 = tl.sum(tl.exp2(xs * LOG2E - m1[:, None]), axis=1)
            ce = _hard_label_loss(m1, tl.log2(s1), z_y, valid, cs)
    kl, g, gt, dt = _row_outputs(xs, xt, k, temp, m_s, m_t, s_s, s_t, e_r, e_a, m1, s1, y, cs,
                                 cols, kd_scale, has_target, teacher_grad, compute_dt, EXTRAS)
    _store_outputs(ws_ptr, rows, row_mask, n_rows, cmask, cols, gs_ptr, stride_gs, gt_ptr,
                   stride_gt, temp, kl, ce, g, gt, dt, row_mask, has_target, teacher_grad,
                   compute_dt, EXTRAS, VEC)
    if EXTRAS:  # noqa: SIM102 (a constexpr guard)
        if compute_dt:
            tl.store(ws_ptr + rows + 2 * n_rows, dt + 2.0 * temp * kl, mask=row_mask)


@triton.jit(do_not_specialize=_FLAGS)
def kd_slices_kernel(
    s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, y_ptr, ce_scale_ptr,
    gs_ptr, stride_gs, gt_ptr, stride_gt, ws_ptr, part_off, stats_off, share_off, n_rows,
    n_cols, n_slices, ignore_index, kd_scale, has_target, teacher_grad, compute_dt,
    PHASE: tl.constexpr, EXTRAS: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``N * n_slices``: program ``i`` holds slice ``i % n_slices`` of row
    ``i // n_slices``. ``PHASE == 1`` stores its partials at
    ``ws[part_off + i * KD_PARTIALS]`` (the hard-label ones when ``has_target``; ``EXTRAS``
    is not used); after :func:`kd_combine_kernel` has written the row statistics,
    ``PHASE == 2`` reads the slice again, writes its gradients and its share of dL/dT at
    ``ws[share_off + i]``; slice 0 writes the row's losses."""
    item = tl.program_id(0).to(tl.int64)
    sl = (item % n_slices).to(tl.int32)
    rows, row_mask, cols, cmask, temp, k, xs, xt, s_rows = _load_slice(
        s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, item // n_slices, sl, n_rows,
        n_cols, VEC, BLOCK_C)
    if PHASE == 1:
        _store_partials(ws_ptr + part_off + item * KD_PARTIALS + tl.arange(0, 1), xs, xt, k,
                        has_target)
    else:
        st = ws_ptr + stats_off + rows * KD_PARTIALS
        stats = (tl.load(st + Q_MT), tl.load(st + Q_ST), tl.load(st + Q_MS),
                 tl.load(st + Q_SS), tl.load(st + Q_D), tl.load(st + Q_A), tl.load(st + Q_M1),
                 tl.load(st + Q_S1))
        _slice_outputs(xs, xt, k, temp, stats, y_ptr, s_rows, rows, row_mask, sl, item, cols,
                       cmask, ws_ptr, share_off, gs_ptr, stride_gs, gt_ptr, stride_gt, n_rows,
                       n_cols, ignore_index, ce_scale_ptr, kd_scale, has_target, teacher_grad,
                       compute_dt, EXTRAS, VEC)


@triton.jit
def _store_partials(part, xs, xt, k, has_target):
    """A slice's partials (``KD_PARTIALS`` slots at ``part``, relative to its own maxima)."""
    m_s_raw = tl.max(xs, axis=1) * k
    m_t_raw = tl.max(xt, axis=1) * k
    m_t = safe_max(m_t_raw)
    us = xs * k[:, None]
    ut = xt * k[:, None]
    et = tl.exp2(ut - m_t[:, None])
    live = et > 0.0
    tl.store(part + Q_MT, m_t_raw)
    tl.store(part + Q_ST, tl.sum(et, axis=1))
    tl.store(part + Q_MS, m_s_raw)
    tl.store(part + Q_SS, tl.sum(tl.exp2(us - safe_max(m_s_raw)[:, None]), axis=1))
    tl.store(part + Q_D, tl.sum(tl.where(live, et * (ut - us), 0.0), axis=1))
    tl.store(part + Q_A, tl.sum(tl.where(live, et * (ut - m_t[:, None]), 0.0), axis=1))
    if has_target:
        m1_raw = tl.max(xs, axis=1) * LOG2E
        tl.store(part + Q_M1, m1_raw)
        tl.store(part + Q_S1, tl.sum(tl.exp2(xs * LOG2E - safe_max(m1_raw)[:, None]), axis=1))


@triton.jit
def _slice_outputs(xs, xt, k, temp, stats, y_ptr, s_rows, rows, row_mask, sl, item, cols, cmask,
                   ws_ptr, share_off, gs_ptr, stride_gs, gt_ptr, stride_gt, n_rows, n_cols,
                   ignore_index, ce_scale_ptr, kd_scale, has_target, teacher_grad, compute_dt,
                   EXTRAS: tl.constexpr, VEC: tl.constexpr):
    """A slice's gradients (and, from slice 0, the row's losses) and its share of dL/dT at
    ``ws[share_off + item]``, from the row's ``stats`` (:func:`_combine_rows`' order)."""
    m_t, s_t, m_s, s_s, e_r, e_a, m1, s1 = stats
    y = tl.zeros((1,), tl.int32)
    cs = tl.zeros((1,), tl.float32)
    ce = cs
    if EXTRAS:  # noqa: SIM102 (a constexpr guard)
        if has_target:
            y, valid, z_y, cs = _hard_label(y_ptr, s_rows, rows, row_mask, ignore_index,
                                            n_cols, ce_scale_ptr)
            ce = _hard_label_loss(m1, tl.log2(s1), z_y, valid, cs)
    kl, g, gt, dt = _row_outputs(xs, xt, k, temp, m_s, m_t, s_s, s_t, e_r, e_a, m1, s1, y,
                                 cs, cols, kd_scale, has_target, teacher_grad, compute_dt,
                                 EXTRAS)
    first = sl == 0
    _store_outputs(ws_ptr, rows, row_mask, n_rows, cmask, cols, gs_ptr, stride_gs, gt_ptr,
                   stride_gt, temp, kl, ce, g, gt, dt, first, has_target, teacher_grad,
                   compute_dt, EXTRAS, VEC)
    if EXTRAS:  # noqa: SIM102 (a constexpr guard)
        if compute_dt:
            share = tl.where(first, dt + 2.0 * temp * kl, dt)
            tl.store(ws_ptr + share_off + item + tl.arange(0, 1), share)


@triton.jit
def _combine_max(part, rows, row_mask, n_slices, n_chunks, slot, BLOCK_R: tl.constexpr,
                 BLOCK_S: tl.constexpr):
    """Per row of ``rows``: the max over its slices of partial ``slot`` (``-inf`` if none)."""
    offs = tl.arange(0, BLOCK_S)
    acc = tl.full((BLOCK_R, BLOCK_S), -float("inf"), tl.float32)
    for i in range(0, n_chunks):
        o = i * BLOCK_S + offs
        ok = row_mask[:, None] & (o < n_slices)[None, :]
        p = part + (rows * n_slices)[:, None] * KD_PARTIALS + o[None, :] * KD_PARTIALS
        acc = tl.maximum(acc, tl.load(p + slot, mask=ok, other=-float("inf"),
                                      cache_modifier=".cg"))
    return tl.max(acc, axis=1)


@triton.jit(do_not_specialize=["n_chunks", "has_target"])
def kd_combine_kernel(ws_ptr, part_off, stats_off, n_rows, n_slices, n_chunks, has_target,
                      BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    """Between the slices' two phases: combine each row's ``n_slices`` partials, ``BLOCK_S``
    slices at a time in slice order, into its statistics at ``ws[stats_off + row *
    KD_PARTIALS]``: ``(M_t, S_t, M_s, S_s, E_pt[r], E_pt[u_t - M_t], M1, S1)`` relative to the
    row maxima (``M`` 0 when the row has no finite logit). Grid ``cdiv(N, BLOCK_R)``;
    ``n_chunks = cdiv(n_slices, BLOCK_S)`` (computed by the launcher)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    stats = _combine_rows(ws_ptr + part_off, rows, row_mask, n_slices, n_chunks, has_target,
                          BLOCK_R, BLOCK_S)
    out = ws_ptr + stats_off + rows * KD_PARTIALS
    for slot in tl.static_range(KD_PARTIALS):
        tl.store(out + slot, stats[slot], mask=row_mask)


@triton.jit
def _combine_rows(part, rows, row_mask, n_slices, n_chunks, has_target, BLOCK_R: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """Combine each row's ``n_slices`` partials at ``part`` (``BLOCK_S`` slices at a time, in
    slice order) into its statistics ``(M_t, S_t, M_s, S_s, E_pt[r], E_pt[u_t - M_t], M1, S1)``
    relative to the row maxima (``M`` 0 when the row has no finite logit); ``S1`` is 1
    without a target. Partials are read past L1 (``.cg``): other programs wrote them."""
    m_t = safe_max(_combine_max(part, rows, row_mask, n_slices, n_chunks, Q_MT, BLOCK_R,
                                    BLOCK_S))
    m_s = safe_max(_combine_max(part, rows, row_mask, n_slices, n_chunks, Q_MS, BLOCK_R,
                                    BLOCK_S))
    m1 = tl.zeros_like(m_t)
    if has_target:
        m1 = safe_max(_combine_max(part, rows, row_mask, n_slices, n_chunks, Q_M1, BLOCK_R,
                                    BLOCK_S))
    offs = tl.arange(0, BLOCK_S)
    acc_st = tl.zeros((BLOCK_R, BLOCK_S), tl.float32)
    acc_ss = tl.zeros((BLOCK_R, BLOCK_S), tl.float32)
    acc_d = tl.zeros((BLOCK_R, BLOCK_S), tl.float32)
    acc_a = tl.zeros((BLOCK_R, BLOCK_S), tl.float32)
    acc_s1 = tl.zeros((BLOCK_R, BLOCK_S), tl.float32)
    for i in range(0, n_chunks):
        o = i * BLOCK_S + offs
        ok = row_mask[:, None] & (o < n_slices)[None, :]
        p = part + (rows * n_slices)[:, None] * KD_PARTIALS + o[None, :] * KD_PARTIALS
        mt_i = tl.load(p + Q_MT, mask=ok, other=-float("inf"), cache_modifier=".cg")
        f_t = rescale_to(mt_i, m_t[:, None], ok)
        live = f_t > 0.0
        st_i = tl.load(p + Q_ST, mask=ok, other=0.0, cache_modifier=".cg")
        acc_st += st_i * f_t
        acc_ss += tl.load(p + Q_SS, mask=ok, other=0.0, cache_modifier=".cg") \
            * rescale_to(tl.load(p + Q_MS, mask=ok, other=-float("inf"), cache_modifier=".cg"),
                         m_s[:, None], ok)
        acc_d += tl.where(live, tl.load(p + Q_D, mask=ok, other=0.0, cache_modifier=".cg")
                          * f_t, 0.0)
        shift = st_i * (safe_max(mt_i) - m_t[:, None])
        acc_a += tl.where(live, (tl.load(p + Q_A, mask=ok, other=0.0, cache_modifier=".cg")
                                 + shift) * f_t, 0.0)
        if has_target:
            acc_s1 += tl.load(p + Q_S1, mask=ok, other=0.0, cache_modifier=".cg") \
                * rescale_to(tl.load(p + Q_M1, mask=ok, other=-float("inf"),
                                     cache_modifier=".cg"), m1[:, None], ok)
    s_t = tl.sum(acc_st, axis=1)
    # E_pt[r] with r relative to the row maxima: the raw sum D is of u_t - u_s
    return (m_t, s_t, m_s, tl.sum(acc_ss, axis=1), tl.sum(acc_d, axis=1) / s_t - (m_t - m_s),
            tl.sum(acc_a, axis=1) / s_t, m1,
            tl.where(has_target != 0, tl.sum(acc_s1, axis=1), 1.0))


@triton.jit(do_not_specialize=[*_FLAGS, "max_polls", "poll_add", "repair"])
def kd_coop_slices_kernel(
    s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, y_ptr, ce_scale_ptr,
    gs_ptr, stride_gs, gt_ptr, stride_gt, out_ptr, part_off, stats_off, share_off, ws_ptr,
    sync_off, n_rows, n_cols, n_slices, n_items, n_chunks, ignore_index, kd_scale, has_target,
    teacher_grad, compute_dt, max_polls, poll_add, repair,
    PHASE: tl.constexpr, EXTRAS: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """The one-read slices launch (the cooperative protocol of ``kernels/README.md``, its
    helpers in :mod:`.common`): a persistent grid takes work items (row, slice) from a ticket
    counter; each loads its slice of both inputs, publishes the partials
    (``out[part_off + item * KD_PARTIALS]``) and arrives at its row's counter
    (``ws[sync_off + row]``, int32; ``ws`` holds the ticket and the give-up count before the
    counters, the rows' ready counters after them at ``sync_off + N``, then the repair list;
    zeroed). The row's last slice to arrive combines the row's partials once, publishes the
    row's statistics (``out[stats_off + row * KD_PARTIALS]``) and adds ``n_slices`` to the
    row's ready counter (release, after a CTA barrier); every slice arrives there and waits,
    at most ``max_polls`` polls, until it reaches ``n_slices`` (which only the last slice's
    addition can do), then reads the statistics and writes its outputs from the values still
    in registers. A wait that runs out lists the item; the repair launch (``PHASE == 2`` with
    ``repair``) reads each listed slice again and writes it (its row's statistics are
    published by then). ``PHASE == 1`` publishes and arrives without waiting (the tests'
    stand-in for a row's other programs)."""
    sync = ws_ptr.to(tl.pointer_type(tl.int32))
    ready_off = sync_off + n_rows
    list_off = ready_off + n_rows
    pid = tl.program_id(0)
    turn = pid.to(tl.int64)
    item = work_item(sync, turn, list_off, n_items, repair, PHASE)
    limit = max_polls
    while item < n_items:
        row = (item // n_slices).to(tl.int64)
        sl = item % n_slices
        rows, row_mask, cols, cmask, temp, k, xs, xt, s_rows = _load_slice(
            s_ptr, stride_s, t_ptr, stride_t, temp_ptr, stride_temp, row, sl, n_rows, n_cols,
            VEC, BLOCK_C)
        st = out_ptr + stats_off + row * KD_PARTIALS + tl.arange(0, 1)
        if PHASE != 2:
            _store_partials(out_ptr + part_off + item * KD_PARTIALS + tl.arange(0, 1), xs, xt,
                            k, has_target)
            tl.debug_barrier()
            arrived = tl.atomic_add(sync + sync_off + row, 1, sem="acq_rel", scope="gpu")
            if arrived == n_slices - 1:  # the row's last slice: its statistics, once
                stats = _combine_rows(out_ptr + part_off + row * n_slices * KD_PARTIALS,
                                      tl.zeros((1,), tl.int64), tl.full((1,), True, tl.int1),
                                      n_slices, n_chunks, has_target, 1, BLOCK_S)
                for slot in tl.static_range(KD_PARTIALS):
                    tl.store(st + slot, stats[slot])
                tl.debug_barrier()
                tl.atomic_add(sync + ready_off + row, n_slices, sem="release", scope="gpu")
        finish = PHASE == 2
        if PHASE == 0:
            finish, limit = arrive_and_wait(sync + ready_off + row, n_slices, limit, poll_add)
            if not finish:
                give_up(sync, list_off, item)
        if finish:
            stats = (tl.load(st + Q_MT, cache_modifier=".cg"),
                     tl.load(st + Q_ST, cache_modifier=".cg"),
                     tl.load(st + Q_MS, cache_modifier=".cg"),
                     tl.load(st + Q_SS, cache_modifier=".cg"),
                     tl.load(st + Q_D, cache_modifier=".cg"),
                     tl.load(st + Q_A, cache_modifier=".cg"),
                     tl.load(st + Q_M1, cache_modifier=".cg"),
                     tl.load(st + Q_S1, cache_modifier=".cg"))
            _slice_outputs(xs, xt, k, temp, stats, y_ptr, s_rows, rows, row_mask, sl, item,
                           cols, cmask, out_ptr, share_off, gs_ptr, stride_gs, gt_ptr,
                           stride_gt, n_rows, n_cols, ignore_index, ce_scale_ptr, kd_scale,
                           has_target, teacher_grad, compute_dt, EXTRAS, VEC)
        turn += tl.num_programs(0)
        item = work_item(sync, turn, list_off, n_items, repair, PHASE)


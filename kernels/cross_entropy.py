"""Fused temperature cross-entropy: loss, log-sum-exp, gradient and dL/dT, reading each logit once.

Math (one row, logits ``z`` of length ``C``, temperature ``T``, in base 2 with
``k = log2(e) / T``): ``u = k z``, ``m = max u``, ``s = sum 2^(u - m)``,
``lse = ln2 (m + log2 s)`` (the natural log-sum-exp of ``z / T``), ``p = 2^(u - m) / s``.
The target weights ``c`` are, for a class index ``y`` (weight ``w``, smoothing ``eps``),
``c_j = (1 - eps) w_y [j = y] + (eps / C) w_j``, and for probabilities ``q``,
``c_j = w_j ((1 - eps) q_j + eps / C)``. With ``cs = sum c`` and ``cz = sum c z``:

    loss  = cs * lse - cz / T  =  ln2 (cs log2 s + D),   D = sum_j c_j (m - u_j) >= 0
    grad  = h (cs p - c),   h = scale / T     (scale: 1/divisor, or the upstream gradient)
    dL/dT = (cz - cs * sum(p z)) / T^2

The loss is computed in the second form, in the scaled domain where ``m`` was taken: every term
of ``D`` is ``>= 0`` and ``log2 s >= 0`` (the max contributes 1 to ``s``), so the loss is never
negative and a confident row's loss is ``ln2 log2 s`` to full precision. ``D`` of a class index
is ``w_y max(m - u_y, 0)``.

The gradient is written as ``e f - c h`` with one per-row multiplier ``f = h cs / s`` on
``e = 2^(u - m)``; for a class index the ``- c_y h`` term is one fix-up store at ``(row, y)``
after the row is written (no per-element compare), from the target logit read with one scalar
load.

Two kernels carry a row: :func:`ce_rows_kernel` holds ``BLOCK_N`` whole rows on chip;
:func:`ce_slices_kernel` cuts a row into ``n_slices`` slices of ``BLOCK_C`` columns, one per
program, and combines the slices' partial statistics (see :mod:`.common` and
``kernels/README.md`` for the protocol). :func:`ce_prep_kernel` computes the mean's divisor
and zeroes the counters first; :func:`grad_apply_kernel` (in :mod:`.rescale`) applies the
upstream gradient in the backward pass.

Soft-capping (``SOFTCAP``, the cap ``cap``) replaces ``z`` by ``a = cap tanh(z / cap)``
everywhere above (:func:`.common.soft_cap`) and multiplies the gradient by ``da/dz``. The
z-loss adds ``zl lse^2`` to a counted row's loss, ``zl`` = ``z_loss`` times
:func:`z_coefficient`'s factor (``ws[WS_Z_SCALE]``: a weighted mean averages it over the rows
counted, not their weights); its gradient ``2 zl lse p / T`` and its dL/dT
``-2 zl lse sum(p a) / T^2`` come from replacing ``cs`` by ``cs + 2 zl lse`` in the gradient
and dL/dT above.

Ignored rows give exactly 0 everywhere, even when their logits or temperature are not finite
(their logits are not read). A class index outside ``[0, C)`` (not ignored), or a temperature
that is not finite and positive, gives NaN for that row: nothing is read out of bounds. All
arithmetic is fp32; the gradient is stored in the gradient buffer's dtype. Offsets are 64-bit.

Outputs go to one fp32 workspace ``ws`` (layout in :mod:`.common`): per-row loss, lse and
dL/dT at ``WS_HEADER + {0, N, 2N} + row``; with ``REDUCE`` the loss and dL/dT are also summed
(the last program to finish adds the per-program partials at ``part_off`` in a fixed order)
into ``ws[WS_LOSS]`` (divided by ``ws[WS_LOSS_DIV]``) and ``ws[WS_DT]``, and the stored per-row
dL/dT is multiplied by ``ws[WS_ROW_FACTOR]``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    CE_PARTIALS,
    LN2,
    P_CS,
    P_CZ,
    P_D,
    P_EZ,
    P_M,
    P_S,
    P_ZY,
    WS_DONE,
    WS_DT,
    WS_GRAD_SCALE,
    WS_HEADER,
    WS_LOSS,
    WS_LOSS_DIV,
    WS_ROW_FACTOR,
    WS_Z_SCALE,
    arrive_and_wait,
    arrive_last,
    col_mask,
    combine_max,
    finish_sum,
    give_up,
    rescale_to,
    row_offset,
    row_temperature,
    safe_max,
    soft_cap,
    temperature_scale,
    work_item,
)

FINISH_BLOCK = tl.constexpr(1024)


@triton.jit
def _index_target(y_ptr, w_ptr, rows, row_mask, ignore_index, n_cols,
                  HAS_WEIGHT: tl.constexpr):
    """Class index of ``rows``: ``(y, valid, w_y)`` with ``y`` clamped into ``[0, C)`` (int32),
    ``w_y`` 0 for an ignored row and NaN for an index outside ``[0, C)``."""
    y = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (y != ignore_index)
    in_range = (y >= 0) & (y < n_cols)
    y = tl.where(in_range, y, 0).to(tl.int32)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y, mask=valid, other=0.0).to(tl.float32)
    else:
        w_y = tl.where(valid, 1.0, 0.0)
    w_y = tl.where(valid, tl.where(in_range, w_y, float("nan")), 0.0)
    return y, valid, w_y


@triton.jit
def _prob_weights(q_tile_ptr, w_ptr, cols, mask, col_mask, eps, n_cols,
                  HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """``c = w ((1 - eps) q + eps / C)`` of a probability-target tile (0 outside ``mask``)."""
    c = tl.load(q_tile_ptr, mask=mask, other=0.0).to(tl.float32)
    if SMOOTH:
        c = tl.where(mask, c * (1.0 - eps) + eps / n_cols, 0.0)
    if HAS_WEIGHT:
        c = c * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return c


@triton.jit
def _tile_terms(x, e, k, m, mask, c, w, PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                SMOOTH: tl.constexpr, COMPUTE_DT: tl.constexpr):
    """Row sums of a ``[BLOCK_N, BLOCK_C]`` tile relative to the max ``m`` used for ``e``:
    ``(cs, d, cz, ez)`` = ``sum c``, ``sum c (m - u)``, ``sum c z``, ``sum e z`` over the tile,
    for probability targets (``c`` the tile's weights) or the smoothing part of a class index
    (``c = w``, or 1); zeros where a flag makes them unused."""
    cs = tl.zeros_like(m)
    d = tl.zeros_like(m)
    cz = tl.zeros_like(m)
    ez = tl.zeros_like(m)
    if PROB or SMOOTH:
        gap = tl.where(mask, m[:, None] - x * k[:, None], 0.0)
        if PROB:
            cs = tl.sum(c, axis=1)
            d = tl.sum(c * gap, axis=1)
        elif HAS_WEIGHT:
            cs = tl.sum(tl.where(mask, w[None, :], 0.0), axis=1)
            d = tl.sum(gap * w[None, :], axis=1)
        else:
            cs = tl.sum(tl.where(mask, 1.0, 0.0), axis=1)
            d = tl.sum(gap, axis=1)
    if COMPUTE_DT:
        ez = tl.sum(tl.where(e > 0.0, e * x, 0.0), axis=1)
        if PROB:
            cz = tl.sum(tl.where(c != 0.0, c * x, 0.0), axis=1)
        elif SMOOTH:
            if HAS_WEIGHT:
                cz = tl.sum(tl.where(mask, x * w[None, :], 0.0), axis=1)
            else:
                cz = tl.sum(tl.where(mask, x, 0.0), axis=1)
    return cs, d, cz, ez


@triton.jit
def _capped(x, mask, cap, SOFTCAP: tl.constexpr):
    """A tile's soft-capped logits (``-inf`` kept outside ``mask``) and their slope."""
    a, slope = soft_cap(x, cap, SOFTCAP)
    if SOFTCAP:
        a = tl.where(mask, a, -float("inf"))
    return a, slope


@triton.jit
def _target_slope(a_y, cap, SOFTCAP: tl.constexpr):
    """``da/dz`` at the target from its capped logit: ``1 - (a_y / cap)^2`` (or 1)."""
    if SOFTCAP:
        th = a_y / cap
        return 1.0 - th * th
    return tl.full(a_y.shape, 1.0, tl.float32)


@triton.jit
def z_coefficient(z_loss, z_ptr, z_off):
    """The z-loss's coefficient: ``z_loss`` times ``z_ptr[z_off]`` (the launch's factor, see
    ``WS_Z_SCALE``), or ``z_loss`` itself when ``z_off < 0``."""
    return z_loss * tl.load(z_ptr + z_off, mask=z_off >= 0, other=1.0)


@triton.jit
def _row_totals(k, m, log2_s, s, cs, d, cz, ez, valid, w_y, z_y, eps, n_cols, zl,
                PROB: tl.constexpr, SMOOTH: tl.constexpr):
    """Finish a row from its sums (relative to the row max ``m``): ``(loss, lse, dt, cs)``,
    adding the class-index term and the z-loss ``zl lse^2`` (its gradient ``2 zl lse p / T``
    joins the ``cs p`` term: the returned ``cs`` is ``cs + 2 zl lse``). Ignored rows: loss and
    dL/dT exactly 0."""
    if not PROB:
        sw = tl.where(valid, eps / n_cols, 0.0)
        index_c = (1.0 - eps) * w_y
        d_y = index_c * tl.maximum(m - z_y * k, 0.0)
        if SMOOTH:
            cs = index_c + sw * cs
            d = d_y + sw * d
            cz = index_c * z_y + sw * cz
        else:
            cs = index_c
            d = d_y
            cz = index_c * z_y
    inv_t = k * LN2
    lse = (m + log2_s) * LN2
    z_lse = tl.where(valid, lse, 0.0)
    loss = tl.where(valid, (cs * log2_s + d) * LN2 + zl * z_lse * z_lse, 0.0)
    cs = cs + 2.0 * zl * z_lse
    dt = tl.where(valid, (cz - cs * (ez / s)) * inv_t * inv_t, 0.0)
    return loss, lse, dt, cs


@triton.jit
def _grad_tile(e, f, h, c, w, valid, eps, n_cols, PROB: tl.constexpr,
               HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """``e f - c h`` for a tile, without the class-index term (the fix-up store adds it)."""
    g = e * f[:, None]
    if PROB:
        g -= c * h[:, None]
    elif SMOOTH:
        sh = tl.where(valid, eps / n_cols, 0.0) * h
        if HAS_WEIGHT:
            g -= w[None, :] * sh[:, None]
        else:
            g -= sh[:, None]
    return g


@triton.jit
def _index_fixup(g_rows, y, valid, z_y, k, m, f, h, w_y, eps, n_cols, owner, slope_y,
                 HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """Overwrite ``g[row, y]`` with ``(e_y f - c_y h) slope_y`` (``owner``: the program
    holding column ``y``), after a CTA barrier so that it lands after the tile store of the
    same column."""
    tl.debug_barrier()
    c_y = (1.0 - eps) * w_y
    if SMOOTH:
        if HAS_WEIGHT:
            c_y += (eps / n_cols) * w_y
        else:
            c_y += tl.where(valid, eps / n_cols, 0.0)
    g_y = (tl.exp2(z_y * k - m) * f - c_y * h) * slope_y
    tl.store(g_rows + y, g_y.to(g_rows.dtype.element_ty), mask=valid & owner)


@triton.jit(do_not_specialize=["z_off"])
def ce_rows_kernel(
    x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, q_ptr, stride_q, w_ptr,
    g_ptr, stride_g, scale_ptr, scale_off, stride_scale, ws_ptr, part_off,
    n_rows, n_cols, ignore_index, eps, cap, z_loss, z_ptr, z_off,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, COMPUTE_DT: tl.constexpr, REDUCE: tl.constexpr,
    SOFTCAP: tl.constexpr, VEC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``cdiv(N, BLOCK_N)``: ``BLOCK_N`` whole rows per program (``C <= BLOCK_C``), each
    logit read once, each gradient element written once. ``VEC``: the row strides and ``C``
    are multiples of ``VEC`` elements (16 bytes), so rows load with 128-bit accesses."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    cmask = col_mask(cols, n_cols, VEC)
    k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, row_mask))
    if PROB:
        valid = row_mask
        y = tl.zeros_like(rows).to(tl.int32)
        w_y = tl.zeros_like(k)
        z_y = tl.zeros_like(k)
    else:
        y, valid, w_y = _index_target(y_ptr, w_ptr, rows, row_mask, ignore_index, n_cols,
                                      HAS_WEIGHT)
        k = tl.where(valid, k, 1.0)  # an ignored row stays 0 even with a bad temperature
    mask = valid[:, None] & cmask[None, :]
    x_rows = x_ptr + row_offset(rows, stride_x, VEC)
    x = tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=-float("inf"))
    x, slope = _capped(x.to(tl.float32), mask, cap, SOFTCAP)
    if not PROB:
        z_y, _slope_y = soft_cap(tl.load(x_rows + y, mask=valid, other=0.0).to(tl.float32), cap,
                                 SOFTCAP)
    m = safe_max(tl.max(x, axis=1) * k)
    e = tl.exp2(x * k[:, None] - m[:, None])
    s = tl.sum(e, axis=1)
    log2_s = tl.log2(s)
    w = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    c = tl.zeros((1, 1), tl.float32)
    if PROB:
        q_rows = q_ptr + row_offset(rows, stride_q, VEC)
        c = _prob_weights(q_rows[:, None] + cols[None, :], w_ptr, cols, mask, cmask, eps, n_cols,
                          HAS_WEIGHT, SMOOTH)
    cs, d, cz, ez = _tile_terms(x, e, k, m, mask, c, w, PROB, HAS_WEIGHT, SMOOTH, COMPUTE_DT)
    loss, lse, dt, cs = _row_totals(k, m, log2_s, s, cs, d, cz, ez, valid, w_y, z_y, eps,
                                    n_cols, z_coefficient(z_loss, z_ptr, z_off), PROB, SMOOTH)
    out = ws_ptr + WS_HEADER + rows
    tl.store(out, loss, mask=row_mask)
    tl.store(out + n_rows, lse, mask=row_mask)
    if REDUCE:
        dt = dt * tl.load(ws_ptr + WS_ROW_FACTOR)
    if COMPUTE_DT:
        tl.store(out + 2 * n_rows, dt, mask=row_mask)
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr + scale_off + rows * stride_scale, mask=row_mask, other=0.0)
        h = tl.where(valid, scale * k * LN2, 0.0)
        f = tl.where(valid, h * cs / s, 0.0)
        g = _grad_tile(e, f, h, c, w, valid, eps, n_cols, PROB, HAS_WEIGHT, SMOOTH)
        if SOFTCAP:
            g = g * slope
        g_rows = g_ptr + row_offset(rows, stride_g, VEC)
        tl.store(g_rows[:, None] + cols[None, :], g.to(g_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & cmask[None, :])
        if not PROB:
            _index_fixup(g_rows, y, valid, z_y, k, m, f, h, w_y, eps, n_cols, valid,
                         _target_slope(z_y, cap, SOFTCAP), HAS_WEIGHT, SMOOTH)
    if REDUCE:
        n_programs = tl.num_programs(0)
        tl.store(ws_ptr + part_off + pid, tl.sum(loss, axis=0))
        if COMPUTE_DT:
            tl.store(ws_ptr + part_off + n_programs + pid, tl.sum(dt, axis=0))
        _finish_reduce(ws_ptr, part_off, n_programs, COMPUTE_DT)


@triton.jit
def _finish_reduce(ws_ptr, part_off, n_parts, COMPUTE_DT: tl.constexpr):
    """The last program to arrive sums the ``n_parts`` per-program partials (loss at
    ``part_off``, dL/dT after them) in a fixed order into ``ws[WS_LOSS]``, ``ws[WS_DT]``."""
    if arrive_last(ws_ptr, n_parts):
        total = finish_sum(ws_ptr + part_off, n_parts, FINISH_BLOCK)
        tl.store(ws_ptr + WS_LOSS, total / tl.load(ws_ptr + WS_LOSS_DIV))
        if COMPUTE_DT:
            tl.store(ws_ptr + WS_DT, finish_sum(ws_ptr + part_off + n_parts, n_parts,
                                                FINISH_BLOCK))


@triton.jit
def _slice_stats(x_row, q_row, w_ptr, cols, col_mask, k, valid, eps, n_cols, cap,
                 PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                 COMPUTE_DT: tl.constexpr, SOFTCAP: tl.constexpr):
    """Load one slice of one row (a ``[1, BLOCK_C]`` tile) and its statistics relative to the
    slice's own max: ``(slope, e, c, w, m_raw, m, s, cs, d, cz, ez)`` (``slope``: the cap's
    slope; ``m_raw``: the slice max of ``u``, ``-inf`` if it has none; ``m =
    safe_max(m_raw)``)."""
    mask = valid[:, None] & col_mask[None, :]
    x = tl.load(x_row + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
    x, slope = _capped(x, mask, cap, SOFTCAP)
    m_raw = tl.max(x, axis=1) * k
    m = safe_max(m_raw)
    e = tl.exp2(x * k[:, None] - m[:, None])
    s = tl.sum(e, axis=1)
    w = tl.zeros((cols.shape[0],), tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    c = tl.zeros((1, 1), tl.float32)
    if PROB:
        c = _prob_weights(q_row + cols[None, :], w_ptr, cols, mask, col_mask, eps, n_cols,
                          HAS_WEIGHT, SMOOTH)
    cs, d, cz, ez = _tile_terms(x, e, k, m, mask, c, w, PROB, HAS_WEIGHT, SMOOTH, COMPUTE_DT)
    return slope, e, c, w, m_raw, m, s, cs, d, cz, ez


@triton.jit
def _store_partials(part, m_raw, s, cs, d, cz, ez, z_y):
    tl.store(part + P_M + tl.arange(0, 1), m_raw)
    tl.store(part + P_S + tl.arange(0, 1), s)
    tl.store(part + P_EZ + tl.arange(0, 1), ez)
    tl.store(part + P_CZ + tl.arange(0, 1), cz)
    tl.store(part + P_CS + tl.arange(0, 1), cs)
    tl.store(part + P_D + tl.arange(0, 1), d)
    tl.store(part + P_ZY + tl.arange(0, 1), z_y)


@triton.jit
def _combine_partials(row_part, n_slices, BLOCK_S: tl.constexpr):
    """Combine a row's ``n_slices`` partials: ``(m_ref, s, cs, d, cz, ez)`` relative to the
    row max ``m_ref`` (:func:`.common.safe_max` of it), shapes ``[1]``."""
    offs = tl.arange(0, BLOCK_S)
    ok = offs < n_slices
    p = row_part + offs * CE_PARTIALS
    m_i = tl.load(p + P_M, mask=ok, other=-float("inf"), cache_modifier=".cg")
    _m, m_ref = combine_max(m_i, ok)
    f_i = rescale_to(m_i, m_ref, ok)
    s = tl.sum(tl.load(p + P_S, mask=ok, other=0.0, cache_modifier=".cg") * f_i, axis=0)
    ez = tl.sum(tl.load(p + P_EZ, mask=ok, other=0.0, cache_modifier=".cg") * f_i, axis=0)
    cz = tl.sum(tl.load(p + P_CZ, mask=ok, other=0.0, cache_modifier=".cg"), axis=0)
    cs_i = tl.load(p + P_CS, mask=ok, other=0.0, cache_modifier=".cg")
    d_i = tl.load(p + P_D, mask=ok, other=0.0, cache_modifier=".cg")
    d = tl.sum(tl.where(ok, d_i + cs_i * (m_ref - safe_max(m_i)), 0.0), axis=0)
    cs = tl.sum(cs_i, axis=0)
    one = tl.zeros((1,), tl.float32)
    return m_ref + one, s + one, cs + one, d + one, cz + one, ez + one


@triton.jit(do_not_specialize=["z_off", "max_polls", "poll_add", "repair"])
def ce_slices_kernel(
    x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, q_ptr, stride_q, w_ptr,
    g_ptr, stride_g, scale_ptr, scale_off, stride_scale, ws_ptr, part_off, slice_off,
    sync_off, n_rows, n_cols, n_slices, n_items, ignore_index, eps, cap, z_loss, z_ptr, z_off,
    max_polls, poll_add, repair,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, COMPUTE_DT: tl.constexpr, REDUCE: tl.constexpr,
    SOFTCAP: tl.constexpr, PHASE: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Rows cut into ``n_slices`` slices of ``BLOCK_C`` columns; work item ``i`` is slice
    ``i % n_slices`` of row ``i // n_slices`` (``n_items = N * n_slices``). A slice's partial
    statistics go to ``ws[slice_off + i * CE_PARTIALS + P_*]``; the int32 row counters are at
    ``sync_off``, the repair list after them (``sync_off + N``).

    * ``PHASE == 0`` (cooperative, one read): a persistent grid whose programs take work items
      from a ticket counter; each reads the target logit, loads its slice, publishes its
      partials, arrives at the row's counter and waits, at most ``max_polls`` polls, until all
      ``n_slices`` slices of the row have arrived; then it combines them and writes its slice's
      gradient from the values still on chip. A program whose wait runs out writes nothing for
      that item and lists it (:func:`.common.give_up`); it does not wait again. The launcher
      always follows with the repair launch. With ``REDUCE`` the per-program sums are stored,
      and summed by the repair launch.
    * ``PHASE == 1`` then ``PHASE == 2`` (two launches, grid ``n_items``, any program order):
      the first publishes the partials (and the target logit), the second combines them,
      reads its slice again and writes it.
    * ``PHASE == 2`` with ``repair`` set (the repair launch, the grid of the ``PHASE == 0``
      launch): the same for each listed item only (none: the programs exit), adding to the
      stored per-program sums before the last-program reduction. Exact whatever the wait's
      outcome: a listed slice was not written over (in-place), and the target logit comes from
      the partials.

    Deadlock freedom does not rest on residency: every wait is bounded. Residency (at least
    ``n_slices`` programs at once, which the launcher checks) makes give-ups rare, so the
    one-read launch stays one read. ``poll_add`` is 0 except in tests (see
    :func:`.common.arrive_and_wait`).
    """
    sync = ws_ptr.to(tl.pointer_type(tl.int32))
    pid = tl.program_id(0)
    loss_acc = tl.zeros((1,), tl.float32)
    dt_acc = tl.zeros((1,), tl.float32)
    if REDUCE and PHASE == 2:  # the repair launch adds to the sums of the launch before
        resume = (tl.zeros((1,), tl.int32) + repair) != 0
        loss_acc = tl.load(ws_ptr + part_off + pid + tl.arange(0, 1), mask=resume, other=0.0)
        if COMPUTE_DT:
            dt_acc = tl.load(ws_ptr + part_off + tl.num_programs(0) + pid + tl.arange(0, 1),
                             mask=resume, other=0.0)
    turn = pid.to(tl.int64)
    item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)
    limit = max_polls
    while item < n_items:
        row = (item // n_slices).to(tl.int64)
        sl = item % n_slices
        rows = row + tl.arange(0, 1)
        cols = sl * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = col_mask(cols, n_cols, VEC)
        x_row = x_ptr + row_offset(row, stride_x, VEC)
        q_row = q_ptr + row_offset(row, stride_q, VEC)
        k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, rows < n_rows))
        if PROB:
            valid = rows < n_rows
            y = tl.zeros((1,), tl.int32)
            w_y = tl.zeros((1,), tl.float32)
        else:
            y, valid, w_y = _index_target(y_ptr, w_ptr, rows, rows < n_rows, ignore_index,
                                          n_cols, HAS_WEIGHT)
            k = tl.where(valid, k, 1.0)
        row_part = ws_ptr + slice_off + row * n_slices * CE_PARTIALS
        part = row_part + sl * CE_PARTIALS
        if PHASE == 2:
            z_y = tl.load(row_part + P_ZY + tl.arange(0, 1), cache_modifier=".cg")
        else:
            z_y = tl.zeros((1,), tl.float32)
            if not PROB:
                z_y, _slope_y = soft_cap(tl.load(x_row + y, mask=valid, other=0.0).to(tl.float32),
                                         cap, SOFTCAP)
        if PHASE != 2:
            slope, e, c, w, m_raw, m_l, s_l, cs_l, d_l, cz_l, ez_l = _slice_stats(
                x_row, q_row, w_ptr, cols, cmask, k, valid, eps, n_cols, cap, PROB, HAS_WEIGHT,
                SMOOTH, COMPUTE_DT, SOFTCAP)
            _store_partials(part, m_raw, s_l, cs_l, d_l, cz_l, ez_l, z_y)
        finish = PHASE != 1
        if PHASE == 0:
            finish, limit = arrive_and_wait(sync + sync_off + row, n_slices, limit, poll_add)
            if not finish:
                give_up(sync, sync_off + n_rows, item)
        if finish:
            m, s, cs, d, cz, ez = _combine_partials(row_part, n_slices, BLOCK_S)
            log2_s = tl.log2(s)
            loss, lse, dt, cs = _row_totals(k, m, log2_s, s, cs, d, cz, ez, valid, w_y, z_y,
                                            eps, n_cols, z_coefficient(z_loss, z_ptr, z_off),
                                            PROB, SMOOTH)
            first = sl == 0
            out = ws_ptr + WS_HEADER + rows
            if REDUCE:
                dt = dt * tl.load(ws_ptr + WS_ROW_FACTOR)
            if first:
                tl.store(out, loss)
                tl.store(out + n_rows, lse)
                if COMPUTE_DT:
                    tl.store(out + 2 * n_rows, dt)
                loss_acc += loss
                dt_acc += dt
            if COMPUTE_GRAD:
                if PHASE == 2:
                    slope, e, c, w = _reload_slice(x_row, q_row, w_ptr, cols, cmask, k, m, valid,
                                                   eps, n_cols, cap, PROB, HAS_WEIGHT, SMOOTH,
                                                   SOFTCAP)
                    e_factor = 1.0
                else:
                    e_factor = tl.exp2(m_l - m)
                scale = tl.load(scale_ptr + scale_off + rows * stride_scale)
                h = tl.where(valid, scale * k * LN2, 0.0)
                f = tl.where(valid, h * cs / s, 0.0)
                g = _grad_tile(e, f * e_factor, h, c, w, valid, eps, n_cols, PROB, HAS_WEIGHT,
                               SMOOTH)
                if SOFTCAP:
                    g = g * slope
                g_row = g_ptr + row_offset(row, stride_g, VEC)
                tl.store(g_row + cols[None, :], g.to(g_ptr.dtype.element_ty),
                         mask=cmask[None, :] & (rows < n_rows)[:, None])
                if not PROB:
                    _index_fixup(g_row + tl.zeros((1,), tl.int64), y, valid, z_y, k, m, f, h,
                                 w_y, eps, n_cols, (y // BLOCK_C) == sl,
                                 _target_slope(z_y, cap, SOFTCAP), HAS_WEIGHT, SMOOTH)
        turn += tl.num_programs(0)
        item = work_item(sync, turn, sync_off + n_rows, n_items, repair, PHASE)
    if REDUCE and PHASE != 1:
        n_programs = tl.num_programs(0)
        tl.store(ws_ptr + part_off + pid + tl.arange(0, 1), loss_acc)
        if COMPUTE_DT:
            tl.store(ws_ptr + part_off + n_programs + pid + tl.arange(0, 1), dt_acc)
        if PHASE == 2:
            _finish_reduce(ws_ptr, part_off, n_programs, COMPUTE_DT)


@triton.jit
def _reload_slice(x_row, q_row, w_ptr, cols, col_mask, k, m, valid, eps, n_cols, cap,
                  PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                  SOFTCAP: tl.constexpr):
    """Phase 2: read a slice again: ``(slope, e, c, w)`` with ``e = 2^(u - M)`` for the row
    max ``M``."""
    mask = valid[:, None] & col_mask[None, :]
    x = tl.load(x_row + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
    x, slope = _capped(x, mask, cap, SOFTCAP)
    e = tl.exp2(x * k[:, None] - m[:, None])
    w = tl.zeros((cols.shape[0],), tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    c = tl.zeros((1, 1), tl.float32)
    if PROB:
        c = _prob_weights(q_row + cols[None, :], w_ptr, cols, mask, col_mask, eps, n_cols,
                          HAS_WEIGHT, SMOOTH)
    return slope, e, c, w


@triton.jit
def ce_prep_kernel(y_ptr, w_ptr, ws_ptr, zero_off, n_zero, n_rows, n_cols, ignore_index,
                   n_divisor_chunks, mean, defer, HAS_WEIGHT: tl.constexpr,
                   BLOCK: tl.constexpr):
    """One program, before a reduced or cooperative cross-entropy: zeroes the int32 counters
    (``ws[WS_DONE : WS_HEADER]`` and ``ws[zero_off : zero_off + n_zero]``) and writes the
    header: the mean's divisor as torch
    defines it (class indices: ``sum w[y]`` over rows not ignored, their count without
    weights; ``n_divisor_chunks = 0``: the number of rows), ``ws[WS_LOSS_DIV]`` (the
    divisor, or 1 for a sum), ``ws[WS_ROW_FACTOR]`` (1 / divisor, 0 if it is 0; 1 for a sum)
    and ``ws[WS_GRAD_SCALE]`` (the row factor, or 1 when ``defer``: fp16 gradients take it in
    the backward pass)."""
    sync = ws_ptr.to(tl.pointer_type(tl.int32))
    offs = tl.arange(0, BLOCK)
    tl.store(sync + WS_DONE + offs, tl.zeros((BLOCK,), tl.int32), mask=offs < WS_HEADER - WS_DONE)
    for i in range(0, tl.cdiv(n_zero, BLOCK)):
        o = i * BLOCK + offs
        tl.store(sync + zero_off + o, tl.zeros((BLOCK,), tl.int32), mask=o < n_zero)
    acc = tl.zeros((BLOCK,), tl.float32)
    count = tl.zeros((BLOCK,), tl.float32)
    for i in range(0, n_divisor_chunks):
        o = i * BLOCK + offs
        # (int64 class indices; ``y_ptr`` is a stand-in for probability targets, never read)
        y = tl.load(y_ptr + o, mask=o < n_rows, other=ignore_index).to(tl.int64)
        ok = y != ignore_index
        if HAS_WEIGHT:
            safe = tl.minimum(tl.maximum(y, 0), n_cols - 1)
            acc += tl.where(ok, tl.load(w_ptr + safe, mask=ok, other=0.0).to(tl.float32), 0.0)
            count += tl.where(ok, 1.0, 0.0)
        else:
            acc += tl.where(ok, 1.0, 0.0)
    divisor = tl.sum(acc, axis=0)
    if n_divisor_chunks == 0:
        divisor = tl.zeros((), tl.float32) + n_rows
    # the z-loss is averaged over the rows counted, not over their weights
    rows_counted = tl.sum(count, axis=0)
    z_mean = tl.where(rows_counted == 0.0, 0.0, divisor / rows_counted)
    z_scale = tl.where(HAS_WEIGHT & (n_divisor_chunks > 0) & (mean != 0), z_mean, 1.0)
    if mean:
        loss_div = divisor
        row_factor = tl.where(divisor == 0.0, 0.0, 1.0 / divisor)
    else:
        loss_div = 1.0
        row_factor = 1.0
    tl.store(ws_ptr + WS_LOSS_DIV, loss_div)
    tl.store(ws_ptr + WS_ROW_FACTOR, row_factor)
    tl.store(ws_ptr + WS_Z_SCALE, z_scale)
    tl.store(ws_ptr + WS_GRAD_SCALE, tl.where(defer != 0, 1.0, row_factor))

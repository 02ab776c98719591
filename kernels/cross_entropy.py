"""Fused temperature cross-entropy: loss, log-sum-exp, gradient and dL/dT in one pass per row.

Math (one row, logits ``z`` of length ``C``, temperature ``T``, in base 2 with
``k = log2(e) / T``): ``u = k z``, ``m = max u``, ``s = sum 2^(u - m)``,
``lse = ln2 (m + log2 s)`` (the natural log-sum-exp of ``z / T``), ``p = 2^(u - m) / s``.
The target weights ``c`` are, for a class index ``y`` (weight ``w``, smoothing ``eps``),
``c_j = (1 - eps) w_y [j = y] + (eps / C) w_j``, and for probabilities ``q``,
``c_j = w_j ((1 - eps) q_j + eps / C)``. With ``cs = sum c`` and ``cz = sum c z``:

    loss  = cs * lse - cz / T  =  ln2 (cs log2 s + D),   D = sum_j c_j (m - u_j) >= 0
    grad  = scale / T * (cs * p - c)         (scale: 1/denominator, or the upstream gradient)
    dL/dT = (cz - cs * sum(p z)) / T^2

The loss is computed in the second form, in the scaled domain where ``m`` was taken: every term
of ``D`` is ``>= 0`` and ``log2 s >= 0`` (the max contributes 1 to ``s``), so the loss is never
negative and a confident row's loss is ``ln2 log2 s`` to full precision. (The first form
subtracts two rounded numbers of size ``|z| / T``; at ``|z| / T ~ 1e6`` their difference is
off by a quarter.) ``D`` of a class index is ``w_y max(m - u_y, 0)``; the streaming paths keep
``D`` relative to the running max and shift it by ``cs (m_new - m_old)`` when the max grows.

Ignored rows give exactly 0 everywhere, even when their logits are not finite. A class
index outside ``[0, C)`` (not ignored), or a temperature that is not finite and positive,
gives NaN for that row: nothing is read out of bounds. All arithmetic is fp32; the gradient
is stored in the gradient buffer's dtype. Offsets are 64-bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# per (row, split): max, sum of exp, sum of exp * z, sum of c z, sum of c, z_y, D (see above)
N_PARTIALS = tl.constexpr(7)


@triton.jit
def _scale_log2(t):
    """``log2(e) / T``, NaN where ``T`` is not finite and positive."""
    ok = (t > 0.0) & (t < float("inf"))
    return tl.where(ok, 1.4426950408889634 / t, float("nan"))


@triton.jit
def _index_target(y_ptr, row, ignore_index, n_cols, w_ptr, HAS_WEIGHT: tl.constexpr):
    """Target index of ``row``: ``(y_safe, valid, w_y)``; ``w_y`` is 0 for an ignored row and
    NaN for an index outside ``[0, C)``."""
    y = tl.load(y_ptr + row)
    valid = y != ignore_index
    in_range = (y >= 0) & (y < n_cols)
    y_safe = tl.where(in_range, y, 0)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y_safe).to(tl.float32)
    else:
        w_y = 1.0
    w_y = tl.where(in_range, w_y, float("nan"))
    w_y = tl.where(valid, w_y, 0.0)
    return y_safe, valid, w_y


@triton.jit
def _row_stats(x_row, q_row, w_ptr, k, c_start, c_end, n_chunks, eps, n_cols,
               PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
               COMPUTE_DT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Online statistics of columns ``[c_start, c_end)`` of one row (``n_chunks`` chunks).

    Loop trip counts come from host-computed integers (``n_chunks``), never from
    ``program_id``: the Triton 3.6 interpreter cannot use those as ``range`` bounds.

    Returns ``(m, s, ez, cz, cs, d)``: the running max of ``u`` (log2 units), ``sum 2^(u - m)``,
    ``sum 2^(u - m) z`` (only with COMPUTE_DT), and the target sums ``sum c z``, ``sum c`` and
    ``d = sum c (m_ref - u)`` (``m_ref``: ``m``, or 0 while ``m = -inf``) for probabilities,
    or the same sums with ``c = w`` (class indices with smoothing; the index term itself is
    added by the caller).
    """
    m = tl.full((), -float("inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    ez = tl.full((), 0.0, tl.float32)
    cz = tl.full((), 0.0, tl.float32)
    cs = tl.full((), 0.0, tl.float32)
    d = tl.full((), 0.0, tl.float32)
    m_old = tl.full((), 0.0, tl.float32)
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.where(mask, x * k, -float("inf"))
        m_new = tl.maximum(m, tl.max(u, axis=0))
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_ref)
        e = tl.exp2(u - m_ref)
        s = s * alpha + tl.sum(e, axis=0)
        if COMPUTE_DT:
            ez = ez * alpha + tl.sum(tl.where(e > 0.0, e * x, 0.0), axis=0)
        m = m_new
        if PROB or SMOOTH:
            if PROB:
                c = tl.load(q_row + cols, mask=mask, other=0.0).to(tl.float32)
                if SMOOTH:
                    c = tl.where(mask, c * (1.0 - eps) + eps / n_cols, 0.0)
                if HAS_WEIGHT:
                    c = c * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            elif HAS_WEIGHT:
                c = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            else:
                c = tl.where(mask, 1.0, 0.0)
            d += cs * (m_ref - m_old)
            d += tl.sum(tl.where(mask, c * tl.maximum(m_ref - u, 0.0), 0.0), axis=0)
            cz += tl.sum(c * x, axis=0)
            cs += tl.sum(c, axis=0)
        m_old = m_ref
    return m, s, ez, cz, cs, d


@triton.jit
def _row_target(x_row, y_ptr, w_ptr, row, ignore_index, n_cols, PROB: tl.constexpr,
                HAS_WEIGHT: tl.constexpr):
    """``(y, valid, w_y, z_y)`` of a row: its class index (see :func:`_index_target`) and logit
    (0 when ignored); for probability targets ``(0, True, 0, 0)``."""
    if PROB:
        y = 0
        valid = True
        w_y = 0.0
        z_y = 0.0
    else:
        y, valid, w_y = _index_target(y_ptr, row, ignore_index, n_cols, w_ptr, HAS_WEIGHT)
        z_y = tl.load(x_row + y, mask=valid, other=0.0).to(tl.float32)
    return y, valid, w_y, z_y


@triton.jit
def _row_finish(k, m, s, ez, cz, cs, d, valid, w_y, z_y, eps, n_cols, PROB: tl.constexpr,
                SMOOTH: tl.constexpr):
    """Complete a row from its statistics (``d`` relative to ``m_ref``) and target:
    ``(m_ref, loss, lse, dt, cs)`` with ``m_ref`` the max to subtract before exponentiating (0
    for a row of -inf). An ignored row's loss and dL/dT are exactly 0."""
    m_ref = tl.where(m == -float("inf"), 0.0, m)
    log2_s = tl.log2(s)
    inv_t = k * 0.6931471805599453
    if not PROB:
        smooth_w = tl.where(valid, eps / n_cols, 0.0)
        d_y = (1.0 - eps) * w_y * tl.maximum(m_ref - z_y * k, 0.0)
        if SMOOTH:
            cz = (1.0 - eps) * w_y * z_y + smooth_w * cz
            cs = (1.0 - eps) * w_y + smooth_w * cs
            d = d_y + smooth_w * d
        else:
            cz = w_y * z_y
            cs = w_y
            d = d_y
    lse = (m_ref + log2_s) * 0.6931471805599453
    loss = tl.where(valid, (cs * log2_s + d) * 0.6931471805599453, 0.0)
    dt = tl.where(valid, (cz - cs * (ez / s)) * inv_t * inv_t, 0.0)
    return m_ref, loss, lse, dt, cs


@triton.jit
def _row_write_grad(x_row, q_row, g_row, w_ptr, k, m_ref, s, gs, cs, y, w_y, c_start, c_end,
                    n_chunks, eps, n_cols, PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                    SMOOTH: tl.constexpr, BLOCK_C: tl.constexpr):
    """Write ``gs * (cs * p - c)`` for columns ``[c_start, c_end)`` of one row, with
    ``p = 2^(k x - m_ref) / s``."""
    cs_over_s = cs / s
    for i in range(0, n_chunks):
        cols = c_start + i * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < c_end
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp2(x * k - m_ref) * cs_over_s
        if PROB:
            q = tl.load(q_row + cols, mask=mask, other=0.0).to(tl.float32)
            if SMOOTH:
                q = q * (1.0 - eps) + eps / n_cols
            if HAS_WEIGHT:
                q = q * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            g -= q
        else:
            g -= tl.where(cols == y, (1.0 - eps) * w_y, 0.0)
            if SMOOTH:
                if HAS_WEIGHT:
                    g -= tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) * (eps / n_cols)
                else:
                    g -= eps / n_cols
        g = tl.where(gs == 0.0, 0.0, g * gs)  # ignored rows: exactly 0, even for inf logits
        tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)


@triton.jit
def ce_single_pass_kernel(
    x_ptr, stride_x, t_ptr, stride_t, y_ptr, q_ptr, stride_q, w_ptr,
    loss_ptr, lse_ptr, dt_ptr, g_ptr, stride_g, scale_ptr, stride_scale,
    n_rows, n_cols, ignore_index, eps,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, COMPUTE_DT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``BLOCK_N`` whole rows per program, each read once from memory (``C <= BLOCK_C``)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    k = _scale_log2(tl.load(t_ptr + rows * stride_t, mask=row_mask, other=1.0))
    u = tl.where(mask, x * k[:, None], -float("inf"))
    m = tl.max(u, axis=1)
    m = tl.where(row_mask & (m > -float("inf")), m, 0.0)
    e = tl.exp2(u - m[:, None])
    s = tl.sum(e, axis=1)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if PROB:
        c = tl.load(q_ptr + rows[:, None] * stride_q + cols[None, :], mask=mask, other=0.0)
        c = c.to(tl.float32)
        if SMOOTH:
            c = tl.where(mask, c * (1.0 - eps) + eps / n_cols, 0.0)
        if HAS_WEIGHT:
            c = c * w[None, :]
        cs = tl.sum(c, axis=1)
        cz = tl.sum(c * x, axis=1)
        d = tl.sum(tl.where(mask, c * tl.maximum(m[:, None] - u, 0.0), 0.0), axis=1)
        valid = row_mask
    else:
        y = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
        valid = (y != ignore_index) & row_mask
        in_range = (y >= 0) & (y < n_cols)
        y = tl.where(in_range, y, 0)
        is_y = cols[None, :] == y[:, None]
        z_y = tl.sum(tl.where(is_y & mask & valid[:, None], x, 0.0), axis=1)
        if HAS_WEIGHT:
            w_y = tl.sum(tl.where(is_y, w[None, :], 0.0), axis=1)
        else:
            w_y = tl.where(row_mask, 1.0, 0.0)
        w_y = tl.where(valid, tl.where(in_range, w_y, float("nan")), 0.0)
        cs = (1.0 - eps) * w_y
        cz = cs * z_y
        d = cs * tl.maximum(m - z_y * k, 0.0)
        if SMOOTH:
            smooth_w = tl.where(valid, eps / n_cols, 0.0)
            gap = tl.where(mask, tl.maximum(m[:, None] - u, 0.0), 0.0)
            if HAS_WEIGHT:
                cz += smooth_w * tl.sum(x * w[None, :], axis=1)
                cs += smooth_w * tl.sum(w, axis=0)
                d += smooth_w * tl.sum(gap * w[None, :], axis=1)
            else:
                cz += smooth_w * tl.sum(x, axis=1)
                cs += smooth_w * n_cols
                d += smooth_w * tl.sum(gap, axis=1)
    inv_t = k * 0.6931471805599453
    log2_s = tl.log2(s)
    lse = (m + log2_s) * 0.6931471805599453
    loss = (cs * log2_s + d) * 0.6931471805599453
    tl.store(loss_ptr + rows, tl.where(valid, loss, 0.0), mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    p = e / s[:, None]
    if COMPUTE_DT:
        pz = tl.sum(tl.where(p > 0.0, p * x, 0.0), axis=1)
        tl.store(dt_ptr + rows, tl.where(valid, (cz - cs * pz) * inv_t * inv_t, 0.0),
                 mask=row_mask)
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr + rows * stride_scale, mask=row_mask, other=0.0)
        gs = tl.where(valid, scale * inv_t, 0.0)
        g = p * cs[:, None]
        if PROB:
            g -= c
        else:
            g -= tl.where(is_y, ((1.0 - eps) * w_y)[:, None], 0.0)
            if SMOOTH:
                if HAS_WEIGHT:
                    g -= smooth_w[:, None] * w[None, :]
                else:
                    g -= smooth_w[:, None]
        g = tl.where(gs[:, None] == 0.0, 0.0, g * gs[:, None])
        tl.store(g_ptr + rows[:, None] * stride_g + cols[None, :],
                 g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ce_stream_kernel(
    x_ptr, stride_x, t_ptr, stride_t, y_ptr, q_ptr, stride_q, w_ptr,
    loss_ptr, lse_ptr, dt_ptr, g_ptr, stride_g, scale_ptr, stride_scale,
    n_rows, n_cols, n_chunks, ignore_index, eps,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, COMPUTE_DT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One row per program: an online-statistics pass over the row, then a gradient pass."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    m, s, ez, cz, cs, d = _row_stats(x_row, q_row, w_ptr, k, 0, n_cols, n_chunks, eps, n_cols,
                                     PROB, HAS_WEIGHT, SMOOTH, COMPUTE_DT, BLOCK_C)
    y, valid, w_y, z_y = _row_target(x_row, y_ptr, w_ptr, row, ignore_index, n_cols, PROB,
                                     HAS_WEIGHT)
    m_ref, loss, lse, dt, cs = _row_finish(k, m, s, ez, cz, cs, d, valid, w_y, z_y, eps,
                                           n_cols, PROB, SMOOTH)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    if COMPUTE_DT:
        tl.store(dt_ptr + row, dt)
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr + row * stride_scale)
        gs = tl.where(valid, scale * k * 0.6931471805599453, 0.0)
        _row_write_grad(x_row, q_row, g_ptr + row * stride_g, w_ptr, k, m_ref, s, gs, cs, y,
                        w_y, 0, n_cols, n_chunks, eps, n_cols, PROB, HAS_WEIGHT, SMOOTH, BLOCK_C)


@triton.jit
def ce_split_stats_kernel(
    x_ptr, stride_x, t_ptr, stride_t, y_ptr, q_ptr, stride_q, w_ptr, part_ptr,
    n_cols, chunks_per_split, ignore_index, eps,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_DT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid ``(N, splits)``: statistics of one column range of one row, stored as partials
    ``part[row, split, 0:7] = (m, s, ez, cz, cs, z_y, d)``. The target logit ``z_y`` is read
    here, before the finishing kernel may overwrite the row with its gradient (in-place mode)."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    c_start = split * chunks_per_split * BLOCK_C
    c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    m, s, ez, cz, cs, d = _row_stats(x_ptr + row * stride_x, q_ptr + row * stride_q, w_ptr, k,
                                     c_start, c_end, chunks_per_split, eps, n_cols,
                                     PROB, HAS_WEIGHT, SMOOTH, COMPUTE_DT, BLOCK_C)
    _y, _valid, _w_y, z_y = _row_target(x_ptr + row * stride_x, y_ptr, w_ptr, row,
                                        ignore_index, n_cols, PROB, HAS_WEIGHT)
    out = part_ptr + (row * n_splits + split) * N_PARTIALS
    tl.store(out, m)
    tl.store(out + 1, s)
    tl.store(out + 2, ez)
    tl.store(out + 3, cz)
    tl.store(out + 4, cs)
    tl.store(out + 5, z_y)
    tl.store(out + 6, d)


@triton.jit
def ce_split_finish_kernel(
    x_ptr, stride_x, t_ptr, stride_t, y_ptr, q_ptr, stride_q, w_ptr, part_ptr,
    loss_ptr, lse_ptr, dt_ptr, g_ptr, stride_g, scale_ptr, stride_scale,
    n_cols, chunks_per_split, ignore_index, eps,
    PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, COMPUTE_DT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid ``(N, splits)``: combine a row's partials; split 0 stores the row's loss, lse and
    dL/dT; every split writes the gradient of its column range."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs = tl.arange(0, BLOCK_S)
    smask = offs < n_splits
    part = part_ptr + row * n_splits * N_PARTIALS + offs * N_PARTIALS
    m_i = tl.load(part, mask=smask, other=-float("inf"))
    m = tl.max(m_i, axis=0)
    m_ref = tl.where(m == -float("inf"), 0.0, m)
    f = tl.where(smask, tl.exp2(m_i - m_ref), 0.0)
    s = tl.sum(tl.load(part + 1, mask=smask, other=0.0) * f, axis=0)
    ez = tl.sum(tl.load(part + 2, mask=smask, other=0.0) * f, axis=0)
    cz = tl.sum(tl.load(part + 3, mask=smask, other=0.0), axis=0)
    cs_i = tl.load(part + 4, mask=smask, other=0.0)
    cs = tl.sum(cs_i, axis=0)
    m_ref_i = tl.where(m_i == -float("inf"), 0.0, m_i)
    d_i = tl.load(part + 6, mask=smask, other=0.0) + cs_i * (m_ref - m_ref_i)
    d = tl.sum(tl.where(smask, d_i, 0.0), axis=0)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    k = _scale_log2(tl.load(t_ptr + row * stride_t))
    if PROB:
        y = 0
        valid = True
        w_y = 0.0
    else:
        y, valid, w_y = _index_target(y_ptr, row, ignore_index, n_cols, w_ptr, HAS_WEIGHT)
    z_y = tl.load(part_ptr + row * n_splits * N_PARTIALS + 5)
    m_ref, loss, lse, dt, cs = _row_finish(k, m, s, ez, cz, cs, d, valid, w_y, z_y, eps,
                                           n_cols, PROB, SMOOTH)
    if split == 0:
        tl.store(loss_ptr + row, loss)
        tl.store(lse_ptr + row, lse)
        if COMPUTE_DT:
            tl.store(dt_ptr + row, dt)
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr + row * stride_scale)
        gs = tl.where(valid, scale * k * 0.6931471805599453, 0.0)
        c_start = split * chunks_per_split * BLOCK_C
        c_end = tl.minimum(c_start + chunks_per_split * BLOCK_C, n_cols)
        _row_write_grad(x_row, q_row, g_ptr + row * stride_g, w_ptr, k, m_ref, s, gs, cs, y,
                        w_y, c_start, c_end, chunks_per_split, eps, n_cols, PROB, HAS_WEIGHT,
                        SMOOTH, BLOCK_C)

"""Per-token log-probabilities, entropy and log-sum-exp at a temperature, with soft-capping:
each logit read once forward, once more (and the gradient written once) backward.

Math (one row of logits ``z`` of length ``V``, temperature ``T``, cap ``c``; base 2 with
``k = log2(e) / T``): the capped logit ``a = c tanh(z / c)`` (``a = z`` without a cap),
``u = k a``, ``m = max u``, ``s = sum 2^(u - m)``, ``t = sum 2^(u - m) (u - m)`` (``<= 0``):

    lse  = ln2 (m + log2 s)               the log-sum-exp of a / T
    logp = ln2 (u_y - m - log2 s)         log softmax(a / T)[y], clamped at 0
    H    = ln2 (log2 s - t / s)           -sum p log p, both terms >= 0, clamped to [0, ln V]

Backward, for upstream gradients ``g_lp``, ``g_H``, ``g_lse`` of a row and ``lp_j = log p_j``:

    dL/da_j = p_j (g_lse - g_lp - g_H (lp_j + H)) + g_lp [j = y]
    dL/dz_j = dL/da_j (1 - tanh^2(z_j / c)) / T
    dL/dT   = (g_H S2 - g_lp (logp - S1) - g_lse (lse + S1)) / T,
              S1 = sum p lp,   S2 = sum p (lp + H)^2

(``dL/dT = -(1/T) sum_j dL/da_j lp_j``: the three gradients sum to 0 over ``j``, so the shift
by ``lse`` drops out and no large logit multiplies a gradient). Entries of probability 0 (a
``-inf`` logit) contribute nothing: never ``0 * inf``.

Grid ``(cdiv(N, BLOCK_N), n_slices)``: program ``(i, j)`` holds ``BLOCK_N`` rows and walks
slice ``j`` (columns ``[j L, (j + 1) L)``, ``L = slice_len``, a multiple of ``BLOCK_C``) in
tiles of ``BLOCK_C`` columns, keeping a running max (online softmax). Nothing waits:

* forward, one slice per row (``FINAL``): the program writes ``(logp, H, lse)``;
* forward, several slices: each stores its partials ``(m, s, t)`` (relative to its own max)
  and :func:`token_finish_kernel` combines a row's partials in slice order
  (``M = max m_i``, ``s = sum s_i 2^(m_i - M)``, ``t = sum 2^(m_i - M) (t_i + (m_i - M) s_i)``)
  and writes the outputs (the logits are not read again);
* backward (:func:`token_grad_kernel`): elementwise given the row's ``lse`` and ``H``; each
  program stores its share of ``S1``, ``S2`` (the launcher sums a row's shares in slice order).

Ignored rows (``ignore_index``) give exactly 0 (their logits are not read); a class index
outside ``[0, V)`` or a temperature that is not finite and positive gives NaN for that row.
fp32 arithmetic, 64-bit row offsets, gradients stored in their buffer's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    col_mask,
    rescale_to,
    row_offset,
    row_temperature,
    safe_max,
    soft_cap,
    temperature_scale,
)
from .heuristics import DEFAULT_NUM_SMS, LaunchConfig, cdiv, next_pow2

TOKEN_TILE = 8192  # elements per loop step of a program (32 per thread at 8 warps)
TOKEN_WARPS = 8
TOKEN_FILL = 4  # programs per SM the grid aims for before slicing rows
TOKEN_PARTIALS = tl.constexpr(3)  # forward partials per (row, slice): m, s, t
FINISH_ELEMENTS = 1024  # partials a program of the finish kernel combines at once


def token_config(n_rows: int, n_cols: int, num_sms: int | None = None,
                 vec: int = 1) -> LaunchConfig:
    """Path and block sizes of the token kernels: tiles of :data:`TOKEN_TILE` elements
    (``BLOCK_N = TOKEN_TILE / BLOCK_C`` rows when a row is shorter than 256 columns); one
    slice per row (``rows``) when the row programs fill :data:`TOKEN_FILL` per SM, else the
    rows cut into ``n_slices`` slices of whole tiles (``slices``) to fill them."""
    num_sms = num_sms or DEFAULT_NUM_SMS
    block_c = max(16, min(next_pow2(n_cols), TOKEN_TILE))
    block_n = TOKEN_TILE // block_c if block_c < 256 else 1  # (few binaries: one per BLOCK_C)
    warps = max(1, min(TOKEN_WARPS, block_n * block_c // 512))
    row_programs = cdiv(max(n_rows, 1), block_n)
    n_slices = 1
    if row_programs < TOKEN_FILL * num_sms:
        n_slices = max(1, min(cdiv(n_cols, block_c), cdiv(TOKEN_FILL * num_sms, row_programs)))
        n_slices = cdiv(n_cols, token_slice_len(n_cols, n_slices, block_c))
    return LaunchConfig("rows" if n_slices == 1 else "slices", block_n, block_c, n_slices,
                        warps, vec)


def token_slice_len(n_cols: int, n_slices: int, block_c: int) -> int:
    """Columns per slice: whole tiles, at least ``n_cols / n_slices``."""
    return cdiv(cdiv(max(n_cols, 1), n_slices), block_c) * block_c


def finish_rows(n_slices: int) -> int:
    """Rows per program of :func:`token_finish_kernel`."""
    return max(1, FINISH_ELEMENTS // next_pow2(n_slices))


@triton.jit
def _rows_and_target(y_ptr, t_ptr, stride_t, t_value, rows, n_rows, n_cols, ignore_index):
    """``(row_mask, valid, y, k, bad)``: rows in range, rows that count (not ignored), the
    class index clamped into ``[0, V)``, the scale ``log2(e) / T`` (1 for an ignored row) and
    whether the index is out of range."""
    row_mask = rows < n_rows
    y = tl.load(y_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (y != ignore_index)
    bad = valid & ((y < 0) | (y >= n_cols))
    y = tl.where(bad, 0, y).to(tl.int64)
    k = temperature_scale(row_temperature(t_ptr, stride_t, t_value, rows, row_mask))
    return row_mask, valid, y, tl.where(valid, k, 1.0), bad


@triton.jit
def _target_u(x_rows, y, k, valid, cap, SOFTCAP: tl.constexpr):
    """``u_y = k a(z_y)`` of the target, one scalar load per row."""
    z_y = tl.load(x_rows + y, mask=valid, other=0.0).to(tl.float32)
    a_y, _slope = soft_cap(z_y, cap, SOFTCAP)
    return a_y * k


@triton.jit
def _outputs(lp_ptr, h_ptr, lse_ptr, rows, row_mask, valid, bad, n_cols, m, s, t, u_y,
             ENTROPY: tl.constexpr):
    """Store a row's ``logp``, ``H`` (``ENTROPY``) and ``lse`` from its ``(m, s, t)`` (``m``
    already :func:`safe_max`-ed)."""
    log2_s = tl.log2(s)
    raw = (u_y - m - log2_s) * LN2
    logp = tl.where(bad | (raw != raw), float("nan"), tl.minimum(raw, 0.0))  # (min drops NaN)
    tl.store(lp_ptr + rows, tl.where(valid, logp, 0.0), mask=row_mask)
    if ENTROPY:
        raw = (log2_s - t / s) * LN2
        h = tl.minimum(tl.maximum(raw, 0.0), tl.log(tl.zeros_like(s) + n_cols))
        h = tl.where(bad | (raw != raw), float("nan"), h)
        tl.store(h_ptr + rows, tl.where(valid, h, 0.0), mask=row_mask)
    lse = tl.where(valid, (m + log2_s) * LN2, 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_mask)


@triton.jit
def token_stats_kernel(
    x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, lp_ptr, h_ptr, lse_ptr, part_ptr,
    n_rows, n_cols, slice_len, n_slices, ignore_index, cap,
    SOFTCAP: tl.constexpr, ENTROPY: tl.constexpr, FINAL: tl.constexpr, VEC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Forward statistics of ``BLOCK_N`` rows over one slice (see the module docstring):
    ``FINAL`` (one slice per row) writes the outputs, else the partials at
    ``part[(row * n_slices + slice) * TOKEN_PARTIALS + {0, 1, 2}]``."""
    sl = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, valid, y, k, bad = _rows_and_target(y_ptr, t_ptr, stride_t, t_value, rows,
                                                  n_rows, n_cols, ignore_index)
    x_rows = x_ptr + row_offset(rows, stride_x, VEC)
    start = sl * slice_len
    stop = tl.minimum(start + slice_len, n_cols)
    m = tl.full((BLOCK_N,), -float("inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(start, stop, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = valid[:, None] & col_mask(cols, stop, VEC)[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=-float("inf"))
        a, _slope = soft_cap(x.to(tl.float32), cap, SOFTCAP)
        u = a * k[:, None]
        if SOFTCAP:  # (the cap made the padding finite)
            u = tl.where(mask, u, -float("inf"))
        m_new = tl.maximum(m, tl.max(u, axis=1))
        ref = safe_max(m_new)
        alpha = tl.where(m == -float("inf"), 0.0, tl.exp2(m - ref))
        d = u - ref[:, None]
        e = tl.exp2(d)
        if ENTROPY:  # e d with d >= -FLT_MAX: 0, not NaN, where e = 0 (d = -inf)
            t = alpha * (t + (safe_max(m) - ref) * s) + tl.sum(e * tl.maximum(d, -3.0e38),
                                                               axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
    if FINAL:
        u_y = _target_u(x_rows, y, k, valid, cap, SOFTCAP)
        _outputs(lp_ptr, h_ptr, lse_ptr, rows, row_mask, valid, bad, n_cols, safe_max(m), s, t,
                 u_y, ENTROPY)
    else:
        part = part_ptr + (rows * n_slices + sl) * TOKEN_PARTIALS
        tl.store(part, m, mask=row_mask)
        tl.store(part + 1, s, mask=row_mask)
        if ENTROPY:
            tl.store(part + 2, t, mask=row_mask)


@triton.jit
def token_finish_kernel(
    x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, lp_ptr, h_ptr, lse_ptr, part_ptr,
    n_rows, n_cols, n_slices, ignore_index, cap,
    SOFTCAP: tl.constexpr, ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Combine the partials of ``BLOCK_N`` rows (``n_slices <= BLOCK_S`` each, in slice order)
    and write their outputs; reads one logit per row (the target's)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, valid, y, k, bad = _rows_and_target(y_ptr, t_ptr, stride_t, t_value, rows,
                                                  n_rows, n_cols, ignore_index)
    slices = tl.arange(0, BLOCK_S)
    ok = valid[:, None] & (slices < n_slices)[None, :]
    part = part_ptr + (rows[:, None] * n_slices + slices[None, :]) * TOKEN_PARTIALS
    m_i = tl.load(part, mask=ok, other=-float("inf"))
    m = safe_max(tl.max(m_i, axis=1))
    f = rescale_to(m_i, m[:, None], ok)
    s_i = tl.load(part + 1, mask=ok, other=0.0)
    s = tl.sum(f * s_i, axis=1)
    t = tl.zeros_like(s)
    if ENTROPY:
        t_i = tl.load(part + 2, mask=ok, other=0.0)
        t = tl.sum(tl.where(f > 0.0, f * (t_i + (m_i - m[:, None]) * s_i), 0.0), axis=1)
    u_y = _target_u(x_ptr + row_offset(rows, stride_x, 1), y, k, valid, cap, SOFTCAP)
    _outputs(lp_ptr, h_ptr, lse_ptr, rows, row_mask, valid, bad, n_cols, m, s, t, u_y, ENTROPY)


@triton.jit(do_not_specialize=["has_glp", "has_glse"])
def token_grad_kernel(
    x_ptr, stride_x, t_ptr, stride_t, t_value, y_ptr, h_ptr, lse_ptr, g_lp_ptr, g_h_ptr,
    g_lse_ptr, gx_ptr, stride_gx, share_ptr, n_rows, n_cols, slice_len, n_slices, ignore_index,
    cap, has_glp, has_glse,
    SOFTCAP: tl.constexpr, HAS_GH: tl.constexpr, COMPUTE_DT: tl.constexpr, VEC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Backward of ``BLOCK_N`` rows over one slice: ``dL/dz`` written to ``gx`` (0 for ignored
    rows), and with ``COMPUTE_DT`` the slice's shares of ``S1``, ``S2`` at
    ``share[(row * n_slices + slice) * 2 + {0, 1}]``. ``h``, ``lse``: the forward's rows;
    ``g_*``: the upstream gradients, ``g_lp`` and ``g_lse`` read where the run-time flags
    ``has_glp``, ``has_glse`` are set (else 0), ``g_H`` and ``H`` with ``HAS_GH`` only."""
    sl = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, valid, y, k, bad = _rows_and_target(y_ptr, t_ptr, stride_t, t_value, rows,
                                                  n_rows, n_cols, ignore_index)
    lse2 = tl.load(lse_ptr + rows, mask=valid, other=0.0) * LOG2E
    g_lp = tl.load(g_lp_ptr + rows, mask=valid & (has_glp != 0), other=0.0).to(tl.float32)
    g_lse = tl.load(g_lse_ptr + rows, mask=valid & (has_glse != 0), other=0.0).to(tl.float32)
    h = tl.zeros_like(g_lp)
    g_h = tl.zeros_like(g_lp)
    if HAS_GH:
        h = tl.load(h_ptr + rows, mask=valid, other=0.0)
        g_h = tl.load(g_h_ptr + rows, mask=valid, other=0.0).to(tl.float32)
    inv_t = tl.where(bad, float("nan"), k * LN2)
    x_rows = x_ptr + row_offset(rows, stride_x, VEC)
    gx_rows = gx_ptr + row_offset(rows, stride_gx, VEC)
    start = sl * slice_len
    stop = tl.minimum(start + slice_len, n_cols)
    s1 = tl.zeros((BLOCK_N,), tl.float32)
    s2 = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(start, stop, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = col_mask(cols, stop, VEC)
        mask = valid[:, None] & cmask[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        a, slope = soft_cap(x, cap, SOFTCAP)
        l2 = a * k[:, None] - lse2[:, None]
        p = tl.where(mask, tl.exp2(l2), 0.0)
        live = p > 0.0
        lp = tl.where(live, l2 * LN2, 0.0)
        coef = (g_lse - g_lp)[:, None]
        if HAS_GH:
            q = lp + h[:, None]
            coef -= g_h[:, None] * q
            if COMPUTE_DT:
                s2 += tl.sum(p * q * q, axis=1)
        ga = p * coef + tl.where(cols[None, :] == y[:, None], g_lp[:, None], 0.0)
        if COMPUTE_DT:
            s1 += tl.sum(p * lp, axis=1)
        gz = tl.where(mask, ga * slope * inv_t[:, None], 0.0)
        tl.store(gx_rows[:, None] + cols[None, :], gz.to(gx_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & cmask[None, :])
    if COMPUTE_DT:
        share = share_ptr + (rows * n_slices + sl) * 2
        tl.store(share, s1, mask=row_mask)
        tl.store(share + 1, s2, mask=row_mask)

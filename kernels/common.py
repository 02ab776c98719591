"""Constants and helpers shared by every kernel (Triton only).

Base 2 throughout: with ``k = log2(e) / T`` a logit ``z`` becomes ``u = k z`` and
``exp(z / T) = 2^u``; natural logs come back through ``ln 2``.

Partials: the paths that cut a row into slices (``slices``, see :mod:`.heuristics`) keep, per
(row, slice), the statistics of that slice relative to its own max ``m_i`` and combine them
with :func:`combine_max` / :func:`rescale_to`: ``M = max m_i``, ``s = sum s_i 2^(m_i - M)``,
``D = sum (D_i + cs_i (M - m_i))``.

The cooperative protocol (``PHASE = 0`` of the slices kernels; ``kernels/README.md``) is
written once here: :func:`work_item` (a ticket, or an entry of the repair list),
:func:`arrive_and_wait` (arrive at the row's counter, then a *bounded* wait) and
:func:`give_up` (a program that stops waiting lists its work item; the repair launch, ``PHASE
= 2`` with ``repair`` set, which the launcher always runs after ``PHASE = 0``, finishes it).

``workspace layout``: every op allocates one fp32 workspace (see the ``WS_*`` offsets) whose
header holds the mean's divisor, the reduction factors, the reduced outputs and the counters
the kernels synchronise on (int32, through a pointer bitcast).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# Per (row, slice) partials of the cross-entropy slices path: the slice's max of u (log2
# units, -inf for an empty slice), sum 2^(u - m), sum 2^(u - m) z, sum c z, sum c,
# D = sum c (m - u), and the target logit z_y (two-phase fallback only); padded to 8.
CE_PARTIALS = tl.constexpr(8)
P_M = tl.constexpr(0)
P_S = tl.constexpr(1)
P_EZ = tl.constexpr(2)
P_CZ = tl.constexpr(3)
P_CS = tl.constexpr(4)
P_D = tl.constexpr(5)
P_ZY = tl.constexpr(6)
# Softmax forward partials: (m, s); softmax backward partials: (A, sum dx x).
SOFTMAX_PARTIALS = tl.constexpr(2)

# Workspace header (fp32 slots; the counters are int32 in the same bytes).
WS_LOSS_DIV = tl.constexpr(0)  # the reduced loss is sum / this (mean: the divisor; sum: 1)
WS_ROW_FACTOR = tl.constexpr(1)  # d loss / d loss_row: 1 / divisor (0 if it is 0), or 1
WS_GRAD_SCALE = tl.constexpr(2)  # the factor folded into a fused gradient (1 when deferred)
WS_LOSS = tl.constexpr(3)  # the reduced loss
WS_DT = tl.constexpr(4)  # the reduced dL/dT (scalar temperature)
WS_DONE = tl.constexpr(5)  # int32: programs that have stored their partial sums
WS_TICKET = tl.constexpr(6)  # int32: next work item of a persistent cooperative grid
WS_GAVE_UP = tl.constexpr(7)  # int32: work items whose wait gave up (the repair list's length)
WS_Z_SCALE = tl.constexpr(8)  # the z-loss's factor: divisor / rows counted (a weighted mean), or 1
WS_HEADER = tl.constexpr(9)  # first slot after the header


@triton.jit
def temperature_scale(t):
    """``log2(e) / T``, NaN where ``T`` is not finite and positive."""
    ok = (t > 0.0) & (t < float("inf"))
    return tl.where(ok, LOG2E / t, float("nan"))


@triton.jit
def soft_cap(x, cap, SOFTCAP: tl.constexpr):
    """``(a, da/dx)``: ``a = cap tanh(x / cap)`` and ``1 - tanh^2`` with ``SOFTCAP``, else
    ``(x, 1)``. ``tanh(v) = 2 / (1 + 2^(-2 log2(e) v)) - 1``: one ``exp2`` and one approximate
    reciprocal (no inline asm, which the interpreter cannot run; no IEEE division, whose
    dozen instructions per element made the soft-capped kernel issue-bound); its absolute
    error, about ``2^-22``, is ``cap`` times that on the logit, the rounding of a logit of
    magnitude ``cap``. Saturates to ``+-1`` (``-inf`` gives ``-cap``, slope 0: a masked lane
    must be masked again after the cap)."""
    a = x
    slope = tl.full(x.shape, 1.0, tl.float32)
    if SOFTCAP:
        e = tl.exp2(x * ((-2.0 * LOG2E) / cap))
        th = tl.fdiv(tl.full(x.shape, 2.0, tl.float32), 1.0 + e) - 1.0
        a = cap * th
        slope = 1.0 - th * th
    return a, slope


@triton.jit
def row_temperature(t_ptr, stride_t, t_value, rows, row_mask):
    """The temperature of ``rows``: ``t_value`` when it is positive (a Python number, passed
    by value), else loaded from ``t_ptr`` (``stride_t`` 0: one value for every row)."""
    from_ptr = row_mask & (t_value <= 0.0)
    return tl.load(t_ptr + rows * stride_t, mask=from_ptr, other=t_value).to(tl.float32)


@triton.jit
def safe_max(m):
    """``m``, or 0 where it is ``-inf`` (a row or slice with no finite logit), so that
    ``2^(u - m)`` stays 0 instead of NaN."""
    return tl.where(m == -float("inf"), 0.0, m)


@triton.jit
def combine_max(m_i, valid):
    """``(M, M_ref)`` of per-slice maxima ``m_i`` (``valid`` masks the padding):
    ``M = max m_i`` and ``M_ref = safe_max(M)``."""
    m = tl.max(tl.where(valid, m_i, -float("inf")), axis=0)
    return m, safe_max(m)


@triton.jit
def rescale_to(m_i, m_ref, valid):
    """``2^(m_i - M_ref)`` per slice: the factor that moves a slice's sums from its own max to
    the row's (0 for the padding and for empty slices, whose sums are 0)."""
    return tl.where(valid & (m_i > -float("inf")), tl.exp2(m_i - m_ref), 0.0)


@triton.jit
def finish_sum(ptr, n, BLOCK: tl.constexpr):
    """``sum(ptr[0:n])`` in a fixed order (deterministic), read past L1 (``.cg``): the values
    were written by other programs of the same launch."""
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(0, tl.cdiv(n, BLOCK)):
        offs = i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(ptr + offs, mask=offs < n, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@triton.jit
def arrive_last(ws_ptr, n_programs):
    """Count this program as done (after a CTA barrier, so that every thread's stores come
    first) and return whether it was the last of ``n_programs``. The last one to arrive may
    read every other program's stores (acquire-release on the counter): the "last block"
    reduction, which needs no program to wait for another."""
    tl.debug_barrier()
    done = ws_ptr.to(tl.pointer_type(tl.int32)) + WS_DONE
    arrived = tl.atomic_add(done, 1, sem="acq_rel", scope="gpu")
    tl.debug_barrier()
    return arrived == n_programs - 1


@triton.jit
def row_offset(rows, stride, VEC: tl.constexpr):
    """``rows * stride``, declared a multiple of ``VEC`` elements (16 bytes) when the launcher
    proved that every row stride is: with :func:`col_mask` it lets rows that are not a
    multiple of 16 elements long (C = 1000) load with 128-bit accesses."""
    offset = rows * stride
    if VEC > 1:
        offset = tl.multiple_of(offset, VEC)
    return offset


@triton.jit
def col_mask(cols, n_cols, VEC: tl.constexpr):
    """``cols < n_cols``, declared constant over runs of ``VEC`` columns (``C`` is a multiple
    of ``VEC``; the hint on ``C`` itself is not propagated to the mask)."""
    mask = cols < n_cols
    if VEC > 1:
        mask = tl.max_constancy(mask, VEC)
    return mask


# --------------------------------------------------------------------------------------------
# The cooperative protocol: ticket, arrive, bounded wait, give up, repair
# --------------------------------------------------------------------------------------------
@triton.jit
def work_item(sync, turn, list_off, n_items, repair, PHASE: tl.constexpr):
    """The work item of a program's ``turn`` (its program id, then plus the grid size each
    time): ``PHASE == 0`` the next ticket (a persistent grid); the repair launch (``repair``
    set) the ``turn``-th entry of the list at ``sync + list_off`` (int32, ``ws[WS_GAVE_UP]``
    entries); otherwise ``turn`` itself (a grid of ``n_items``). ``n_items`` or more: no work
    left. Work items are int32 (``N * n_slices`` cannot reach 2^31: every slice holds at least
    2048 elements), so that a row and a slice come from a 32-bit division (a 64-bit one is a
    subroutine call, whose register saves spilled); row offsets are taken in int64."""
    if PHASE == 0:
        return tl.atomic_add(sync + WS_TICKET, 1, sem="relaxed", scope="gpu")
    listing = repair != 0
    listed = listing & (turn < tl.load(sync + WS_GAVE_UP))  # (read, unused, when not listing)
    entry = tl.load(sync + list_off + tl.where(listed, turn, 0))
    return tl.where(listed, entry, tl.where(listing, n_items, turn.to(tl.int32)))


@triton.jit
def arrive_and_wait(counter, n_slices, limit, poll_add):
    """Arrive at a row's ``counter`` and wait, at most ``limit`` polls, until its
    ``n_slices`` slices have arrived. Returns ``(complete, limit)``: whether every slice's
    partials are visible to this program, and the limit of its next wait (0 after a give-up:
    a program that has waited in vain once does not wait again in this launch).

    Ordering: a CTA barrier (every thread's partial stores first), then the arrival, an atomic
    with release and acquire semantics at GPU scope; each poll is an acquire atomic, never a
    cached load. ``poll_add`` is 0 except in tests: each poll then counts as one more arrival
    (standing in for the other programs of the row, whose partials the test published first)."""
    tl.debug_barrier()
    arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") + 1
    polls = 0
    while (arrived < n_slices) & (polls < limit):
        arrived = tl.atomic_add(counter, poll_add, sem="acquire", scope="gpu")
        polls += 1
    tl.debug_barrier()
    complete = arrived >= n_slices
    return complete, tl.where(complete, limit, 0)


@triton.jit
def give_up(sync, list_off, item):
    """List ``item`` for the repair launch (the list at ``sync + list_off``): its partials are
    published and it has arrived, but it writes nothing (with the gradient written over the
    logits, its slice must stay intact until the repair launch reads it again)."""
    slot = tl.atomic_add(sync + WS_GAVE_UP, 1, sem="relaxed", scope="gpu")
    tl.store(sync + list_off + slot, item.to(tl.int32))

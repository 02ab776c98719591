"""Launch heuristics shared by the row-wise kernels (softmax and cross-entropy): pure functions of
the problem size and the device. A kernel file with heuristics of its own keeps them beside its
kernels (``rescale.apply_config``, ``distillation.distill_config``).

Every row-wise op has two paths (``kernels/README.md`` has the whole story):

* ``rows``: a ``[BLOCK_N, BLOCK_C]`` tile holds ``BLOCK_N`` whole rows on chip; each value
  is read once and written once. Used while ``next_pow2(C)`` fits :func:`row_limit`.
* ``slices``: a row is cut into ``n_slices`` slices of ``BLOCK_C`` columns (a power of two,
  at most :func:`row_limit`), one per program, whose partial statistics are combined. On a GPU
  a persistent cooperative grid keeps every slice on chip until its row is complete (one read,
  one write) whenever at least ``n_slices`` programs can be resident at once
  (:func:`slices_phases`, from the compiled kernel's registers and shared memory); otherwise,
  and under the interpreter (one program at a time), two launches: statistics, then a second
  read and the write.

Register budget: ``ELEMENTS_PER_THREAD`` values of each input per thread, so that two or
more programs fit on an SM (one program per SM cannot hide its own reductions).
"""

from __future__ import annotations

from dataclasses import dataclass

TILE_ELEMENTS = 2048  # elements per program when rows are short (BLOCK_N rows of BLOCK_C)
WIDE_ROW = 256  # rows at least this wide (next_pow2) get a program each
ELEMENTS_PER_THREAD = 32  # values of one input per thread: 32 fp32 registers
MAX_WARPS = 8
MIN_WARPS = 1
ROW_LIMIT = ELEMENTS_PER_THREAD * 32 * MAX_WARPS  # 8192 values of one input on chip
MIN_SLICE = 2048  # the slices path narrows slices down to this to fill the SMs
MIN_BLOCK_C = 16
DEFAULT_NUM_SMS = 132  # H100 SXM and H200; used when no CUDA device is present
BLOCKS_PER_SM = 32  # the hardware limit on resident programs per SM (sm_80, sm_90)


@dataclass(frozen=True)
class LaunchConfig:
    """How a row-wise kernel is launched."""

    path: str  # "rows" | "slices"
    block_n: int  # rows per program (rows path); 1 otherwise
    block_c: int  # columns per tile (rows) or per slice (slices)
    n_slices: int  # slices per row (slices path); 1 otherwise
    num_warps: int
    vec: int = 1  # rows are multiples of this many elements (16 bytes): 128-bit accesses

    @property
    def block_s(self) -> int:
        """``next_pow2(n_slices)``: the width of the partials' combine."""
        return next_pow2(self.n_slices)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_limit(n_inputs: int = 1) -> int:
    """Largest ``BLOCK_N * BLOCK_C`` a program holds on chip: ``ROW_LIMIT`` values of one
    input, halved for each further full-size input (softmax backward reads ``y`` and ``dy``,
    and ``x`` for dL/dT)."""
    return ROW_LIMIT // next_pow2(n_inputs)


def warps_for(elements: int, n_inputs: int = 1) -> int:
    """Warps for a program holding ``elements`` values of each of ``n_inputs`` inputs:
    ``ELEMENTS_PER_THREAD`` values per thread per input, within ``[MIN_WARPS, MAX_WARPS]``."""
    warps = elements * next_pow2(n_inputs) // (32 * ELEMENTS_PER_THREAD)
    return max(MIN_WARPS, min(MAX_WARPS, next_pow2(warps)))


def vector_width(n_cols: int, elem_size: int, *strides: int) -> int:
    """Elements per 16 bytes when ``C`` and every row stride are multiples of it (rows then
    start on 16-byte boundaries if the base does, which the JIT checks), else 1."""
    vec = 16 // elem_size
    if all(v % vec == 0 for v in (n_cols, *strides)):
        return vec
    return 1


def row_config(n_rows: int, n_cols: int, elem_size: int, num_sms: int | None = None,
               n_inputs: int = 1, vec: int = 1) -> LaunchConfig:
    """Choose the path and block sizes for an ``(n_rows, n_cols)`` row-wise kernel.

    ``elem_size`` is the byte size of the data's dtype (it only matters through ``vec``);
    ``n_inputs`` the number of ``N x C`` tensors a program reads.
    """
    num_sms = num_sms or DEFAULT_NUM_SMS
    limit = row_limit(n_inputs)
    block_c = max(MIN_BLOCK_C, next_pow2(n_cols))
    if block_c <= limit:
        if block_c >= WIDE_ROW:
            # one row per program, its warps side by side: every thread holds a piece of one
            # row only (with several rows, Triton's layout would give each thread a piece of
            # every row, and the per-row work would be repeated as many times)
            return LaunchConfig("rows", 1, block_c, 1, warps_for(block_c, n_inputs), vec)
        block_n = max(1, min(TILE_ELEMENTS // block_c, next_pow2(n_rows)))
        return LaunchConfig("rows", block_n, block_c, 1, warps_for(block_n * block_c, n_inputs),
                            vec)
    block_c = limit
    while block_c > MIN_SLICE and n_rows * cdiv(n_cols, block_c) < 2 * num_sms:
        block_c //= 2
    return LaunchConfig("slices", 1, block_c, cdiv(n_cols, block_c),
                        warps_for(block_c, n_inputs), vec)


def resident_programs(registers: int, shared: int, num_warps: int, *, sms: int,
                      regs_per_sm: int = 65536, threads_per_sm: int = 2048,
                      shared_per_sm: int = 228 * 1024,
                      blocks_per_sm: int = BLOCKS_PER_SM) -> int:
    """How many programs of a compiled kernel can be resident on the device at once: the
    occupancy limit of registers (allocated per warp in units of 256), shared memory (plus
    1 KiB the driver reserves per block), threads and blocks, times the SMs."""
    regs_per_warp = cdiv(max(registers, 1) * 32, 256) * 256
    per_sm = min(regs_per_sm // (regs_per_warp * num_warps), threads_per_sm // (32 * num_warps),
                 shared_per_sm // (shared + 1024), blocks_per_sm)
    return per_sm * sms


def slices_phases(n_slices: int, resident: int) -> int:
    """1: the cooperative one-read launch is deadlock-free (at least ``n_slices`` programs
    fit at once); 2: two launches (statistics, then finish)."""
    return 1 if resident >= n_slices else 2

"""Launch heuristics shared by the row-wise kernels (pure functions of the problem size).

Every row-wise op has three paths:

* ``single``: a ``[BLOCK_N, BLOCK_C]`` tile holds ``BLOCK_N`` whole rows on chip; the row is
  read once and written once. Used while ``next_pow2(C)`` fits ``single_pass_limit``.
* ``stream``: one program per row loops over the row in ``BLOCK_C`` chunks, an online max / sum
  pass then a write pass (the second read is served mostly from L2).
* ``split``: few rows with very many classes: each row is cut into ``splits`` column ranges
  handled by separate programs (a statistics kernel, then a finishing kernel that combines the
  partial statistics), so that all SMs are busy.
"""

from __future__ import annotations

from dataclasses import dataclass

TILE_ELEMENTS = 4096  # elements per program in the single path when rows are short
ELEMENTS_PER_THREAD = 16  # register budget per loaded tensor in the single path
STREAM_BLOCK = 4096  # chunk width of the stream and split paths
MIN_BLOCK_C = 16
PROGRAMS_PER_SM = 4  # the split path aims for this many programs per SM
DEFAULT_NUM_SMS = 132  # H100 SXM; used when no CUDA device is present (interpreter)


@dataclass(frozen=True)
class LaunchConfig:
    """How a row-wise kernel is launched."""

    path: str  # "single" | "stream" | "split"
    block_n: int  # rows per program (single path); 1 otherwise
    block_c: int  # columns per tile or chunk
    splits: int  # column ranges per row (split path); 1 otherwise
    num_warps: int
    chunks_per_split: int = 1  # block_c chunks per program (split path)

    @property
    def cols_per_split(self) -> int:
        """Columns handled by one program of the split path (a multiple of ``block_c``)."""
        return self.block_c * self.chunks_per_split


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def single_pass_limit(elem_size: int, n_inputs: int = 1) -> int:
    """Largest ``BLOCK_C`` whose rows stay on chip: 32768 columns of 16-bit data, 16384 of
    32-bit data, halved for each extra full-size input (softmax backward reads y and dy)."""
    limit = 32768 if elem_size <= 2 else 16384
    return limit >> (n_inputs - 1)


def _warps_for(tile: int, n_inputs: int) -> int:
    warps = tile * n_inputs // (32 * ELEMENTS_PER_THREAD)
    return max(4, min(32, next_pow2(warps)))


def row_config(n_rows: int, n_cols: int, elem_size: int, num_sms: int | None = None,
               n_inputs: int = 1) -> LaunchConfig:
    """Choose the path and block sizes for an ``(n_rows, n_cols)`` row-wise kernel.

    ``elem_size`` is the byte size of the logits' dtype; ``n_inputs`` the number of ``N x C``
    tensors a program reads (1 forward, 2 for softmax backward).
    """
    num_sms = num_sms or DEFAULT_NUM_SMS
    block_c = max(MIN_BLOCK_C, next_pow2(n_cols))
    if block_c <= single_pass_limit(elem_size, n_inputs):
        block_n = max(1, min(TILE_ELEMENTS // block_c, next_pow2(n_rows)))
        return LaunchConfig("single", block_n, block_c, 1, _warps_for(block_n * block_c, n_inputs))
    chunks = cdiv(n_cols, STREAM_BLOCK)
    splits = 1
    if n_rows < PROGRAMS_PER_SM * num_sms:
        splits = max(1, min(chunks, cdiv(PROGRAMS_PER_SM * num_sms, max(n_rows, 1)), 64))
    if splits == 1:
        return LaunchConfig("stream", 1, STREAM_BLOCK, 1, 8)
    chunks_per_split = cdiv(chunks, splits)
    splits = cdiv(chunks, chunks_per_split)
    return LaunchConfig("split", 1, STREAM_BLOCK, splits, 8, chunks_per_split)


def elementwise_config(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_C, num_warps)`` for a 2-D elementwise kernel (the gradient rescale)."""
    block_c = max(MIN_BLOCK_C, min(next_pow2(n_cols), 4096))
    block_n = max(1, min(TILE_ELEMENTS // block_c, next_pow2(n_rows)))
    return block_n, block_c, 8

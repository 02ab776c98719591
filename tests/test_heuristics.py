"""The launch heuristics (``kernels/heuristics.py`` and each kernel file's own): which path, block
sizes and warps a shape gets, and the residency rule behind the cooperative launch."""

from __future__ import annotations

import pytest

from tempfast.kernels import heuristics
from tempfast.kernels.heuristics import (
    next_pow2,
    resident_programs,
    row_config,
    row_limit,
    slices_phases,
)


def test_heuristics_choose_rows_and_slices():
    assert row_config(8192, 1000, 2).path == "rows"
    assert row_config(8192, 1000, 2).block_n == 1, "a program per row of 1000 classes"
    assert row_config(8192, 10, 4).block_n > 1, "short rows share a program"
    assert row_config(8192, row_limit(), 2).path == "rows"
    wide = row_config(8192, 32000, 2)
    assert wide.path == "slices" and wide.n_slices == 4 and wide.block_c == row_limit()
    few = row_config(4, 262144, 2, num_sms=132)
    assert few.path == "slices" and few.block_c < row_limit(), "narrower slices fill the SMs"
    assert 4 * few.n_slices >= 2 * 132
    assert row_config(64, 32000, 2, n_inputs=2).block_c == row_limit(2)


@pytest.mark.parametrize("n_rows", [1, 3, 100, 600, 8192])
@pytest.mark.parametrize("n_cols", [1, 10, 1000, 4097, 32769, 131072, 262144, 1 << 20])
@pytest.mark.parametrize("n_inputs", [1, 2, 3])
def test_heuristics_are_consistent(n_rows, n_cols, n_inputs):
    cfg = row_config(n_rows, n_cols, 2, num_sms=132, n_inputs=n_inputs)
    limit = row_limit(n_inputs)
    if cfg.path == "rows":
        assert cfg.block_c >= n_cols and cfg.n_slices == 1
        assert cfg.block_n * cfg.block_c <= max(heuristics.TILE_ELEMENTS, cfg.block_c) <= limit
    else:
        assert cfg.block_c & (cfg.block_c - 1) == 0
        assert heuristics.MIN_SLICE <= cfg.block_c <= limit
        assert cfg.n_slices * cfg.block_c >= n_cols > (cfg.n_slices - 1) * cfg.block_c
        assert cfg.block_s >= cfg.n_slices
    per_thread = cfg.block_n * cfg.block_c * next_pow2(n_inputs) / (32 * cfg.num_warps)
    assert per_thread <= heuristics.ELEMENTS_PER_THREAD or cfg.num_warps == heuristics.MAX_WARPS
    assert cfg.num_warps in (1, 2, 4, 8)


def test_residency_is_the_occupancy_limit_of_the_compiled_kernel():
    """Registers are allocated per warp in units of 256, shared memory with 1 KiB reserved
    per block; the tightest of registers, threads, shared memory and blocks wins."""
    assert resident_programs(64, 1024, 8, sms=132) == 4 * 132  # 65536 / (8 * 32 * 64)
    assert resident_programs(65, 1024, 8, sms=132) == 3 * 132  # 72 registers allocated
    assert resident_programs(32, 100 * 1024, 4, sms=132) == 2 * 132  # shared memory
    assert resident_programs(16, 0, 1, sms=2) == 32 * 2  # the block limit
    assert slices_phases(16, 528) == 1 and slices_phases(16, 15) == 2
    assert slices_phases(1, 1) == 1 and slices_phases(2, 1) == 2  # the interpreter: one

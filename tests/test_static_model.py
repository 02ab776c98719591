"""The static cost model's latency terms (bench/static/model.py), on synthetic readings: no
compiler, no GPU. Each test states the arithmetic the model must follow."""

from __future__ import annotations

import math

import pytest

from bench.static import model
from bench.static.compile import KernelReading, Loop, SassReading
from bench.static.record import Launch, TensorArg

H100 = model.GPUS[0]


def _tensor(numel: int, itemsize: int, ptr: int) -> TensorArg:
    return TensorArg((numel,), (1,), "bf16", itemsize, ptr, ptr)


def _liger_like(rows: int, classes: int, registers: int, block: int = 32768,
                warps: int = 32) -> tuple[Launch, KernelReading]:
    """A launch shaped like Liger's CE: one program per row, a loop reading the row, a loop
    re-reading it and writing the gradient in place; 4 x 128-bit loads per thread a trip."""
    loops = [Loop(0, 10, 300, {"LDG": [128] * 4, "STG": []}, syncs=20),
             Loop(20, 30, 470, {"LDG": [128] * 4, "STG": [128] * 4}, syncs=0)]
    sass = SassReading(instructions=930, subroutine_instructions=0, loops=loops,
                       accesses={"LDG": [128] * 8, "STG": [128] * 4}, local_accesses=0, mufu=70,
                       all_loops=loops, syncs=24)
    reading = KernelReading("liger_cross_entropy_kernel", "sm_90a", warps, registers, 0, 0, 0,
                            1024, sass)
    x = _tensor(rows * classes, 2, 1 << 20)
    launch = Launch("m", "liger_cross_entropy_kernel", (rows, 1, 1), {"X_ptr": x},
                    {"n_cols": classes}, {"X_ptr": "*bf16", "BLOCK_SIZE": "constexpr",
                                          "HAS_GRADIENTS": "constexpr"},
                    {(1,): block, (2,): True}, {}, {"num_warps": warps})
    return launch, reading


def test_one_program_per_sm_adds_its_compute_to_the_queue_of_its_rounds():
    launch, reading = _liger_like(8192, 32000, registers=64)
    assert model.resident_programs(reading)["programs"] == 1
    cost = model.launch_cost(launch, reading, H100)
    lat = cost.latency
    # two rounds (one trip of each loop), each moving 64 KiB of HBM bytes per program; with one
    # program per SM in that round on every SM, a round takes the queue of all of them
    assert lat.rounds == 2
    assert lat.round_bytes == pytest.approx(2 * 8192 * 32000 * 2 / (8192 * 2))
    assert lat.round_s == pytest.approx(132 * lat.round_bytes / H100.copy_bw)
    issue = (930 + 0 * 300) * 8 / H100.clock_hz  # 32 warps over 4 schedulers: 8 cycles each
    syncs = 24 * model.ON_CHIP_LATENCY_CYCLES / H100.clock_hz
    chain = H100.dram_latency + 2 * lat.round_s + issue + syncs
    assert lat.chain_s == pytest.approx(chain)
    assert lat.waves == math.ceil(8192 / 132)
    assert cost.t_chain == pytest.approx(lat.waves * chain)
    assert cost.bound == "latency" and cost.t_chain > 1.5 * cost.t_mem
    assert cost.t == pytest.approx(cost.t_chain + model.LAUNCH_S)


def test_programs_that_share_an_sm_overlap_their_chains():
    launch, one = _liger_like(8192, 32000, registers=64)
    _, two = _liger_like(8192, 32000, registers=32)
    assert model.resident_programs(two)["programs"] == 2
    c1, c2 = (model.launch_cost(launch, r, H100) for r in (one, two))
    assert c2.latency.waves == math.ceil(8192 / 264)
    assert c2.t_chain == pytest.approx(c1.t_chain / 2, rel=0.02)


def test_littles_law_binds_a_launch_with_few_bytes_in_flight():
    # one warp per program, one 32-bit load, 8 programs per SM: 8 x 32 x 4 = 1 KiB per SM
    sass = SassReading(20, 0, [], {"LDG": [32], "STG": [32]}, 0, 0)
    reading = KernelReading("copy_kernel", "sm_90a", 1, 32, 0, 0, 0, 0, sass)
    n = 1 << 26
    launch = Launch("m", "copy_kernel", (8 * 132, 1, 1),
                    {"src_ptr": _tensor(n, 2, 1 << 30), "dst_ptr": _tensor(n, 2, 1 << 31)},
                    {}, {"src_ptr": "*bf16", "dst_ptr": "*bf16"}, {}, {}, {"num_warps": 1})
    cost = model.launch_cost(launch, reading, H100)
    lat = cost.latency
    per_sm = min(model.resident_programs(reading)["programs"], 8) * 32 * 4
    assert lat.in_flight_per_sm == per_sm < H100.in_flight_needed
    assert cost.t_little == pytest.approx(2 * n * H100.dram_latency / (132 * per_sm))
    assert cost.bound == "in-flight" and cost.t_little > cost.t_mem


def test_a_reread_beyond_the_l2_comes_from_hbm_in_the_share_the_l2_cannot_hold():
    # rows in flight x row bytes = twice the L2: half the re-read from HBM
    rows_in_flight = 132
    row_bytes = 2 * H100.l2_bytes // rows_in_flight
    classes = row_bytes // 2
    launch, reading = _liger_like(8192, classes, registers=64)
    cost = model.launch_cost(launch, reading, H100)
    total = 8192 * classes * 2
    assert cost.reread_bytes == total
    assert cost.reread_hbm_bytes == pytest.approx(total / 2, rel=0.01)
    small, r_small = _liger_like(8192, 32000, registers=64)
    assert model.launch_cost(small, r_small, H100).reread_hbm_bytes == 0

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


def test_a_gemm_is_timed_by_its_flops_at_the_stated_rate_or_its_bytes_when_thin():
    from bench.static.record import Gemm

    square = Gemm("forward", 8192, 8192, 8192, 2, 2, False)
    expected = square.flops / (model.GEMM_EFFICIENCY * 989e12) + model.LAUNCH_S
    assert model.gemm_time(square, H100) == pytest.approx(expected)
    assert square.flops / (model.gemm_time(square, H100) - model.LAUNCH_S) == \
        pytest.approx(781e12, rel=0.01)  # the measured rate the fraction stands for
    thin = Gemm("forward", 8192, 8192, 1, 2, 4, True)  # an outer product: all bytes
    assert thin.bytes == 2 * 8192 * 2 + 2 * 8192 * 8192 * 4
    assert model.gemm_time(thin, H100) == pytest.approx(thin.bytes / H100.copy_bw
                                                        + model.LAUNCH_S)
    fp32 = Gemm("forward", 4096, 4096, 4096, 4, 4, False)
    assert H100.gemm_rate(4) == pytest.approx(model.GEMM_EFFICIENCY * 67e12)
    assert model.gemm_time(fp32, H100) > 10 * model.gemm_time(
        Gemm("forward", 4096, 4096, 4096, 2, 2, False), H100)


def test_the_heads_floor_counts_their_unavoidable_products_and_bytes():
    from bench.static.analysis import head_floor, head_flops_and_bytes
    from bench.static.workloads import Workload

    n, h, c = 8192, 4096, 32000
    flops, nbytes = head_flops_and_bytes(Workload("linear_ce_fwd_bwd", "bf16", n, c, h))
    assert flops == 6 * n * h * c
    assert nbytes == 2 * (n * h + c * h) * 2
    clip = Workload("contrastive_fwd_bwd", "bf16", 4096, 4096, 768)
    assert head_flops_and_bytes(clip) == (6 * 4096 ** 2 * 768, 4 * 4096 * 768 * 2)
    assert head_flops_and_bytes(Workload("ce_fwd_bwd", "bf16", n, c)) is None
    w = Workload("linear_ce_fwd_bwd", "bf16", n, c, h)
    assert head_floor(w, H100) == pytest.approx(flops / H100.gemm_rate(2)
                                                + nbytes / H100.copy_bw)


def test_the_sass_reading_counts_tensor_core_instructions():
    from bench.static.compile import parse_sass

    text = "\n".join([
        "        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;",
        "        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;",
        "        /*0020*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;",
        "        /*0030*/                   FFMA R1, R2, R3, R1 ;",
        "        /*0040*/                   EXIT ;",
    ])
    assert parse_sass(text).mma == 2

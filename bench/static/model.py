"""The cost model: HBM traffic, instruction issue and launches, per launch and per case.

For each launch (a recorded ``kernel[grid](...)`` and its compiled binary, see
:mod:`bench.static.compile`):

* **traffic**: the ``N x C`` tensors it reads and writes (bytes = ``numel * itemsize``, the
  pointer arguments named in :data:`KERNELS`), plus every other tensor argument once (row
  vectors, partials: negligible at the headline shapes). A *re-read* is served from L2 in the
  share ``min(1, L2 / footprint)`` and from HBM in the rest, where the footprint is what is
  read between a byte's first read and its re-read: the rows in flight (concurrent programs =
  min(grid, resident programs per SM x SMs), times each one's bytes) for a re-read in a later
  loop of the same program, the whole tensor for a re-read of what an *earlier launch* read.
  ``L2 / footprint`` is what the best replacement policy keeps of a cyclic re-read (LRU keeps
  nothing once the footprint exceeds the L2; the H100's policy is not published).
* **issue**: warp-instructions = programs x warps x (SASS body instructions + each hot loop's
  instructions x (trip count - 1)); the trip count is the host integer named in
  :data:`KERNELS`. SASS instructions per element (per thread, the figure a kernel author
  tunes) = warp-instructions x 32 / elements of the case.
* **latency** (:func:`latency_terms`): two bounds a memory-bound launch can hit before its
  bytes do.

  - *Little's law.* An SM can only have so many bytes in flight: resident programs x threads x
    the bytes its loads in flight per thread (the LDG widths of the hot loop's SASS, or of the
    body for a loop-free kernel). The GPU's load rate is at most SMs x bytes in flight / DRAM
    latency; below ``copy bandwidth x latency / SMs`` per SM the launch is latency-bound:
    ``t_little = bytes loaded x latency / (SMs x bytes in flight per SM)`` (the passes' reads
    and HBM re-reads: stores are posted, and the other tensors are row vectors the
    description does not say are read).
  - *The chain of one program.* A program waits for each round of loads before it computes on
    them (Triton's loops here load, then reduce: no load of the next trip is issued before
    this trip's data is used). One program's time is its rounds' latencies plus the issue time
    of its own instructions (``ceil(warps / 4)`` cycles per instruction, its warps spread over
    the 4 schedulers): ``chain = L_dram (the scalar loads before the loops) + sum over rounds of
    round latency + instructions x ceil(warps / 4) / clock``. A round's latency is the
    published unloaded latency of where its bytes come from (DRAM or an L2 hit), or, when
    every SM has one program in that round, the time the memory system needs for all of
    them (``SMs x bytes of the round / copy bandwidth``): Little's law again, the round trip
    cannot be shorter than the queue in front of it. Programs resident on one SM overlap
    each other's chains (a second program computes while the first waits); one resident
    program per SM cannot, so with one program per SM the compute and the memory time add.
    ``t_chain = ceil(programs / (resident x SMs)) x chain``. A cooperative work item
    (``PHASE == 0``) adds two L2 round trips (the arrival's atomic and one poll).

  The latencies are published pointer-chase measurements (:data:`LATENCY_SOURCE`), not
  fitted: the check is Liger's published CE times (bench/README.md), which the old model
  (max of memory and issue) missed by 2.24x at 32000 classes.
* **time**: ``t = max(t_mem, t_issue, t_little, t_chain) + launch cost``,
  issue rate = ``ISSUE_PER_CLOCK`` warp-instructions per clock per SM x SMs x clock. A case
  adds its launches and one launch cost for each torch op that computes (a kernel on the GPU:
  the ops that are not views or allocations).
* **floor**: the case's unavoidable bytes (:data:`bench.cases.FLOOR_UNITS`) at the copy
  bandwidth; the predicted fraction of the floor is ``floor time / predicted time``.

Resident programs per SM: the minimum over registers (allocated per warp in units of 256),
shared memory (+1 KiB reserved per block), warps and blocks, against :data:`SM_LIMITS`.

Blind spots: L2 bandwidth (an L2 hit costs its latency only), the L2's replacement policy,
the MUFU (exp2 / rcp) pipe's lower throughput (a quarter of the ALU rate), dual issue, stalls
on dependent instructions other than BAR / SHFL round trips, bank conflicts in the cross-warp
reductions, prefetch across loop trips, CTA launch rate for grids of 10^5+ tiny programs, DRAM
page effects and the clock under load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .compile import KernelReading, Loop
from .record import Launch
from .traffic import TRAFFIC

ISSUE_PER_CLOCK = 4  # warp-instructions per clock per SM (4 schedulers, 1 issue each)
LAUNCH_S = 3e-6  # GPU-side cost of one kernel launch in a full stream (assumed)
SCHEDULERS = 4  # warp schedulers per SM
# Unloaded load-to-use latency, pointer chase, H100 SXM (GH200: 690 / 281 cycles, the H200's
# closest published part): markdewing/AI_kernels, latency/README.md ("All measurements are in
# clock cycles": L1 40, L2 291, main memory 700).
DRAM_LATENCY_CYCLES = 700
L2_LATENCY_CYCLES = 291
ON_CHIP_LATENCY_CYCLES = 40  # one BAR or SHFL round trip: taken as the same table's L1 hit
LATENCY_SOURCE = ("pointer-chase latency, H100 SXM: L1 40, L2 291, DRAM 700 cycles "
                  "(github.com/markdewing/AI_kernels, latency/README.md); a BAR or SHFL "
                  "round trip is taken as an L1 hit")


# cuBLAS matrix products, as a fraction of the dense tensor-core peak (989 TFLOP/s in bf16 on
# the H100 SXM and the H200: same chip and clock): 8192^3 bf16 products on random data ran at
# 769-798 TFLOP/s on the H100 and 788 on the H200 lent to this project (the device tool's
# KINDS.md, sessions of 2026-10-28 to 2026-11-13): 780 / 989 = 0.79. The fp32 products (no
# TF32: torch's default) are taken at the same fraction of the 67 TFLOP/s fp32 peak (assumed).
GEMM_EFFICIENCY = 0.79
GEMM_SOURCE = ("cuBLAS at 79% of the dense peak: 8192^3 bf16 products measured 769-798 "
               "TFLOP/s (H100) and 788 (H200) on the machines lent to this project (device "
               "tool, KINDS.md); fp32 (no TF32) assumed at the same fraction")


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    l2_bytes: int
    peak_bw: float  # bytes / s
    copy_bw: float  # bytes / s, a device-to-device copy
    clock_hz: float
    copy_note: str
    tensor_flops: float = 989e12  # dense bf16 / fp16 tensor-core peak, FLOP / s
    fp32_flops: float = 67e12  # fp32 FMA peak (no tensor cores)

    def gemm_rate(self, itemsize: int) -> float:
        """FLOP / s of a cuBLAS product with operands of ``itemsize`` bytes."""
        peak = self.tensor_flops if itemsize <= 2 else self.fp32_flops
        return GEMM_EFFICIENCY * peak

    @property
    def issue_rate(self) -> float:
        return ISSUE_PER_CLOCK * self.sms * self.clock_hz

    @property
    def dram_latency(self) -> float:
        return DRAM_LATENCY_CYCLES / self.clock_hz

    @property
    def l2_latency(self) -> float:
        return L2_LATENCY_CYCLES / self.clock_hz

    @property
    def in_flight_needed(self) -> float:
        """Bytes each SM must keep in flight for the copy bandwidth (Little's law)."""
        return self.copy_bw * self.dram_latency / self.sms


GPUS = (
    Gpu("H100", 132, 50 * 10**6, 3.35e12, 3.0e12, 1.98e9,
        "assumed 90% of peak (quack's CE forward sustains 3.0-3.16 TB/s)"),
    Gpu("H200", 132, 60 * 10**6, 4.8e12, 4.3e12, 1.98e9, "measured device copy (DESIGN.md)"),
)


@dataclass(frozen=True)
class SmLimits:
    registers: int
    shared: int
    warps: int
    blocks: int
    shared_reserved: int = 1024


SM_LIMITS = {"sm_90a": SmLimits(65536, 228 * 1024, 64, 32),
             "sm_80": SmLimits(65536, 164 * 1024, 64, 32)}


def resident_programs(reading: KernelReading) -> dict[str, int]:
    """Programs of this kernel resident on one SM, and what limits them."""
    lim = SM_LIMITS[reading.arch]
    warps = reading.num_warps
    regs_per_warp = -(-max(reading.registers, 1) * 32 // 256) * 256
    by = {
        "registers": (lim.registers // regs_per_warp) // warps,
        "shared": lim.shared // (reading.shared + lim.shared_reserved),
        "warps": lim.warps // warps,
        "blocks": lim.blocks,
    }
    limit = min(by, key=by.get)
    return {"programs": by[limit], "limit": limit, **{f"by_{k}": v for k, v in by.items()}}


# --------------------------------------------------------------------------------------------
# What each kernel moves: tempfast's kernels from the tables of bench/static/traffic.py
# (passes over the N x C tensors, each with the condition that enables it, and the kind of
# loop structure); the peers (Liger, the copy) are described below. A launch of a kernel in
# no table fails loudly: whoever adds or renames a kernel adds its entry.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One sweep over an ``N x C`` tensor: ``kind`` is ``read``, ``write``, ``reread`` (a later
    loop of the same program reads it again) or ``reread_launch`` (an earlier launch read it);
    ``when``: the condition that enables it, terms joined by ``&``: ``FLAG`` (a true
    constexpr), ``!FLAG``, ``NAME==v`` / ``NAME!=v`` (an integer constexpr), ``moves`` (the
    launch moves data: see ``KernelDesc.traffic_if``)."""

    tensor: str
    kind: str
    when: str | None = None

    def active(self, constants: dict, moves: bool = True) -> bool:
        if self.when is None:
            return True
        return all(_term(term, constants, moves) for term in self.when.split("&"))


def _term(term: str, constants: dict, moves: bool) -> bool:
    if term == "moves":
        return moves
    for op in ("==", "!="):
        if op in term:
            name, value = term.split(op)
            equal = int(constants.get(name, 0)) == int(value)
            return equal if op == "==" else not equal
    if term.startswith("!"):
        return not constants.get(term[1:], False)
    return bool(constants.get(term, False))


@dataclass(frozen=True)
class KernelDesc:
    """``loops``: how many hot loops the SASS must show (from the constexprs); ``trips``: the
    iterations of each (one int for all, or a list in SASS order); ``select``: ``inner`` (the
    innermost loops) or ``outer`` (the work-item loop of a persistent grid, whose inner loops
    are a spin-wait counted once per item); ``tail``: with ``REDUCE`` the code after the last
    predicated EXIT runs in one program only (the last-block reduction)."""

    passes: tuple[Pass, ...]
    loops: Callable[[dict], int] = lambda c: 0
    trips: Callable[[Launch], int | list[int]] = lambda launch: 1
    traffic_if: Callable[[Launch], bool] = lambda launch: True  # False: the launch moves no data
    hot: Callable[[Loop], bool] = lambda loop: True  # which SASS loops run (the others: never)
    select: str = "inner"
    tail: bool = False
    row_loops: Callable[[list[Loop]], list[Loop]] = lambda loops: loops  # which touch rows
    pick: Callable[[Launch, list[Loop]], list[Loop]] | None = None  # choose the hot loops


def _arg(name: str) -> Callable[[Launch], int]:
    return lambda launch: int(launch.constants.get(name, launch.scalars.get(name, 1)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _apply_moves(launch: Launch) -> bool:
    """The gradient apply touches the buffer only when ``g`` (times the deferred mean's
    factor) is not exactly 1; the recording keeps the values of tiny tensors."""
    g = launch.tensors["g_ptr"]
    defer = int(launch.constants.get("defer", launch.scalars.get("defer", 0)))
    return bool(defer) or g.values is None or any(v != 1.0 for v in g.values)


def _items_per_program(launch: Launch) -> int:
    """Work items per program of a slices launch: all of them shared by the persistent grid
    (``PHASE == 0``), one each (``PHASE`` 1 / 2), none in the repair launch (no wait gave
    up)."""
    if launch.scalars.get("repair"):
        return 0
    if int(launch.constants.get("PHASE", 0)) != 0:
        return 1
    items = int(launch.constants.get("n_items", launch.scalars.get("n_items", 1)))
    return _cdiv(items, max(launch.programs, 1))


def _apply_trips(launch: Launch) -> int:
    return _arg("tiles_per_program")(launch) if _apply_moves(launch) else 0


def _apply_loops(launch: Launch, loops: list[Loop]) -> list[Loop]:
    """The tile loop comes last (after the dL/dT loop, which the compiler may split or drop);
    there is none when the JIT made ``tiles_per_program == 1`` a constant."""
    return [] if "tiles_per_program" in launch.constants else loops[-1:]


def _slice_tiles(launch: Launch) -> int:
    """Trips of the tile loop of a token kernel: its slice's columns over ``BLOCK_C``."""
    cols = min(int(launch.scalars.get("slice_len", launch.constants.get("slice_len", 1))),
               int(launch.scalars.get("n_cols", launch.constants.get("n_cols", 1))))
    return _cdiv(cols, int(launch.constants["BLOCK_C"]))


_LOOPS = {  # the ``loops`` entry of a TRAFFIC table (traffic.py) -> how to read the SASS
    "none": {},
    "items": {"loops": lambda c: 1, "trips": _items_per_program, "select": "outer"},
    "tiles": {"loops": lambda c: -2, "trips": _apply_trips, "traffic_if": _apply_moves,
              "pick": _apply_loops},
    "small": {"loops": lambda c: -1},  # one program: loops counted once, not checked
    # the partials' combine of a two-phase slices launch (distillation): short loops over
    # n_slices / BLOCK_S chunks (one trip at the headline sizes), counted once, not checked
    "combine": {"loops": lambda c: -1},
    "slice_tiles": {"loops": lambda c: 1, "trips": _slice_tiles,
                    "hot": lambda loop: bool(loop.accesses["LDG"])},
}


def _from_table(spec: dict) -> KernelDesc:
    passes = tuple(Pass(*p) for p in spec["passes"])
    return KernelDesc(passes, tail=True, **_LOOPS[spec["loops"]])


def _tempfast_kernels() -> dict[str, KernelDesc]:
    return {name: _from_table(spec) for name, spec in TRAFFIC.items()}


KERNELS: dict[str, KernelDesc] = {
    **_tempfast_kernels(),
    # Liger-Kernel's CE (forward with gradients: an online-softmax loop, then a loop writing the
    # gradient over the logits in place) and a plain Triton copy (bench.static.peers).
    "liger_cross_entropy_kernel": KernelDesc(
        (Pass("X_ptr", "read"), Pass("X_ptr", "reread", "HAS_GRADIENTS"),
         Pass("X_ptr", "write", "HAS_GRADIENTS")),
        loops=lambda c: 1 + bool(c.get("HAS_GRADIENTS")),
        trips=lambda launch: _cdiv(int(launch.scalars["n_cols"]),
                                   int(launch.constants["BLOCK_SIZE"])),
        # its first loop zeroes the row of an ignored target (stores only): not run here
        hot=lambda loop: bool(loop.accesses["LDG"])),
    "copy_kernel": KernelDesc((Pass("src_ptr", "read"), Pass("dst_ptr", "write"))),
}


def describe(launch: Launch) -> KernelDesc:
    try:
        return KERNELS[launch.name]
    except KeyError:
        raise KeyError(f"bench.static.model: no traffic description for kernel "
                       f"{launch.name!r}; add its passes to KERNELS") from None


@dataclass(frozen=True)
class LaunchCost:
    """The modelled cost of one launch on one GPU."""

    name: str
    programs: int
    concurrent: int
    read_bytes: int
    write_bytes: int
    reread_bytes: int  # re-reads in total
    reread_hbm_bytes: int  # the share that comes from HBM
    other_bytes: int  # tensors outside the passes (row vectors, partials, weights)
    warp_instructions: int
    t_mem: float
    t_issue: float
    t_chain: float
    t_little: float
    latency: Latency
    t: float

    @property
    def hbm_bytes(self) -> int:
        return self.read_bytes + self.write_bytes + self.reread_hbm_bytes + self.other_bytes

    @property
    def bound(self) -> str:
        terms = {"memory": self.t_mem, "issue": self.t_issue, "latency": self.t_chain,
                 "in-flight": self.t_little}
        return max(terms, key=terms.get)


def _tail_split(launch: Launch, reading: KernelReading) -> int | None:
    """The address after which one program runs the rest (the last-block reduction), or
    ``None`` when every program runs the whole body."""
    desc = describe(launch)
    if desc.tail and launch.constants.get("REDUCE") and reading.sass.tail_exit is not None:
        return reading.sass.tail_exit
    return None


def hot_loops(launch: Launch, reading: KernelReading) -> list[Loop]:
    """The SASS loops every program runs (see :class:`KernelDesc`), checked against the
    description's count."""
    desc = describe(launch)
    expected = desc.loops(launch.constants)
    split = _tail_split(launch, reading)
    pool = reading.sass.outermost() if desc.select == "outer" else reading.sass.loops
    loops = [lp for lp in pool if desc.hot(lp) and (split is None or lp.end <= split)]
    if desc.pick is not None:
        return desc.pick(launch, loops)
    if expected >= 0 and len(loops) != expected:
        raise ValueError(f"{launch.name} ({reading.arch}): {len(loops)} hot loops in the SASS, "
                         f"the model expects {expected}; update its entry in "
                         "bench/static/traffic.py or bench.static.model")
    return loops if expected >= 0 else []


def row_loops(launch: Launch, reading: KernelReading) -> list[Loop]:
    """The hot loops that run (at least one trip) and access the ``N x C`` rows."""
    desc = describe(launch)
    loops = hot_loops(launch, reading)
    trips = desc.trips(launch)
    per_loop = trips if isinstance(trips, list) else [trips] * len(loops)
    running = [lp for lp, n in zip(loops, per_loop, strict=False) if n >= 1]
    return [lp for lp in desc.row_loops(loops) if lp in running]


def _per_program(launch: Launch, reading: KernelReading, body: int, tail: int,
                 per_loop: Callable[[Loop], int]) -> tuple[int, int]:
    """(per program, tail once) of a count that is ``body`` in the straight-line code and
    ``per_loop(loop)`` per trip of each hot loop: every program runs the body once and each
    hot loop ``trips - 1`` more times (a loop of 0 trips: not at all)."""
    desc = describe(launch)
    loops = hot_loops(launch, reading)
    trips = desc.trips(launch)
    trip_list = trips if isinstance(trips, list) else [trips] * len(loops)
    extra = sum(per_loop(lp) * (n - 1) for lp, n in zip(loops, trip_list, strict=False))
    return body + extra, tail


def _body_split(launch: Launch, reading: KernelReading) -> tuple[int, int]:
    split = _tail_split(launch, reading)
    body = reading.sass.instructions if split is None else reading.sass.before_tail
    return body, reading.sass.instructions - body


def warp_instructions(launch: Launch, reading: KernelReading) -> int:
    """Warp-instructions of the launch: every program runs the body once and each hot loop
    ``trips - 1`` more times (a loop of 0 trips: its instructions not at all); a one-program
    tail runs once."""
    body, tail = _body_split(launch, reading)
    per_thread, tail = _per_program(launch, reading, body, tail, lambda lp: lp.instructions)
    return (launch.programs * per_thread + tail) * reading.num_warps


def rounds(launch: Launch, reading: KernelReading) -> int:
    """Rounds of loads one program waits for: the trips of its hot loops that touch rows (the
    work items of a persistent launch), one for a loop-free launch that moves data, none for
    a launch with no work (the repair launch when no wait gave up)."""
    desc = describe(launch)
    loops = hot_loops(launch, reading)
    if not loops:
        return 1 if desc.traffic_if(launch) and desc.select != "outer" else 0
    trips = desc.trips(launch)
    trip_list = trips if isinstance(trips, list) else [trips] * len(loops)
    touching = desc.row_loops(loops)
    return sum(n for lp, n in zip(loops, trip_list, strict=False) if lp in touching)


def in_flight_per_thread(launch: Launch, reading: KernelReading) -> int:
    """Bytes one thread has in flight in a round: the LDGs of the widest hot loop that touches
    rows, or of the whole body for a loop-free kernel."""
    loops = row_loops(launch, reading)
    if loops:
        return max(sum(lp.accesses["LDG"]) for lp in loops) // 8
    return sum(reading.sass.accesses["LDG"]) // 8


@dataclass(frozen=True)
class Latency:
    """The latency terms of one launch on one GPU (see the module docstring)."""

    rounds: int
    round_bytes: float  # HBM bytes per program per round
    round_s: float  # one round's latency, loaded
    issue_s: float  # one program's own instructions, its warps over the 4 schedulers
    syncs_s: float  # its BAR / SHFL round trips
    chain_s: float  # one program, start to end
    waves: int  # chains one after another on an SM
    in_flight_per_sm: int
    in_flight_needed: float
    t_chain: float
    t_little: float


def latency_terms(launch: Launch, reading: KernelReading, gpu: Gpu, hbm_bytes: int,
                  loaded_bytes: int, l2_bytes: int, resident: int) -> Latency:
    desc = describe(launch)
    programs = max(launch.programs, 1)
    sms_used = min(gpu.sms, programs)
    n = rounds(launch, reading)
    round_bytes = hbm_bytes / (programs * n) if n else 0.0
    if round_bytes:
        base = gpu.dram_latency
    elif l2_bytes:
        base = gpu.l2_latency
    else:
        base = gpu.dram_latency if n else 0.0
    round_s = max(base, sms_used * round_bytes / gpu.copy_bw)
    if desc.select == "outer" and launch.constants.get("PHASE") == 0:
        round_s += 2 * gpu.l2_latency  # the arrival's atomic and one poll
    body, _ = _body_split(launch, reading)
    instr, _ = _per_program(launch, reading, body, 0, lambda lp: lp.instructions)
    syncs, _ = _per_program(launch, reading, reading.sass.syncs, 0, lambda lp: lp.syncs)
    per_sched = -(-reading.num_warps // SCHEDULERS)
    issue_s = instr * per_sched / gpu.clock_hz
    syncs_s = syncs * ON_CHIP_LATENCY_CYCLES / gpu.clock_hz
    chain = gpu.dram_latency + n * round_s + issue_s + syncs_s
    waves = -(-programs // (max(resident, 1) * gpu.sms))
    threads = 32 * reading.num_warps
    per_sm = min(max(resident, 1), -(-programs // gpu.sms))
    in_flight = per_sm * threads * in_flight_per_thread(launch, reading)
    t_little = loaded_bytes * gpu.dram_latency / (sms_used * in_flight) if in_flight else 0.0
    return Latency(n, round_bytes, round_s, issue_s, syncs_s, chain, waves, in_flight,
                   gpu.in_flight_needed, waves * chain, t_little)


def launch_cost(launch: Launch, reading: KernelReading, gpu: Gpu) -> LaunchCost:
    desc = describe(launch)
    consts = {**launch.scalars, **launch.constants}  # run-time flags (not specialised) too
    concurrent = min(launch.programs, resident_programs(reading)["programs"] * gpu.sms)
    read = write = reread = reread_hbm = 0
    moves = desc.traffic_if(launch)
    named = {p.tensor for p in desc.passes}
    for p in desc.passes:
        if not p.active(consts, moves) or p.tensor not in launch.tensors:
            continue
        nbytes = launch.tensors[p.tensor].nbytes if moves else 0
        if p.kind == "read":
            read += nbytes
        elif p.kind == "write":
            write += nbytes
        else:
            reread += nbytes
            if p.kind == "reread":
                footprint = nbytes * concurrent / max(launch.programs, 1)
            else:
                footprint = nbytes
            reread_hbm += round(nbytes * (1 - min(1.0, gpu.l2_bytes / max(footprint, 1))))
    other = sum(t.nbytes for name, t in launch.tensors.items()
                if name not in named and not _same_storage(launch, name, named))
    instr = warp_instructions(launch, reading)
    hbm = read + write + reread_hbm + other
    t_mem = hbm / gpu.copy_bw
    t_issue = instr / gpu.issue_rate
    lat = latency_terms(launch, reading, gpu, hbm, read + reread_hbm, reread - reread_hbm,
                        resident_programs(reading)["programs"])
    t = max(t_mem, t_issue, lat.t_chain, lat.t_little) + LAUNCH_S
    return LaunchCost(launch.name, launch.programs, concurrent, read, write, reread, reread_hbm,
                      other, instr, t_mem, t_issue, lat.t_chain, lat.t_little, lat, t)


def give_up_cost(launch: Launch, gpu: Gpu) -> dict | None:
    """What one give-up costs in a cooperative launch (``PHASE == 0``), ``None`` for any other
    launch: the repair launch reads the item's slice of the row tensors again (the ``PHASE ==
    2`` re-read passes, per work item) from HBM, at the copy bandwidth; its write is not extra
    (the slice is written once either way). A launch with ``g`` give-ups adds ``g`` times this
    to the repair launch, which the model otherwise prices as moving nothing."""
    if launch.constants.get("PHASE") != 0 or "n_items" not in launch.scalars:
        return None
    consts = {**launch.scalars, **launch.constants, "PHASE": 2, "repair": 0}
    reread = sum(launch.tensors[p.tensor].nbytes for p in describe(launch).passes
                 if p.kind == "reread_launch" and p.tensor in launch.tensors
                 and p.active(consts))
    per_item = reread / max(int(launch.scalars["n_items"]), 1)
    return {"bytes": per_item, "seconds": per_item / gpu.copy_bw}


def _same_storage(launch: Launch, name: str, named: set[str]) -> bool:
    """Whether tensor argument ``name`` is one of the described tensors passed again (a
    stand-in for an unused pointer, e.g. the logits as the gradient of a loss-only call, or
    the workspace as an absent weight): it moves no bytes of its own."""
    t = launch.tensors[name]
    return any(launch.tensors[n].storage_ptr == t.storage_ptr for n in named
               if n in launch.tensors) or any(
        o.storage_ptr == t.storage_ptr for k, o in launch.tensors.items() if k < name)


# aten ops that launch no GPU kernel (views, allocations, metadata)
NO_KERNEL_OPS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                 "view", "_unsafe_view", "reshape", "alias", "detach", "t", "transpose",
                 "expand", "as_strided", "slice", "select", "unsqueeze", "squeeze", "permute",
                 "lift_fresh", "split", "unbind", "_reshape_alias", "set_", "resize_",
                 "resolve_conj", "resolve_neg")


GEMM_OPS = ("mm", "addmm", "addmm_", "matmul", "bmm", "baddbmm", "linear")


def gemm_time(gemm, gpu: Gpu) -> float:
    """One cuBLAS product (:class:`bench.static.record.Gemm`): its FLOPs at
    :data:`GEMM_EFFICIENCY` of the peak, or its bytes at the copy bandwidth when that is
    longer (a thin product), plus a launch."""
    return max(gemm.flops / gpu.gemm_rate(gemm.itemsize), gemm.bytes / gpu.copy_bw) + LAUNCH_S


def _base(op: str) -> str:
    return op.split(".")[1] if op.count(".") >= 1 else op


def launches_kernel(op: str) -> bool:
    """Whether an aten op name (``aten.sum.default``) runs a kernel on a GPU."""
    return _base(op) not in NO_KERNEL_OPS


def is_gemm(op: str) -> bool:
    """Whether an aten op name is a matrix product (timed by :func:`gemm_time`)."""
    return _base(op) in GEMM_OPS

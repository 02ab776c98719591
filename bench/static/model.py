"""The cost model: HBM traffic, instruction issue and launches, per launch and per case.

For each launch (a recorded ``kernel[grid](...)`` and its compiled binary, see
:mod:`bench.static.compile`):

* **traffic**: the ``N x C`` tensors it reads and writes (bytes = ``numel * itemsize``, the
  pointer arguments named in :data:`KERNELS`), plus every other tensor argument once (row
  vectors, partials: negligible at the headline shapes). A *re-read* in a later loop of the
  same program is served from L2 when the bytes of the rows in flight fit in
  ``L2_FRACTION`` of the L2 (rows in flight = concurrent programs = min(grid, resident
  programs per SM x SMs)); a re-read of what an *earlier launch* read is served from L2 when the
  whole tensor fits. Otherwise it is HBM traffic.
* **issue**: warp-instructions = programs x warps x (SASS body instructions + each hot loop's
  instructions x (trip count - 1)); the trip count is the host integer named in
  :data:`KERNELS`. SASS instructions per element (per thread, the figure a kernel author
  tunes) = warp-instructions x 32 / elements of the case.
* **time**: ``t = max(bytes / copy bandwidth, warp-instructions / issue rate) + launch cost``,
  issue rate = ``ISSUE_PER_CLOCK`` warp-instructions per clock per SM x SMs x clock. A case
  adds its launches and one launch cost for each torch op that computes (a kernel on the GPU:
  the ops that are not views or allocations).
* **floor**: the case's unavoidable bytes (:data:`bench.cases.FLOOR_UNITS`) at the copy
  bandwidth; the predicted fraction of the floor is ``floor time / predicted time``.

Resident programs per SM: the minimum over registers (allocated per warp in units of 256),
shared memory (+1 KiB reserved per block), warps and blocks, against :data:`SM_LIMITS`.

Blind spots: latency-bound small grids and the last partial wave (the model assumes the
machine is full), L2 hit rates between all or nothing, the MUFU (exp2 / rcp) pipe's lower
throughput (a quarter of the ALU rate), dual issue and stalls on dependent instructions, bank
conflicts in the cross-warp reductions, CTA launch rate for grids of 10^5+ tiny programs,
DRAM page effects and the clock under load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .compile import KernelReading, Loop
from .record import Launch

ISSUE_PER_CLOCK = 4  # warp-instructions per clock per SM (4 schedulers, 1 issue each)
LAUNCH_S = 3e-6  # GPU-side cost of one kernel launch in a full stream (assumed)
L2_FRACTION = 0.5  # share of the L2 a streaming re-read can count on


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    l2_bytes: int
    peak_bw: float  # bytes / s
    copy_bw: float  # bytes / s, a device-to-device copy
    clock_hz: float
    copy_note: str

    @property
    def issue_rate(self) -> float:
        return ISSUE_PER_CLOCK * self.sms * self.clock_hz


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
# What each kernel moves. Derived by reading the kernels (kernels/*.py) and Liger's; kept here
# because the kernels do not describe themselves yet. A launch of a kernel not in this table
# fails loudly: whoever adds or renames a kernel adds its entry.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One sweep over an ``N x C`` tensor: ``kind`` is ``read``, ``write``, ``reread`` (a later
    loop of the same program reads it again) or ``reread_launch`` (an earlier launch read it);
    ``when``: the constexpr flag that enables it (``!FLAG``: disables)."""

    tensor: str
    kind: str
    when: str | None = None

    def active(self, constants: dict) -> bool:
        if self.when is None:
            return True
        if self.when.startswith("!"):
            return not constants.get(self.when[1:], False)
        return bool(constants.get(self.when, False))


@dataclass(frozen=True)
class KernelDesc:
    passes: tuple[Pass, ...]
    loops: Callable[[dict], int] = lambda c: 0  # hot loops in the SASS, from the constexprs
    trips: Callable[[Launch], int] = lambda launch: 1  # iterations of each hot loop
    traffic_if: Callable[[Launch], bool] = lambda launch: True  # False: the launch moves no data
    hot: Callable[[Loop], bool] = lambda loop: True  # which SASS loops run (the others: never)


def _arg(name: str) -> Callable[[Launch], int]:
    return lambda launch: int(launch.constants.get(name, launch.scalars.get(name, 1)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _rescale_moves(launch: Launch) -> bool:
    """The rescale masks every load and store of rows whose upstream gradient is exactly 1."""
    g = launch.tensors["g_ptr"]
    return g.values is None or any(v != 1.0 for v in g.values)


_CE_PROB = (Pass("q_ptr", "read", "PROB"),)
KERNELS: dict[str, KernelDesc] = {
    "ce_single_pass_kernel": KernelDesc(
        (Pass("x_ptr", "read"), *_CE_PROB, Pass("g_ptr", "write", "COMPUTE_GRAD"))),
    "ce_stream_kernel": KernelDesc(
        (Pass("x_ptr", "read"), *_CE_PROB, Pass("x_ptr", "reread", "COMPUTE_GRAD"),
         Pass("q_ptr", "reread", "PROB"), Pass("g_ptr", "write", "COMPUTE_GRAD")),
        loops=lambda c: 1 + bool(c.get("COMPUTE_GRAD")), trips=_arg("n_chunks")),
    "ce_split_stats_kernel": KernelDesc(
        (Pass("x_ptr", "read"), *_CE_PROB), loops=lambda c: 1, trips=_arg("chunks_per_split")),
    "ce_split_finish_kernel": KernelDesc(
        (Pass("x_ptr", "reread_launch", "COMPUTE_GRAD"),
         Pass("q_ptr", "reread_launch", "PROB"), Pass("g_ptr", "write", "COMPUTE_GRAD")),
        loops=lambda c: int(bool(c.get("COMPUTE_GRAD"))), trips=_arg("chunks_per_split")),
    "softmax_single_pass_kernel": KernelDesc((Pass("x_ptr", "read"), Pass("y_ptr", "write"))),
    "softmax_stream_kernel": KernelDesc(
        (Pass("x_ptr", "read"), Pass("x_ptr", "reread"), Pass("y_ptr", "write")),
        loops=lambda c: 2, trips=_arg("n_chunks")),
    "softmax_split_stats_kernel": KernelDesc(
        (Pass("x_ptr", "read"),), loops=lambda c: 1, trips=_arg("chunks_per_split")),
    "softmax_split_finish_kernel": KernelDesc(
        (Pass("x_ptr", "reread_launch"), Pass("y_ptr", "write")),
        loops=lambda c: 1, trips=_arg("chunks_per_split")),
    "softmax_bwd_single_pass_kernel": KernelDesc(
        (Pass("y_ptr", "read"), Pass("dy_ptr", "read"), Pass("x_ptr", "read", "COMPUTE_DT"),
         Pass("dx_ptr", "write"))),
    "softmax_bwd_stream_kernel": KernelDesc(
        (Pass("y_ptr", "read"), Pass("dy_ptr", "read"), Pass("y_ptr", "reread", "!LOG"),
         Pass("dy_ptr", "reread"), Pass("x_ptr", "read", "COMPUTE_DT"),
         Pass("dx_ptr", "write")),
        loops=lambda c: 2, trips=_arg("n_chunks")),
    "softmax_bwd_split_stats_kernel": KernelDesc(
        (Pass("y_ptr", "read", "!LOG"), Pass("dy_ptr", "read")), loops=lambda c: 1,
        trips=_arg("chunks_per_split")),
    "softmax_bwd_split_finish_kernel": KernelDesc(
        (Pass("y_ptr", "read", "LOG"), Pass("y_ptr", "reread_launch", "!LOG"),
         Pass("dy_ptr", "reread_launch"),
         Pass("x_ptr", "read", "COMPUTE_DT"), Pass("dx_ptr", "write")),
        loops=lambda c: 1, trips=_arg("chunks_per_split")),
    "rescale_rows_kernel": KernelDesc(
        (Pass("buf_ptr", "read"), Pass("buf_ptr", "write")), traffic_if=_rescale_moves),
    # Liger-Kernel's CE (forward with gradients: an online-softmax loop, then a loop writing the
    # gradient over the logits in place) and a plain Triton copy (bench.static.calibrate).
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
    t: float

    @property
    def hbm_bytes(self) -> int:
        return self.read_bytes + self.write_bytes + self.reread_hbm_bytes + self.other_bytes

    @property
    def bound(self) -> str:
        return "issue" if self.t_issue > self.t_mem else "memory"


def hot_loops(launch: Launch, reading: KernelReading) -> list[Loop]:
    """The innermost SASS loops that run, checked against the description's count."""
    desc = describe(launch)
    expected = desc.loops(launch.constants)
    loops = [lp for lp in reading.sass.loops if desc.hot(lp)]
    if len(loops) != expected:
        raise ValueError(f"{launch.name} ({reading.arch}): {len(loops)} hot loops in the SASS, "
                         f"the model expects {expected}; update bench.static.model.KERNELS")
    return loops


def warp_instructions(launch: Launch, reading: KernelReading) -> int:
    desc = describe(launch)
    loops = hot_loops(launch, reading)
    trips = max(desc.trips(launch), 1)
    per_thread = reading.sass.instructions + sum(lp.instructions for lp in loops) * (trips - 1)
    return launch.programs * reading.num_warps * per_thread


def launch_cost(launch: Launch, reading: KernelReading, gpu: Gpu) -> LaunchCost:
    desc = describe(launch)
    consts = launch.constants
    concurrent = min(launch.programs, resident_programs(reading)["programs"] * gpu.sms)
    read = write = reread = reread_hbm = 0
    named = set()
    moves = desc.traffic_if(launch)
    for p in desc.passes:
        if not p.active(consts) or p.tensor not in launch.tensors:
            continue
        named.add(p.tensor)
        nbytes = launch.tensors[p.tensor].nbytes if moves else 0
        if p.kind == "read":
            read += nbytes
        elif p.kind == "write":
            write += nbytes
        else:
            reread += nbytes
            if p.kind == "reread":
                in_flight = nbytes * concurrent / max(launch.programs, 1)
            else:
                in_flight = nbytes
            if in_flight > L2_FRACTION * gpu.l2_bytes:
                reread_hbm += nbytes
    other = sum(t.nbytes for name, t in launch.tensors.items() if name not in named)
    instr = warp_instructions(launch, reading)
    t_mem = (read + write + reread_hbm + other) / gpu.copy_bw
    t_issue = instr / gpu.issue_rate
    return LaunchCost(launch.name, launch.programs, concurrent, read, write, reread, reread_hbm,
                      other, instr, t_mem, t_issue, max(t_mem, t_issue) + LAUNCH_S)


# aten ops that launch no GPU kernel (views, allocations, metadata)
NO_KERNEL_OPS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                 "view", "_unsafe_view", "reshape", "alias", "detach", "t", "transpose",
                 "expand", "as_strided", "slice", "select", "unsqueeze", "squeeze", "permute",
                 "lift_fresh", "split", "unbind", "_reshape_alias", "set_", "resize_",
                 "resolve_conj", "resolve_neg")


def launches_kernel(op: str) -> bool:
    """Whether an aten op name (``aten.sum.default``) runs a kernel on a GPU."""
    base = op.split(".")[1] if op.count(".") >= 1 else op
    return base not in NO_KERNEL_OPS

"""Budgets CI asserts on the static model's readings: a change that makes things worse fails.

Each budget is the issue-12 target (and, from issue 22, the memory ordering of every
cooperative wait: :func:`ordering_violations`), met by the kernels of that issue (the numbers are in
``bench/results/static-2026-12-01-issue12.md``). The checkers take a launch and its reading
(or a report's case) and return the violations as one-line strings, so that a test can also
show that a deliberately worse kernel is caught.
"""

from __future__ import annotations

from .compile import KernelReading, compile_binary
from .model import describe, hot_loops, row_loops
from .ordering import wait_violations
from .record import Launch

# No spills in any configuration the heuristics choose (issue 11: up to 216 bytes, a 32-warp
# single-pass kernel capped at 64 registers).
MAX_SPILL_BYTES = 0
# Kernels allowed to access their rows with narrower than 128-bit accesses although
# C * itemsize is a multiple of 16. Issue 11 allowed the C = 1000 single-pass kernels; the VEC
# hints (kernels/common.py) gave them 128-bit accesses: none.
NARROW_ROWS_ALLOWED: frozenset = frozenset()
# Triton launches per cross-entropy forward + backward at an upstream gradient of 1: the prep
# kernel, the cross-entropy kernel, on the slices path its repair launch (issue 22: it finishes
# the work items whose bounded wait gave up, none normally, and moves nothing then), and the
# backward's gradient apply, of which only one moves the N x C data (a launch is "large" above
# LARGE_LAUNCH_FRACTION of the case's floor bytes).
MAX_CE_LAUNCHES = 4
MAX_CE_LARGE_LAUNCHES = 1
LARGE_LAUNCH_FRACTION = 0.01
# Torch ops per CE forward + backward call (forward + backward) around the Triton launches on
# CUDA tensors (host-memory value checks excluded) and on the CPU path (64 x 10 fp32). Issue 11:
# 22 + 13 (23 + 18 with a learnable T) and 101 + 14; target (issue 12): 10 each.
MAX_CE_TORCH_OPS_GPU = 10
MAX_CE_TORCH_OPS_GPU_LEARNABLE_T = 10
MAX_CE_TORCH_OPS_CPU = 10
# Torch ops per fused linear head forward + backward (bf16, N = 8192, H = 4096, any C) on CUDA
# tensors. Issue 24: 87 + 24 at C = 32000 and 563 + 24 at C = 262144 (a chunk of 2^26 logits:
# ops grew with C); with chunks of a quarter of the weight gradient and no per-chunk op besides
# the GEMMs: 37 + 9 at every C. The target, 30, is missed (bench/README.md says why).
# fp32 (chunks of H / 4 rows, the weight gradient scaled in place): 53 + 16 at C >= 128256.
MAX_LINEAR_TORCH_OPS_GPU = 46


def spill_violations(launch: Launch, reading: KernelReading,
                     limit: int = MAX_SPILL_BYTES) -> list[str]:
    spilled = max(reading.spill_stores, reading.spill_loads)
    if spilled > limit:
        return [f"{launch.name} {reading.arch} {_consts(launch)}: {spilled} bytes of spills "
                f"(budget {limit})"]
    return []


def _row_tensors(launch: Launch) -> list[str]:
    desc = describe(launch)
    names = []
    for p in desc.passes:
        t = launch.tensors.get(p.tensor)
        if p.active(launch.constants) and t is not None and len(t.shape) >= 1 and \
                t.numel > 1 and p.tensor not in names:
            names.append(p.tensor)
    return names


def row_width(launch: Launch) -> tuple[int, int] | None:
    """``(C, itemsize)`` of the launch's ``N x C`` tensors (the first of its passes)."""
    for name in _row_tensors(launch):
        t = launch.tensors[name]
        if len(t.shape) == 2:
            return t.shape[1], t.itemsize
        if len(t.shape) == 1:
            return t.shape[0], t.itemsize
    return None


def narrow_access_violations(launch: Launch, reading: KernelReading) -> list[str]:
    """128-bit global accesses to the rows when ``C * itemsize`` is a multiple of 16: every
    LDG / STG in an inner hot loop is 128 bits; a kernel without one (rows on chip) or with a
    work-item loop (slices) issues at least as many 128-bit accesses, in that loop or in the
    body every program runs, as its row tensors need per thread (bytes per program or per
    item / threads / 16)."""
    width = row_width(launch)
    if width is None or (width[0] * width[1]) % 16:
        return []
    threads = reading.num_warps * 32
    loops = row_loops(launch, reading)
    if hot_loops(launch, reading) and not loops:
        return []  # its row loops do not run (the gradient apply at an upstream gradient of 1)
    where = f"{launch.name} {reading.arch} C={width[0]} {_consts(launch)}"
    if loops and describe(launch).select == "inner":
        narrow = sorted({w for lp in loops for k in ("LDG", "STG") for w in lp.accesses[k]
                         if w < 128})
        return [f"{where}: {narrow}-bit global accesses in a hot loop"] if narrow else []
    units = max(launch.programs, 1)
    if loops:
        units = int(launch.constants.get("n_items", launch.scalars.get("n_items", units)))
        accesses = loops[0].accesses
    else:
        accesses = reading.sass.accesses
    needed = 0
    for name in _row_tensors(launch):
        per_thread = launch.tensors[name].nbytes / max(units, 1) / threads
        if per_thread >= 16:
            needed += int(per_thread // 16)
    wide = sum(w == 128 for k in ("LDG", "STG") for w in accesses[k])
    if wide < needed:
        return [f"{where}: {wide} 128-bit global accesses, the rows need {needed}"]
    return []


def _consts(launch: Launch) -> str:
    return ",".join(f"{k}={v}" for k, v in launch.constants.items()
                    if k.isupper() and v not in (False, None))


def case_violations(case: dict) -> list[str]:
    """Launch and torch-op budgets of one case of the static report."""
    out = []
    if case["op"] in ("ce_fwd_bwd", "ce_learnable_t_fwd_bwd"):
        n = case["triton_launches"]["forward"] + case["triton_launches"]["backward"]
        if n > MAX_CE_LAUNCHES:
            out.append(f"{case['id']}: {n} Triton launches per forward + backward "
                       f"(budget {MAX_CE_LAUNCHES})")
        large = sum(e["count"] for e in case.get("launches", ())
                    if e["gpus"]["H100"]["hbm_bytes"] > LARGE_LAUNCH_FRACTION
                    * case["floor_bytes"])
        if large > MAX_CE_LARGE_LAUNCHES:
            out.append(f"{case['id']}: {large} launches move the N x C data (budget "
                       f"{MAX_CE_LARGE_LAUNCHES})")
        ops = case["host"]["gpu_call_ops"]
        limit = MAX_CE_TORCH_OPS_GPU_LEARNABLE_T if "learnable" in case["op"] \
            else MAX_CE_TORCH_OPS_GPU
        if ops["forward"] + ops["backward"] > limit:
            out.append(f"{case['id']}: {ops['forward']} + {ops['backward']} torch ops around "
                       f"the launches (budget {limit})")
    if case["op"] == "linear_ce_fwd_bwd" and case["dtype"] == "bf16":
        ops = case["host"]["gpu_call_ops"]
        if ops["forward"] + ops["backward"] > MAX_LINEAR_TORCH_OPS_GPU:
            out.append(f"{case['id']}: {ops['forward']} + {ops['backward']} torch ops per "
                       f"linear head (budget {MAX_LINEAR_TORCH_OPS_GPU})")
    return out


def waits_in(launch: Launch) -> int:
    """Spin-wait loops the launch's kernel must show: one in a cooperative slices launch."""
    return 1 if launch.constants.get("PHASE") == 0 and "slices" in launch.name else 0


def ordering_violations(launch: Launch, arch: int) -> list[str]:
    """The memory ordering of a waiting launch's wait, read from its PTX
    (:mod:`bench.static.ordering`); nothing to check for a launch that does not wait."""
    if not waits_in(launch):
        return []
    ptx = compile_binary(launch, arch).asm["ptx"]
    return wait_violations(ptx, f"{launch.name} sm_{arch} {_consts(launch)}", waits_in(launch))


def cpu_path_violations(cpu_ops: dict) -> list[str]:
    ops = cpu_ops["tempfast"]
    n = ops["forward"] + ops["backward"]
    return [f"CPU path: {n} torch ops per CE forward + backward (budget "
            f"{MAX_CE_TORCH_OPS_CPU})"] if n > MAX_CE_TORCH_OPS_CPU else []


def check(workloads=None, jobs: int = 1) -> dict:
    """Record and read the headline cases (or ``workloads``) and check every budget: returns
    ``{"violations": [...], "measured": {...}}`` (today's numbers, to set or tighten them)."""
    from . import analysis, host
    from .compile import ARCHES
    from .workloads import headline_workloads, record

    workloads = workloads if workloads is not None else headline_workloads()
    recordings = [record(w) for w in workloads]
    readings = analysis.read_all([x for r in recordings for x in r.launches], jobs=jobs)
    violations: list[str] = []
    spills: dict[str, int] = {}
    narrow: set[tuple[str, int]] = set()
    waits: dict[str, int] = {}
    ordered: set[tuple] = set()
    for rec in recordings:
        for launch in rec.launches:
            for arch in ARCHES:
                if waits_in(launch) and (launch.compile_key(), arch) not in ordered:
                    ordered.add((launch.compile_key(), arch))
                    found = ordering_violations(launch, arch)
                    violations += found
                    key = f"{launch.name} sm_{arch}"
                    waits[key] = waits.get(key, 0) + 1

                reading = readings[(launch.compile_key(), arch)]
                violations += spill_violations(launch, reading)
                key = f"{launch.name} {reading.arch}"
                spills[key] = max(spills.get(key, 0), reading.spill_stores, reading.spill_loads)
                found = narrow_access_violations(launch, reading)
                width = row_width(launch)
                if found:
                    narrow.add((launch.name, width[0]))
                    if (launch.name, width[0]) not in NARROW_ROWS_ALLOWED:
                        violations += found
        case = analysis.case_entry(rec.workload, rec.launches, readings,
                                   analysis.host_counts(rec))
        violations += case_violations(case)
    cpu_ops = host.cpu_path_op_counts()
    violations += cpu_path_violations(cpu_ops)
    measured = {"spill_bytes": spills, "narrow_rows": sorted(narrow), "cpu_path_ops": cpu_ops,
                "waits_checked": waits,
                "ce_launches_and_ops": {
                    rec.workload.id: {"launches": len(rec.launches), "ops": rec.ops,
                                      "host_checks": rec.host_check_ops}
                    for rec in recordings if rec.workload.op.startswith("ce_")}}
    return {"violations": sorted(set(violations)), "measured": measured}


if __name__ == "__main__":
    import json
    import sys

    result = check(jobs=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    print(json.dumps(result, indent=1, default=str))
    sys.exit(1 if result["violations"] else 0)

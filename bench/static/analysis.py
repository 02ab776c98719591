"""Run the static model over the headline cases: record, compile, read, model, aggregate.

Every number comes from the tool: launches recorded from the public ops, binaries compiled
with the JIT's specialisation, readings from ptxas / cuobjdump / nvdisasm, the cost model of
:mod:`bench.static.model`, op counts from :class:`bench.static.host.OpCounter`.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import torch

from . import host, model, peers
from .compile import ARCHES, KernelReading, read_launch
from .record import Launch, triton_version
from .workloads import (
    Workload,
    contrastive_workloads,
    headline_workloads,
    peak_rss_bytes,
    record,
)

MODEL_ARCH = 90  # the time model uses the sm_90a binaries (H100 / H200)


def _read(args: tuple[Launch, int]) -> tuple[tuple, int, KernelReading]:
    launch, arch = args
    return launch.compile_key(), arch, read_launch(launch, arch)


def read_all(launches: Iterable[Launch], arches: Iterable[int] = ARCHES,
             jobs: int = 1) -> dict[tuple[tuple, int], KernelReading]:
    """Compile and read each distinct launch once per arch (``jobs`` processes)."""
    unique: dict[tuple, Launch] = {}
    for launch in launches:
        unique.setdefault(launch.compile_key(), launch)
    work = [(launch, arch) for launch in unique.values() for arch in arches]
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_read, work))
    else:
        results = [_read(w) for w in work]
    return {(key, arch): reading for key, arch, reading in results}


def _group(launches: list[Launch]) -> list[tuple[Launch, int]]:
    """Identical launches (same binary, grid and tensor shapes) with their count."""
    groups: dict[tuple, list] = {}
    for launch in launches:
        shapes = tuple((k, t.shape) for k, t in launch.tensors.items())
        key = (launch.phase, launch.compile_key(), launch.grid, shapes)
        groups.setdefault(key, [launch, 0])[1] += 1
    return [(launch, n) for launch, n in groups.values()]


def _access_summary(launch: Launch, reading: KernelReading) -> dict:
    loops = model.hot_loops(launch, reading)
    if loops:
        ldg = sorted({w for lp in loops for w in lp.accesses["LDG"]})
        stg = sorted({w for lp in loops for w in lp.accesses["STG"]})
    else:
        ldg = sorted(set(reading.sass.accesses["LDG"]))
        stg = sorted(set(reading.sass.accesses["STG"]))
    return {"where": "hot loops" if loops else "kernel", "LDG": ldg, "STG": stg}


def launch_entry(launch: Launch, count: int, readings: dict, elements: int) -> dict:
    """One (grouped) launch: its binaries on every arch and its cost on every GPU."""
    key = launch.compile_key()
    entry: dict = {"kernel": launch.name, "phase": launch.phase, "count": count,
                   "grid": list(launch.grid), "programs": launch.programs,
                   "num_warps": launch.num_warps, "constants": _jsonable(launch.constants),
                   "signature": dict(launch.signature),
                   "attrs": {str(k): v for k, v in launch.attrs.items() if v}, "arches": {},
                   "gpus": {}}
    for arch in ARCHES:
        r = readings[(key, arch)]
        occ = model.resident_programs(r)
        instr_per_program = r.sass.instructions
        entry["arches"][r.arch] = {
            "registers": r.registers, "spill_stores": r.spill_stores,
            "spill_loads": r.spill_loads, "stack": r.stack, "shared": r.shared,
            "resident_programs": occ["programs"], "occupancy_limit": occ["limit"],
            "accesses": _access_summary(launch, r), "sass_instructions": instr_per_program,
            "hot_loops": [{"instructions": lp.instructions, **lp.accesses}
                          for lp in model.hot_loops(launch, r)],
            "local_accesses": r.sass.local_accesses, "mufu": r.sass.mufu, "mma": r.sass.mma,
        }
        if arch == MODEL_ARCH:
            warp_instr = model.warp_instructions(launch, r)
            entry["warp_instructions"] = warp_instr * count
            entry["instructions_per_element"] = warp_instr * count * 32 / max(elements, 1)
            for gpu in model.GPUS:
                cost = model.launch_cost(launch, r, gpu)
                entry["gpus"][gpu.name] = {**asdict(cost), "hbm_bytes": cost.hbm_bytes * count,
                                           "t": cost.t * count, "t_mem": cost.t_mem * count,
                                           "t_issue": cost.t_issue * count,
                                           "bound": cost.bound,
                                           "give_up": model.give_up_cost(launch, gpu)}
    return entry


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (bool, int, float, str)) or v is None else repr(v))
            for k, v in d.items()}


def side_kernels(ops_by_name: dict[str, int]) -> int:
    """Torch ops that run a GPU kernel of their own (matrix products apart: timed as GEMMs)."""
    return sum(n for op, n in ops_by_name.items()
               if model.launches_kernel(op) and not model.is_gemm(op))


def case_entry(w: Workload, launches: list[Launch], readings: dict, ops: dict | None = None,
               label: str = "tempfast", extra_passes: int = 0) -> dict:
    """A case: its launches, host counts and the predicted time per GPU.

    ``extra_passes``: elementwise torch passes over ``N x C`` around the launches (each reads
    and writes ``N C e`` bytes at the copy bandwidth: Liger's ``x / T`` and its backward)."""
    elements = w.rows * w.classes
    entries = [launch_entry(launch, n, readings, elements) for launch, n in _group(launches)]
    case = {"id": w.id, "provider": label, "op": w.op, "dtype": w.dtype, "rows": w.rows,
            "classes": w.classes, "floor_bytes": w.floor_bytes, "launches": entries,
            "triton_launches": {p: sum(e["count"] for e in entries if e["phase"] == p)
                                for p in ("forward", "backward")}}
    if ops is not None:
        case["host"] = {k: v for k, v in ops.items() if k != "gemms"}
    side = sum(ops.get("side_kernels", {}).values()) if ops else 0
    gemms = ops.get("gemms", []) if ops else []
    side_bytes = sum(ops.get("side_bytes", {}).values()) if ops else 0
    if gemms:
        case["gemms"] = _gemm_summary(gemms)
    case["predicted"] = {}
    for gpu in model.GPUS:
        t_launches = sum(e["gpus"][gpu.name]["t"] for e in entries)
        extra_bytes = extra_passes * 2 * elements * w.itemsize
        t_extra = extra_bytes / gpu.copy_bw + extra_passes * model.LAUNCH_S
        t_side = side * model.LAUNCH_S + side_bytes / gpu.copy_bw
        t_gemm = sum(model.gemm_time(g, gpu) for g in gemms)
        t = t_launches + t_extra + t_side + t_gemm
        floor = w.floor_bytes / gpu.copy_bw
        entry = {
            "t": t, "t_triton": t_launches, "t_side_kernels": t_side, "t_extra_passes": t_extra,
            "t_gemm": t_gemm, "side_bytes": side_bytes,
            "hbm_bytes": sum(e["gpus"][gpu.name]["hbm_bytes"] for e in entries) + extra_bytes,
            "floor_t": floor, "fraction_of_floor": floor / t if t else None,
            "bound": _bound(entries, gpu.name)}
        head = head_floor(w, gpu)
        if head is not None:  # the GEMM floor of a head; the CE part against its own floor
            entry.update(head_floor_t=head, fraction_of_head_floor=head / t,
                         ce_part_fraction=floor / (t - t_gemm) if t > t_gemm else None)
        case["predicted"][gpu.name] = entry
    case["instructions_per_element"] = sum(e["instructions_per_element"] for e in entries)
    return case


def head_flops_and_bytes(w: Workload) -> tuple[int, int] | None:
    """The floor of a head with matrix products: its unavoidable FLOPs and bytes, or None.

    * the linear head (``N x H`` hidden, ``C x H`` weight): the logits and the two gradient
      products, ``6 N H C``; the inputs read once and their gradients written once;
    * CLIP's loss (``B x D`` features ``a``, ``b``): the similarities made once and shared by
      both directions, and the two gradient products, ``6 B^2 D``; bytes as above;
    * NT-Xent (``2B x D`` views ``z``): ``s = z z^T`` and ``dz = (ds + ds^T) z``,
      ``4 (2B)^2 D``; ``z`` read, ``dz`` written.
    """
    e = w.itemsize
    if w.op == "linear_ce_fwd_bwd":
        return (6 * w.rows * w.hidden * w.classes,
                2 * (w.rows * w.hidden + w.classes * w.hidden) * e)
    if w.op == "contrastive_fwd_bwd":
        return 6 * w.rows * w.rows * w.hidden, 4 * w.rows * w.hidden * e
    if w.op == "nt_xent_fwd_bwd":
        return 4 * w.classes * w.classes * w.hidden, 2 * w.classes * w.hidden * e
    return None


def head_floor(w: Workload, gpu: model.Gpu) -> float | None:
    """:func:`head_flops_and_bytes` in seconds: FLOPs at the GEMM rate plus bytes at the copy
    bandwidth."""
    fb = head_flops_and_bytes(w)
    if fb is None:
        return None
    flops, nbytes = fb
    return flops / gpu.gemm_rate(w.itemsize) + nbytes / gpu.copy_bw


def _gemm_summary(gemms: list) -> dict:
    """The logged matrix products: count and FLOPs per phase, and the distinct shapes."""
    out: dict = {"count": {}, "flops": {}, "shapes": {}}
    for g in gemms:
        out["count"][g.phase] = out["count"].get(g.phase, 0) + 1
        out["flops"][g.phase] = out["flops"].get(g.phase, 0) + g.flops
        key = f"{g.m}x{g.k} @ {g.k}x{g.n}"
        out["shapes"][key] = out["shapes"].get(key, 0) + 1
    return out


def _bound(entries: list[dict], gpu: str) -> str:
    if not entries:
        return "-"
    top = max(entries, key=lambda e: e["gpus"][gpu]["t"])
    return f"{top['gpus'][gpu]['bound']} ({top['kernel']})"


def host_counts(rec) -> dict:
    """Aten ops per phase as recorded around the Triton launches, with the host-memory value
    checks (which a GPU call skips) apart, and the ops that would run a GPU kernel."""
    out = {"aten_ops": dict(rec.ops), "host_value_check_ops": dict(rec.host_check_ops),
           "custom_ops": dict(rec.custom_ops), "side_kernels": {}, "gpu_call_ops": {},
           "gemms": rec.gemms, "side_bytes": rec.side_bytes}
    for phase in ("forward", "backward"):
        out["gpu_call_ops"][phase] = rec.ops[phase] - rec.host_check_ops[phase]
        out["side_kernels"][phase] = side_kernels(rec.ops_by_name[phase])
    out["ops_by_name"] = rec.ops_by_name
    return out


def run(workloads: list[Workload] | None = None, jobs: int = 1, with_host_time: bool = True,
        with_peers: bool = True) -> dict:
    """The whole report as a JSON-able dict."""
    workloads = workloads if workloads is not None else \
        headline_workloads() + contrastive_workloads()
    recordings = [record(w) for w in workloads]
    peer_launches: dict[str, list] = {}
    if with_peers:
        peer_workloads = [w for w in workloads if w.op == "ce_fwd_bwd"]
        for w in peer_workloads:
            peer_launches[("copy", w.id)] = (w, peers.record_copy(w.rows, w.classes, w.dtype))
            if peers.liger_available():
                peer_launches[("liger", w.id)] = (w, peers.record_liger(w.rows, w.classes,
                                                                        w.dtype))
    everything = [launch for rec in recordings for launch in rec.launches]
    everything += [launch for _, ls in peer_launches.values() for launch in ls]
    readings = read_all(everything, jobs=jobs)
    cases = [case_entry(rec.workload, rec.launches, readings, host_counts(rec))
             for rec in recordings]
    peer_cases = []
    for (kind, _), (w, launches) in peer_launches.items():
        if kind == "copy":
            copy_w = Workload("copy", w.dtype, w.rows, w.classes)
            peer_cases.append(case_entry(copy_w, launches, readings, label="copy"))
        else:
            peer_cases.append(case_entry(w, launches, readings, label="liger_t1"))
            peer_cases.append(case_entry(w, launches, readings, label="liger_x_div_t",
                                         extra_passes=2))
    report = {"meta": meta(), "cases": cases, "peers": peer_cases,
              "published": {"liger_h100_bf16_8192_ms": peers.PUBLISHED_LIGER_H100_BF16_MS}}
    if with_host_time:
        report["host"] = {"time_s": host.host_time(), "cpu_path_ops": host.cpu_path_op_counts(),
                          "shape": [64, 10], "threads": 1}
    report["meta"]["peak_rss_bytes"] = peak_rss_bytes()
    return report


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def meta() -> dict:
    import tempfast

    return {
        "date": datetime.date.today().isoformat(),
        "commit": _git_commit(),
        "tempfast": tempfast.__version__, "triton": triton_version(), "torch": torch.__version__,
        "liger_kernel": peers.liger_version(), "python": platform.python_version(),
        "arches": [f"sm_{a}a" if a >= 90 else f"sm_{a}" for a in ARCHES],
        "gpus": [asdict(g) | {"issue_rate": g.issue_rate} for g in model.GPUS],
        "assumptions": {
            "issue_per_clock_per_sm": model.ISSUE_PER_CLOCK, "launch_s": model.LAUNCH_S,
            "l2_rereads": "hit share min(1, L2 / footprint)",
            "latency_cycles": {"dram": model.DRAM_LATENCY_CYCLES, "l2": model.L2_LATENCY_CYCLES,
                               "on_chip": model.ON_CHIP_LATENCY_CYCLES},
            "latency_source": model.LATENCY_SOURCE,
            "num_sms_seen_by_heuristics": 132,
            "time": "max(hbm bytes / copy bw, warp-instructions / issue rate, t_little, "
                    "t_chain) + launches",
        },
    }

"""Render the static model's JSON as markdown tables (see :mod:`bench.static`)."""

from __future__ import annotations

from .model import (
    DRAM_LATENCY_CYCLES,
    GEMM_SOURCE,
    GPUS,
    ISSUE_PER_CLOCK,
    L2_LATENCY_CYCLES,
    LATENCY_SOURCE,
    LAUNCH_S,
    ON_CHIP_LATENCY_CYCLES,
)

BLIND_SPOTS = (
    "the chain of one program takes every round's loads as waited for before its compute "
    "(no prefetch of the next trip) and programs on one SM as overlapping perfectly; loaded "
    "latency is the unloaded one or the queue of one round from every SM, nothing between",
    "L2 bandwidth (an L2 hit costs its latency only) and the L2's replacement policy (a "
    "re-read hits in the share L2 / footprint, what the best policy would keep)",
    "MUFU (exp2, rcp, lg2) issues at a quarter of the ALU rate; dual issue, dependency stalls "
    "other than BAR / SHFL round trips and shared-memory bank conflicts are not modelled: "
    "every SASS instruction costs one issue slot",
    "CTA launch rate: grids of 10^5+ tiny programs cost more than their instructions",
    "the cooperative slices launch's waits: a work item pays two L2 round trips (its arrival "
    "and one poll); a wait for a slower program of the row is not modelled",
    "host time is not GPU time: torch ops around a launch are counted, and each op that "
    "computes is charged one launch cost; Python overhead is measured separately on the CPU",
    "a matrix product is timed from its shape alone (its FLOPs at the GEMM rate, or its "
    "bytes when longer), with no overlap with the kernels around it; torch ops that compute "
    "around the launches move their arguments' and results' bytes at the copy bandwidth",
)
HEAD_OPS = ("linear_ce_fwd_bwd", "contrastive_fwd_bwd", "nt_xent_fwd_bwd")
HEAD_RATIO_GOAL = 1.15  # issue 24: the linear head within 1.15x of its GEMM floor
HEAD_OPS_GOAL = 30  # issue 24: torch ops per forward + backward of the head
TOKEN_FLOOR_GOAL = 0.90  # issue 25: token log-probabilities at >= 90% of their floor
CAPPED_RATIO_GOAL = 1.05  # issue 25: softcap / z-loss within 5% of the plain CE's time
LM_CLASSES = (32000, 128256, 151936, 262144)


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _widths(acc: dict) -> str:
    ldg = "/".join(str(w) for w in acc["LDG"]) or "-"
    stg = "/".join(str(w) for w in acc["STG"]) or "-"
    return f"{ldg} : {stg}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _main_launch(case: dict, gpu: str = "H100") -> dict:
    return max(case["launches"], key=lambda e: e["gpus"][gpu]["t"])


def _kernels(case: dict) -> str:
    counts: dict[str, int] = {}
    for e in case["launches"]:
        name = e["kernel"].removesuffix("_kernel")
        counts[name] = counts.get(name, 0) + e["count"]
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items())


def headline_rows(cases: list[dict]) -> list[list[str]]:
    rows = []
    for c in cases:
        if not c["launches"]:  # PyTorch ops only (NT-Xent): in the heads' table
            continue
        main = _main_launch(c)
        a = main["arches"]["sm_90a"]
        spills = max(e["arches"]["sm_90a"]["spill_stores"] for e in c["launches"])
        host = c.get("host", {})
        ops = host.get("gpu_call_ops", {})
        side = host.get("side_kernels", {})
        h100, h200 = c["predicted"]["H100"], c["predicted"]["H200"]
        if c["op"] in HEAD_OPS:  # the CE part against its floor (the heads' own table: GEMMs)
            h100 = {**h100, "fraction_of_floor": h100["ce_part_fraction"]}
            h200 = {**h200, "fraction_of_floor": h200["ce_part_fraction"]}
        rows.append([
            c["op"], c["dtype"], c["classes"], _kernels(c),
            f"{c['triton_launches']['forward']}/{c['triton_launches']['backward']}",
            a["registers"], spills, a["resident_programs"], _widths(a["accesses"]),
            f"{c['instructions_per_element']:.1f}", f"{h100['hbm_bytes'] / 1e9:.2f}",
            _ms(h100["t"]), _pct(h100["fraction_of_floor"]), _ms(h200["t"]),
            _pct(h200["fraction_of_floor"]), h100["bound"].split(" ")[0],
            f"{ops.get('forward', '-')}/{ops.get('backward', '-')}" if ops else "-",
            f"{side.get('forward', '-')}/{side.get('backward', '-')}" if side else "-",
        ])
    return rows


HEADLINE_HEADERS = ["op", "dtype", "C", "launches (kernels)", "Triton fwd/bwd",
                    "regs", "spill B", "progs/SM", "LDG:STG bits", "instr/elem", "HBM GB",
                    "H100 ms", "H100 floor", "H200 ms", "H200 floor", "bound",
                    "torch ops fwd/bwd", "side kernels fwd/bwd"]


def head_rows(cases: list[dict]) -> list[list[str]]:
    """The heads with matrix products: their time against the GEMM floor."""
    rows = []
    for c in cases:
        if c["op"] not in HEAD_OPS:
            continue
        g = c["gemms"]
        ops = c["host"]["gpu_call_ops"]
        cells = [c["op"].removesuffix("_fwd_bwd"), c["dtype"], c["rows"], c["classes"],
                 c["id"].split("-H")[1].split("-")[0],
                 f"{g['count'].get('forward', 0)}/{g['count'].get('backward', 0)}",
                 f"{sum(g['flops'].values()) / 1e12:.2f}",
                 f"{ops['forward']}/{ops['backward']}"]
        for gpu in GPUS:
            p = c["predicted"][gpu.name]
            cells += [_ms(p["t"]), _ms(p["t_gemm"]), _ms(p["head_floor_t"]),
                      f"{p['t'] / p['head_floor_t']:.2f}x", _pct(p["ce_part_fraction"])]
        rows.append(cells)
    return rows


HEAD_HEADERS = ["head", "dtype", "N", "C", "H / D", "GEMMs fwd/bwd", "TFLOP",
                "torch ops fwd/bwd",
                "H100 ms", "of which GEMMs", "GEMM floor", "H100 / floor", "H100 CE part",
                "H200 ms", "of which GEMMs", "GEMM floor", "H200 / floor", "H200 CE part"]


def launch_rows(cases: list[dict]) -> list[list[str]]:
    seen = set()
    rows = []
    for c in cases:
        for e in c["launches"]:
            key = (e["kernel"], tuple(sorted(e["constants"].items())),
                   tuple(e["signature"].items()))
            if key in seen:
                continue
            seen.add(key)
            consts = ", ".join(f"{k}={v}" for k, v in e["constants"].items()
                               if k.isupper() and v not in (False, None))
            cells = [e["kernel"], consts, e["num_warps"]]
            for arch in ("sm_90a", "sm_80"):
                a = e["arches"][arch]
                cells += [a["registers"], f"{a['spill_stores']}/{a['spill_loads']}", a["shared"],
                          f"{a['resident_programs']} ({a['occupancy_limit']})"]
            a = e["arches"]["sm_90a"]
            lat = e["gpus"]["H100"]["latency"]
            cells += [_widths(a["accesses"]), lat["in_flight_per_sm"],
                      f"{e['gpus']['H100']['bound']}",
                      " + ".join(str(lp["instructions"]) for lp in a["hot_loops"]) or "-",
                      a["sass_instructions"]]
            rows.append(cells)
    return rows


LAUNCH_HEADERS = ["kernel", "constexprs", "warps",
                  "sm_90a regs", "spill st/ld B", "smem B", "progs/SM (limit)",
                  "sm_80 regs", "spill st/ld B", "smem B", "progs/SM (limit)",
                  "LDG:STG bits (hot)", "in flight B/SM", "H100 bound", "hot loop instr",
                  "body instr"]


def peer_rows(report: dict) -> list[list[str]]:
    published = {int(k): v for k, v in report["published"]["liger_h100_bf16_8192_ms"].items()}
    ours = {(c["dtype"], c["classes"]): c for c in report["cases"] if c["op"] == "ce_fwd_bwd"}
    rows = []
    for p in report["peers"]:
        h100, h200 = p["predicted"]["H100"], p["predicted"]["H200"]
        pub = published.get(p["classes"]) if p["provider"] == "liger_t1" and \
            p["dtype"] == "bf16" else None
        mine = ours.get((p["dtype"], p["classes"]))
        rows.append([p["provider"], p["dtype"], p["classes"], _ms(h100["t"]),
                     _pct(h100["fraction_of_floor"]) if p["provider"] != "copy" else "-",
                     _ms(h200["t"]), f"{p['instructions_per_element']:.1f}",
                     f"{pub:.3f}" if pub else "-",
                     f"{h100['t'] * 1e3 / pub:.2f}" if pub else "-",
                     _ms(mine["predicted"]["H100"]["t"]) if mine else "-"])
    return rows


PEER_HEADERS = ["provider", "dtype", "C", "H100 ms (model)", "H100 floor", "H200 ms (model)",
                "instr/elem", "published H100 ms", "model / published", "tempfast H100 ms"]


def render(report: dict) -> str:
    m = report["meta"]
    out = [f"# Static cost model, {m['date']}", "",
           f"Commit `{m['commit']}`, tempfast {m['tempfast']}, Triton {m['triton']}, torch "
           f"{m['torch']}, liger-kernel {m['liger_kernel'] or 'not installed'}. Every number "
           "below is computed by `python -m bench.static` from the compiled kernels "
           f"({', '.join(m['arches'])}) of the launches the public ops make at N = "
           f"{report['cases'][0]['rows'] if report['cases'] else '-'}; no GPU was used.", "",
           "## Model", "",
           "* time = max(HBM bytes / copy bandwidth, warp-instructions / issue rate, "
           "t_little, t_chain) + "
           f"{LAUNCH_S * 1e6:g} us per launch (Triton launches and every torch op that "
           "computes); issue rate = "
           f"{ISSUE_PER_CLOCK} warp-instructions per clock per SM x SMs x clock;",
           "* t_little (Little's law) = bytes loaded from HBM x DRAM latency / (SMs x bytes in "
           "flight per "
           "SM), bytes in flight = resident programs x threads x the LDG bytes of one trip of "
           "the hot loop; each SM needs copy bandwidth x DRAM latency / SMs in flight (the "
           "launches table);",
           "* t_chain = ceil(programs / (resident programs x SMs)) x one program's chain: the "
           "DRAM latency of its first loads, each round of loads (a hot-loop trip or a work "
           "item) at max(latency, SMs x the round's HBM bytes / copy bandwidth), its own "
           "instructions at ceil(warps / 4) cycles each, each BAR / SHFL at "
           f"{ON_CHIP_LATENCY_CYCLES} cycles; a cooperative work item adds two L2 round "
           "trips;",
           f"* latencies: DRAM {DRAM_LATENCY_CYCLES} cycles, L2 {L2_LATENCY_CYCLES} cycles, "
           f"on chip {ON_CHIP_LATENCY_CYCLES} cycles ({LATENCY_SOURCE}); not fitted: Liger's "
           "published times are the check (Peers);",
           "* a re-read comes from L2 in the share min(1, L2 / footprint) (footprint: the rows "
           "in flight, or the whole tensor for a re-read by a later launch), else from HBM;",
           "* floor = the case's unavoidable bytes (bench/cases.py FLOOR_UNITS) at the copy "
           "bandwidth; `floor` columns are floor time / predicted time.", ""]
    out += _table(["GPU", "SMs", "L2", "peak", "copy bandwidth", "clock", "issue rate",
                   "DRAM / L2 latency", "in flight needed per SM"],
                  [[g.name, g.sms, f"{g.l2_bytes / 1e6:g} MB", f"{g.peak_bw / 1e12:g} TB/s",
                    f"{g.copy_bw / 1e12:g} TB/s ({g.copy_note})", f"{g.clock_hz / 1e9:g} GHz",
                    f"{g.issue_rate / 1e12:.3f} T warp-instr/s",
                    f"{g.dram_latency * 1e9:.0f} / {g.l2_latency * 1e9:.0f} ns",
                    f"{g.in_flight_needed / 1024:.1f} KiB"] for g in GPUS])
    out += ["Known blind spots:", ""] + [f"* {b}" for b in BLIND_SPOTS] + [""]
    out += ["## Headline cases", "",
            "Registers, spills, programs per SM and access widths are those of the case's "
            "costliest launch on sm_90a (spills: the maximum over its launches); `LDG:STG "
            "bits` lists the widths of the global loads : stores in the hot loops (the whole "
            "kernel when it has none); `instr/elem` is SASS instructions per element per "
            "thread, summed over the launches; torch ops are those a call on CUDA tensors "
            "dispatches (host-memory value checks excluded), side kernels the ones among them "
            "that compute.", ""]
    out += _table(HEADLINE_HEADERS, headline_rows(report["cases"]))
    heads = head_rows(report["cases"])
    if heads:
        out += ["## Heads with matrix products: the GEMM floor", "",
                "The matrix products are logged by shape and timed at the GEMM rate "
                f"({GEMM_SOURCE}). "
                "The GEMM floor is the head's unavoidable products (linear head: `6 N H C` "
                "FLOPs, the logits and the two gradient products; CLIP: `6 B^2 D`, the "
                "similarities made once for both directions; NT-Xent: `4 (2B)^2 D`) at that "
                "rate, plus its inputs read and their gradients written once at the copy "
                "bandwidth. `CE part`: the cross-entropy launches and torch ops around the "
                "GEMMs against the CE floor (the logits read once, the gradient written once). "
                "The headline table's floor columns for these rows are that CE part.", ""]
        out += _table(HEAD_HEADERS, heads)
    out += ["## Launches", "", *_table(LAUNCH_HEADERS, launch_rows(report["cases"]))]
    if report["peers"]:
        out += ["## Peers: a plain copy and Liger-Kernel's CE", "",
                "`liger_t1`: Liger's kernel alone (it has no temperature: the fair peer); "
                "`liger_x_div_t`: plus the two elementwise passes of `x / T` and its backward. "
                "Published: Liger CE, H100, bf16, 8192 rows, forward + backward.", ""]
        out += _table(PEER_HEADERS, peer_rows(report))
    out += ["## Targets of issue 12", "",
            "Met or missed in the model (both GPUs where a row names a fraction of the floor); "
            "a miss says what the time is spent on.", ""]
    out += _table(["target", "model", "met"], target_rows(report))
    if "host" in report:
        h = report["host"]
        t = h["time_s"]
        out += ["## Host cost per call", "",
                f"Median wall time per call on {h['shape'][0]} x {h['shape'][1]} fp32 CPU "
                f"tensors, {h['threads']} thread (tempfast: the CPU path).", ""]
        rows = []
        for what in ("ce fwd", "ce fwd+bwd", "softmax fwd"):
            a, b = t[f"tempfast {what}"], t[f"eager {what}"]
            rows.append([what, f"{a * 1e6:.0f}", f"{b * 1e6:.0f}", f"{a / b:.1f}x"])
        out += _table(["call", "tempfast us", "eager us", "ratio"], rows)
        ops = h["cpu_path_ops"]
        out += _table(["aten ops per CE call (CPU path)", "forward", "backward"],
                      [[k, v["forward"], v["backward"]] for k, v in ops.items()])
    return "\n".join(out)


def _case(report: dict, op: str, dtype: str, c: int, provider: str = "tempfast") -> dict | None:
    pool = report["cases"] if provider == "tempfast" else report["peers"]
    for case in pool:
        if (case["op"] == op or provider != "tempfast") and case["dtype"] == dtype and \
                case["classes"] == c and case.get("provider", "tempfast") == provider:
            return case
    return None


def _overheads(case: dict, gpu: str) -> str:
    p = case["predicted"][gpu]
    launches = sum(e["count"] for e in case["launches"])
    fixed = (launches * LAUNCH_S + p["t_side_kernels"]) * 1e6
    side = ", side kernels" if p["t_side_kernels"] else ""
    floor = p["floor_t"]
    return (f"{fixed:.0f} us of fixed launch cost ({launches} launches{side}) against a "
            f"{floor * 1e6:.1f} us floor: at most {floor / (floor + fixed * 1e-6):.0%}")


def _floor_row(report: dict, label: str, op: str, dtypes: tuple, classes: tuple,
               goal: float) -> list[str]:
    cells, misses = [], []
    for dtype in dtypes:
        for c in classes:
            case = _case(report, op, dtype, c)
            if case is None:
                continue
            fr = {g.name: case["predicted"][g.name]["fraction_of_floor"] for g in GPUS}
            cells.append(f"{dtype} {c}: " + "/".join(f"{v:.0%}" for v in fr.values()))
            if min(fr.values()) < goal:
                worst = min(fr, key=fr.get)
                misses.append(f"{dtype} C={c} {worst} {fr[worst]:.0%} (short by "
                              f"{goal - fr[worst]:.0%}: {_overheads(case, worst)})")
    if not cells:
        return [label, "not in this report", "-"]
    return [label, "; ".join(cells) + " (H100/H200)",
            "met" if not misses else "missed: " + "; ".join(misses)]


def target_rows(report: dict) -> list[list[str]]:
    rows = [
        _floor_row(report, "CE fwd+bwd bf16, C = 32000 / 128256: >= 90%", "ce_fwd_bwd",
                   ("bf16",), (32000, 128256), 0.90),
        _floor_row(report, "CE fwd+bwd bf16, C = 262144: >= 85%", "ce_fwd_bwd", ("bf16",),
                   (262144,), 0.85),
        _floor_row(report, "CE fwd+bwd fp32, C = 32000-262144: >= 85%", "ce_fwd_bwd",
                   ("fp32",), (32000, 128256, 262144), 0.85),
        _floor_row(report, "softmax fwd, C = 1000-262144: >= 90%", "softmax_fwd",
                   ("bf16", "fp32"), (1000, 4096, 32000, 128256, 262144), 0.90),
        _floor_row(report, "softmax fwd+bwd, C = 1000-262144: >= 85%", "softmax_fwd_bwd",
                   ("bf16", "fp32"), (1000, 4096, 32000, 128256, 262144), 0.85),
    ]
    ratios = []
    for case in report["cases"]:
        if case["op"] == "ce_learnable_t_fwd_bwd":
            fixed = _case(report, "ce_fwd_bwd", case["dtype"], case["classes"])
            if fixed and case["classes"] >= 32000:
                ratios.append(max(case["predicted"][g.name]["t"] / fixed["predicted"][g.name]["t"]
                                  for g in GPUS))
    if ratios:
        rows.append(["CE with learnable T within 5% of fixed T (C >= 32000)",
                     f"{min(ratios):.3f}-{max(ratios):.3f}x of fixed T",
                     "met" if max(ratios) <= 1.05 else "missed"])
    spill = max((max(a["spill_stores"], a["spill_loads"]) for c in report["cases"]
                 for e in c["launches"] for a in e["arches"].values()), default=0)
    rows.append(["0 spills in every configuration the heuristics choose",
                 f"{spill} bytes at most (headline launches; every configuration: the AOT "
                 "test and CI budgets)", "met" if spill == 0 else "missed"])
    ce = [c for c in report["cases"] if c["op"] in ("ce_fwd_bwd", "ce_learnable_t_fwd_bwd")]
    if ce:
        counts = {sum(c["triton_launches"].values()) for c in ce}
        large = {sum(e["count"] for e in c["launches"]
                     if e["gpus"]["H100"]["hbm_bytes"] > 0.01 * c["floor_bytes"]) for c in ce}
        rows.append(["Triton launches per CE fwd+bwd at upstream gradient 1: 1 + at most 3 tiny "
                     "(prep, the slices path's repair launch, the apply)",
                     f"{'/'.join(map(str, sorted(counts)))} launches, "
                     f"{'/'.join(map(str, sorted(large)))} moving the N x C data",
                     "met" if max(counts) <= 4 and max(large) <= 1 else "missed"])
        gpu_ops = [sum(c["host"]["gpu_call_ops"].values()) for c in ce]
        rows.append(["torch ops per CE fwd+bwd around the GPU launches: <= 10",
                     f"{min(gpu_ops)}-{max(gpu_ops)}", "met" if max(gpu_ops) <= 10 else "missed"])
    if "host" in report:
        h = report["host"]
        cpu = h["cpu_path_ops"]["tempfast"]
        n = cpu["forward"] + cpu["backward"]
        rows.append(["aten ops per CE fwd+bwd on the CPU path: <= 10 (eager 10)",
                     f"{cpu['forward']} + {cpu['backward']}", "met" if n <= 10 else "missed"])
        t = h["time_s"]
        fwd = t["tempfast ce fwd"] / t["eager ce fwd"]
        both = t["tempfast ce fwd+bwd"] / t["eager ce fwd+bwd"]
        extra = (t["tempfast ce fwd"] - t["eager ce fwd"]) * 1e6
        rows.append(["host time per CE call, 64 x 10 CPU, 1 thread: forward <= 1.2x eager, "
                     "forward + backward <= 1.1x",
                     f"forward {fwd:.2f}x, forward + backward {both:.2f}x",
                     "met" if fwd <= 1.2 and both <= 1.1 else
                     f"missed: the forward's Python (the argument checks of a plain call, "
                     f"the backend and tracing tests) costs {extra:.1f} us per call more than "
                     f"eager's"])
    rows += _liger_rows(report)
    rows += _head_target_rows(report)
    rows += _lm_target_rows(report)
    return rows


def _lm_target_rows(report: dict) -> list[list[str]]:
    """Issue 25, bf16, N = 8192: token log-probabilities forward at >= 90% of one read of the
    logits, forward + backward at >= 90% of two reads and a write; the soft-capped and the
    z-loss CE within 5% of the plain CE's time."""
    rows = [
        _floor_row(report, "token_logprobs fwd (log-probabilities and entropy) bf16: >= 90% of "
                   "one read", "token_logprobs_fwd", ("bf16",), LM_CLASSES, TOKEN_FLOOR_GOAL),
        _floor_row(report, "token_logprobs fwd+bwd (both upstream gradients non-zero) bf16: "
                   ">= 90% of two reads and a write", "token_logprobs_fwd_bwd", ("bf16",),
                   LM_CLASSES, TOKEN_FLOOR_GOAL)]
    if rows[0][1] == "not in this report":
        return []
    for op, label, why in (
            ("ce_softcap_fwd_bwd", "CE soft-capped (c = 30)",
             "issue-bound: the cap's tanh is an exp2 and an approximate reciprocal per element "
             "on the MUFU pipe (a quarter of the ALU rate), plus its slope, kept in registers "
             "from the load to the gradient's store, which halves the columns a program holds; "
             "the hardware's tanh.approx would be one instruction but needs inline asm, which "
             "the interpreter cannot run"),
            ("ce_z_loss_fwd_bwd", "CE with z-loss", "")):
        cells, worst = [], 0.0
        for c in LM_CLASSES:
            ours, plain = _case(report, op, "bf16", c), _case(report, "ce_fwd_bwd", "bf16", c)
            if ours is None or plain is None:
                continue
            ratio = {g.name: ours["predicted"][g.name]["t"] / plain["predicted"][g.name]["t"]
                     for g in GPUS}
            worst = max(worst, *ratio.values())
            cells.append(f"C={c}: " + "/".join(f"{v:.2f}x" for v in ratio.values()))
        met = worst <= CAPPED_RATIO_GOAL
        rows.append([f"{label} bf16 within 5% of the plain CE's time",
                     "; ".join(cells) + " (H100/H200)", "met" if met else f"missed: {why}"])
    return rows


def _head_target_rows(report: dict) -> list[list[str]]:
    """Issue 24: the linear head within 1.15x of its GEMM floor and at most 30 torch ops per
    forward + backward, bf16, N = 8192, H = 4096, C in {32000, 128256, 262144}."""
    heads = [c for c in report["cases"] if c["op"] == "linear_ce_fwd_bwd" and
             c["dtype"] == "bf16" and c["classes"] >= 32000]
    if not heads:
        return []
    cells, misses, ops = [], [], []
    for c in heads:
        ratio = {g.name: c["predicted"][g.name]["t"] / c["predicted"][g.name]["head_floor_t"]
                 for g in GPUS}
        cells.append(f"C={c['classes']}: " + "/".join(f"{v:.3f}x" for v in ratio.values()))
        if max(ratio.values()) > HEAD_RATIO_GOAL:
            misses.append(f"C={c['classes']}")
        ops.append(sum(c["host"]["gpu_call_ops"].values()))
    counts = sorted(set(ops))
    g = heads[0]["gemms"]["count"]
    return [
        [f"linear head fwd+bwd bf16, N = 8192, H = 4096: <= {HEAD_RATIO_GOAL}x its GEMM floor",
         "; ".join(cells) + " (H100/H200)",
         "met" if not misses else "missed at " + ", ".join(misses)],
        [f"torch ops per linear head fwd+bwd: <= {HEAD_OPS_GOAL} at every C",
         f"{'/'.join(map(str, counts))} ({g.get('forward', 0)} + {g.get('backward', 0)} GEMMs)",
         "met" if max(ops) <= HEAD_OPS_GOAL else
         "missed: each chunk of rows is a torch op per GEMM (the logits, the hidden and the "
         "weight gradients) and the transposed view of its gradient; the chunk is sized to a "
         "quarter of the fp32 weight gradient, so H = 4096 makes 4 chunks at every C, and "
         "about 20 ops are the bookkeeping of the call (splits, workspace, divisor, "
         "the gradients' buffers and the backward's scaling)"],
    ]


def _small_launches(ours: dict, peer: dict, gpu: str) -> str:
    """Why a case is slower than a one-launch peer: its data-moving launch against the peer's
    and the time of everything else (tiny launches, side kernels)."""
    main = max(ours["launches"], key=lambda e: e["gpus"][gpu]["t"])
    t_main = main["gpus"][gpu]["t"] * main["count"]
    rest = ours["predicted"][gpu]["t"] - t_main
    return (f"its {main['kernel']} alone: {peer['predicted'][gpu]['t'] / t_main:.2f}x; the other "
            f"launches and side kernels add {rest * 1e6:.1f} us at {LAUNCH_S * 1e6:.0f} us each")


def _published_checks(report: dict) -> list[tuple[int, float]]:
    """(C, model / published) for each published Liger time in the report."""
    published = report["published"]["liger_h100_bf16_8192_ms"]
    out = []
    for peer in report["peers"]:
        pub = published.get(str(peer["classes"]), published.get(peer["classes"]))
        if peer["provider"] == "liger_t1" and peer["dtype"] == "bf16" and pub:
            out.append((peer["classes"], peer["predicted"]["H100"]["t"] * 1e3 / pub))
    return out


def _liger_rows(report: dict) -> list[list[str]]:
    plain, div, misses_plain, misses_div, l2 = [], [], [], [], []
    for peer in report["peers"]:
        if peer["provider"] not in ("liger_t1", "liger_x_div_t"):
            continue
        ours = _case(report, "ce_fwd_bwd", peer["dtype"], peer["classes"])
        if ours is None:
            continue
        for g in GPUS:
            ratio = peer["predicted"][g.name]["t"] / ours["predicted"][g.name]["t"]
            where = f"{peer['dtype']} C={peer['classes']} {g.name}"
            if peer["provider"] == "liger_t1":
                plain.append(ratio)
                if ratio < 1.0:
                    why = _small_launches(ours, peer, g.name)
                    misses_plain.append(f"{where}: {ratio:.2f}x ({why})")
                misses_l2 = peer["classes"] == 262144 or (peer["dtype"] == "fp32"
                                                          and peer["classes"] >= 128256)
                if misses_l2:
                    l2.append((where, ratio))
            else:
                div.append(ratio)
                if ratio < 2.0:
                    misses_div.append(f"{where}: {ratio:.2f}x")
    if not plain:
        return [["Liger-Kernel peers", "not in this report (install liger-kernel beside)", "-"]]
    checks = _published_checks(report)
    l2_miss = [f"{w}: {r:.2f}x" for w, r in l2 if r < 1.4]
    return [
        ["the model predicts Liger's published CE times (H100, bf16, 8192 rows) within 20%",
         ", ".join(f"C={c}: {r:.2f}x" for c, r in checks) + " (model / published)",
         "met" if checks and all(abs(r - 1) <= 0.2 for _, r in checks) else "missed"],
        ["never slower than plain Liger CE (T = 1), any C", f"{min(plain):.2f}-{max(plain):.2f}x",
         "met" if not misses_plain else "missed: " + "; ".join(misses_plain)],
        [">= 1.4x Liger where its re-read misses L2 (bf16 262144, fp32 >= 128256)",
         ", ".join(f"{w} {r:.2f}x" for w, r in l2) or "-",
         "met" if l2 and not l2_miss else "missed: " + "; ".join(l2_miss)],
        [">= 2x Liger on x / T, any C", f"{min(div):.2f}-{max(div):.2f}x",
         "met" if not misses_div else "missed: " + "; ".join(misses_div)],
    ]

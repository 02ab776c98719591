"""Render the static model's JSON as markdown tables (see :mod:`bench.static`)."""

from __future__ import annotations

from .model import GPUS, ISSUE_PER_CLOCK, L2_FRACTION, LAUNCH_S

BLIND_SPOTS = (
    "latency-bound launches: one resident program per SM (32 warps x 64 registers) cannot "
    "hide a block-wide reduction behind another program's loads, and small grids leave SMs "
    "idle; the model still takes max(memory, issue) (Liger at 32000 classes measures 2.2x the "
    "model's time)",
    "the last partial wave and tail effects of grids not a multiple of the resident programs",
    "L2 hits are all or nothing (rows in flight x row bytes against half the L2)",
    "MUFU (exp2, rcp, lg2) issues at a quarter of the ALU rate; dual issue, dependency stalls "
    "and shared-memory bank conflicts are not modelled: every SASS instruction costs one "
    "issue slot",
    "CTA launch rate: grids of 10^5+ programs that do almost nothing (the rescale at an "
    "upstream gradient of 1) cost more than their instructions",
    "host time is not GPU time: torch ops around a launch are counted, and each op that "
    "computes is charged one launch cost; Python overhead is measured separately on the CPU",
    "the fused linear head's GEMMs are not modelled (its CE part only)",
)


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
        main = _main_launch(c)
        a = main["arches"]["sm_90a"]
        spills = max(e["arches"]["sm_90a"]["spill_stores"] for e in c["launches"])
        host = c.get("host", {})
        ops = host.get("gpu_call_ops", {})
        side = host.get("side_kernels", {})
        h100, h200 = c["predicted"]["H100"], c["predicted"]["H200"]
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
            cells += [_widths(a["accesses"]),
                      " + ".join(str(lp["instructions"]) for lp in a["hot_loops"]) or "-",
                      a["sass_instructions"]]
            rows.append(cells)
    return rows


LAUNCH_HEADERS = ["kernel", "constexprs", "warps",
                  "sm_90a regs", "spill st/ld B", "smem B", "progs/SM (limit)",
                  "sm_80 regs", "spill st/ld B", "smem B", "progs/SM (limit)",
                  "LDG:STG bits (hot)", "hot loop instr", "body instr"]


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
                     f"{pub / (h100['t'] * 1e3):.2f}" if pub else "-",
                     _ms(mine["predicted"]["H100"]["t"]) if mine else "-"])
    return rows


PEER_HEADERS = ["provider", "dtype", "C", "H100 ms (model)", "H100 floor", "H200 ms (model)",
                "instr/elem", "published H100 ms", "published / model", "tempfast H100 ms"]


def render(report: dict) -> str:
    m = report["meta"]
    out = [f"# Static cost model, {m['date']}", "",
           f"Commit `{m['commit']}`, tempfast {m['tempfast']}, Triton {m['triton']}, torch "
           f"{m['torch']}, liger-kernel {m['liger_kernel'] or 'not installed'}. Every number "
           "below is computed by `python -m bench.static` from the compiled kernels "
           f"({', '.join(m['arches'])}) of the launches the public ops make at N = "
           f"{report['cases'][0]['rows'] if report['cases'] else '-'}; no GPU was used.", "",
           "## Model", "",
           f"* time = max(HBM bytes / copy bandwidth, warp-instructions / issue rate) + "
           f"{LAUNCH_S * 1e6:g} us per launch (Triton launches and every torch op that "
           "computes); issue rate = "
           f"{ISSUE_PER_CLOCK} warp-instructions per clock per SM x SMs x clock;",
           f"* a re-read is served from L2 when the rows in flight fit in {L2_FRACTION:g} of "
           "the L2, else from HBM;",
           "* floor = the case's unavoidable bytes (bench/cases.py FLOOR_UNITS) at the copy "
           "bandwidth; `floor` columns are floor time / predicted time.", ""]
    out += _table(["GPU", "SMs", "L2", "peak", "copy bandwidth", "clock", "issue rate"],
                  [[g.name, g.sms, f"{g.l2_bytes / 1e6:g} MB", f"{g.peak_bw / 1e12:g} TB/s",
                    f"{g.copy_bw / 1e12:g} TB/s ({g.copy_note})", f"{g.clock_hz / 1e9:g} GHz",
                    f"{g.issue_rate / 1e12:.3f} T warp-instr/s"] for g in GPUS])
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
    out += ["## Launches", "", *_table(LAUNCH_HEADERS, launch_rows(report["cases"]))]
    if report["peers"]:
        out += ["## Peers: a plain copy and Liger-Kernel's CE", "",
                "`liger_t1`: Liger's kernel alone (it has no temperature: the fair peer); "
                "`liger_x_div_t`: plus the two elementwise passes of `x / T` and its backward. "
                "Published: Liger CE, H100, bf16, 8192 rows, forward + backward.", ""]
        out += _table(PEER_HEADERS, peer_rows(report))
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

"""Render a ``--benchmark-json`` file of the tempfast suite as tables (terminal and markdown).

    python -m bench.report results.json [--markdown out.md]

Tables: the run (machine, versions, load), a summary per op and dtype (tempfast against each
provider, by class count), the fused linear head (time, TFLOP/s, peak memory, speedups; the
CPU memory case at the issue's size), the contrastive losses (the same numbers; a baseline
that ran out of memory reads OOM), the performance targets, the details of every group
(time, GB/s or TFLOP/s, share of the copy bandwidth, peak extra memory, speedups), the
trainer groups, and the skipped cases with their reasons. Times are the medians of the
rounds (``--stat min``: their minimum, steadier on a shared machine); ``vs X`` is ``time of X
/ time of the row`` (above 1: the row is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from . import contrastive, linear, summary
from .cases import OPS, PROVIDERS

PROVIDER_NAMES = {
    "copy": "copy (floor)",
    "tempfast": "tempfast",
    "torch_eager": "torch eager",
    "torch_compile": "torch.compile",
    "liger_x_div_t": "Liger (on x/T)",
    "liger_t1": "Liger (T=1)",
    "liger_h_div_t": "Liger fused linear CE (on h/T)",
    "tempfast_train_step": "tempfast train_step",
    "minimal_loop": "minimal PyTorch loop",
}
WIDTH = 160
COMPARED = ("tempfast", "torch_eager", "torch_compile", "liger_x_div_t")
LINEAR_SHORT = {"torch_eager": "eager", "torch_compile": "compile", "liger_h_div_t": "Liger"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    level: int = 3


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _gbps(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _tflops(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _op_cases(benchmarks: list[dict]) -> dict[str, dict[str, dict]]:
    """``group -> {provider: extra_info}`` for the op cases, in suite order."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if "floor_bytes" in info and "provider" in info:
            groups[bench["group"]][info["provider"]] = info
    def order(item: tuple[str, dict]) -> tuple:
        info = next(iter(item[1].values()))
        return (info["device"], OPS.index(info["op"]), info["dtype"], info["classes"])
    return dict(sorted(groups.items(), key=order))


def run_table(data: dict) -> Table:
    machine = data.get("machine_info", {})
    versions = machine.get("tempfast_bench", {})
    extra = data.get("tempfast_bench", {})
    cpu = machine.get("cpu", {})
    rows = [
        ["date (UTC)", str(data.get("datetime", "-"))],
        ["CPU", f"{cpu.get('brand_raw', versions.get('processor', '-'))}, "
                f"{versions.get('cpu_count', '-')} cores, "
                f"torch threads {versions.get('torch_threads', '-')}"],
        ["GPU", f"{versions['gpu']} (sm {versions.get('gpu_capability', '?')})"
         if versions.get("gpu") else "none"],
        ["python", str(machine.get("python_version", "-"))],
    ]
    rows += [[name, str(versions.get(name) or "-")]
             for name in ("torch", "torch_cuda", "triton", "tempfast", "liger_kernel")]
    for key in ("load_average_start", "load_average_end"):
        if extra.get(key):
            rows.append([key.replace("_", " "), " ".join(f"{v:.2f}" for v in extra[key])])
    if extra.get("seconds") is not None:
        rows.append(["suite wall time", f"{extra['seconds']:.0f} s"])
    commit = data.get("commit_info", {})
    if commit.get("id"):
        rows.append(["commit", f"{commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}"])
    return Table("Run", ["item", "value"], rows)


def summary_tables(groups: dict[str, dict[str, dict]]) -> list[Table]:
    """Per (device, op, dtype): one row per class count, tempfast against the others."""
    tables: dict[tuple, Table] = {}
    for cases in groups.values():
        ours = cases.get("tempfast")
        if ours is None:
            continue
        key = (ours["device"], ours["op"], ours["dtype"])
        if key not in tables:
            tables[key] = Table(
                f"{ours['op']} {ours['dtype']} on {ours['device']}: tempfast",
                ["C", "N", "tempfast", "% of copy BW", "vs eager", "vs compile", "vs Liger",
                 "peak MiB tempfast", "peak MiB eager"])
        eager = cases.get("torch_eager", {})
        speed = ours.get("speedup_vs", {})
        tables[key].rows.append([
            str(ours["classes"]), str(ours["rows"]), _time(ours.get("time_s")),
            _percent(ours.get("copy_fraction")), _ratio(speed.get("torch_eager")),
            _ratio(speed.get("torch_compile")), _ratio(speed.get("liger_x_div_t")),
            _mib(ours.get("peak_extra_bytes")), _mib(eager.get("peak_extra_bytes"))])
    return list(tables.values())


def detail_tables(groups: dict[str, dict[str, dict]]) -> list[Table]:
    tables = []
    for group, cases in groups.items():
        present = [p for p in COMPARED if p in cases]
        table = Table(group, ["provider", "time", "GB/s", "% of copy BW", "peak extra MiB"]
                      + [f"vs {PROVIDER_NAMES[p]}" for p in present], level=4)
        for provider in sorted(cases, key=PROVIDERS.index):
            info = cases[provider]
            speed = info.get("speedup_vs", {})
            table.rows.append(
                [PROVIDER_NAMES[provider], _time(info.get("time_s")), _gbps(info.get("gbps")),
                 _percent(info.get("copy_fraction")), _mib(info.get("peak_extra_bytes"))]
                + ["-" if p == provider or provider == "copy" else _ratio(speed.get(p))
                   for p in present])
        tables.append(table)
    return tables


def _linear_cases(benchmarks: list[dict], memory_only: bool) -> dict[str, dict[str, dict]]:
    """``group -> {provider: extra_info}`` of the fused-head cases (timed, or memory-only)."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if info.get("op") in (linear.OP, linear.MEMORY_OP) and "provider" in info \
                and bool(info.get("memory_only")) == memory_only:
            groups[bench["group"]][info["provider"]] = info
    def order(item: tuple[str, dict]) -> tuple:
        info = next(iter(item[1].values()))
        return (info["device"], info["dtype"], -info["classes"], -info["hidden"], -info["rows"])
    return dict(sorted(groups.items(), key=order))


def linear_summary_table(groups: dict[str, dict[str, dict]]) -> Table:
    """One row per fused-head shape: tempfast's time and TFLOP/s, its speedups, every
    provider's peak extra memory."""
    others = [p for p in linear.PROVIDERS if p != "tempfast"]
    table = Table(f"{linear.OP}: tempfast (fused head, T = 8, flops = 6 N H C)",
                  ["N", "H", "C", "bias", "dtype", "device", "tempfast", "TFLOP/s"]
                  + [f"vs {LINEAR_SHORT[p]}" for p in others]
                  + [f"peak MiB {LINEAR_SHORT.get(p, p)}" for p in linear.PROVIDERS])
    for cases in groups.values():
        ours = cases.get("tempfast")
        if ours is None:
            continue
        speed = ours.get("speedup_vs", {})
        table.rows.append(
            [str(ours[k]) for k in ("rows", "hidden", "classes")]
            + ["yes" if ours["bias"] else "no", ours["dtype"], ours["device"],
               _time(ours.get("time_s")), _tflops(ours.get("tflops"))]
            + [_ratio(speed.get(p)) for p in others]
            + [_mib(cases.get(p, {}).get("peak_extra_bytes")) for p in linear.PROVIDERS])
    return table


def linear_memory_table(groups: dict[str, dict[str, dict]]) -> Table:
    """The memory-only case: one step per provider in the memory worker."""
    table = Table(f"{linear.MEMORY_OP}: one step per provider in the memory worker",
                  ["N", "H", "C", "dtype", "tempfast step", "eager step", "vs eager",
                   "peak MiB tempfast", "peak MiB eager", "tempfast / eager"])
    for cases in groups.values():
        ours = cases.get("tempfast")
        if ours is None:
            continue
        peak, eager_peak = ours.get("peak_extra_bytes"), ours.get("eager_peak_extra_bytes")
        share = None if peak is None or not eager_peak else peak / eager_peak
        table.rows.append(
            [str(ours[k]) for k in ("rows", "hidden", "classes")]
            + [ours["dtype"], _time(ours.get("time_s")), _time(ours.get("eager_step_s")),
               _ratio(ours.get("speedup_vs", {}).get("torch_eager")), _mib(peak),
               _mib(eager_peak), "-" if share is None else f"{share:.1%}"])
    return table


def _contrastive_cases(benchmarks: list[dict]) -> dict[str, dict[str, dict]]:
    """``group -> {provider: extra_info}`` of the contrastive cases, by device, op and B."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if info.get("op") in contrastive.OPS and "provider" in info:
            groups[bench["group"]][info["provider"]] = info
    def order(item: tuple[str, dict]) -> tuple:
        info = next(iter(item[1].values()))
        return (info["device"], contrastive.OPS.index(info["op"]), info["dtype"], info["batch"])
    return dict(sorted(groups.items(), key=order))


def contrastive_summary_table(groups: dict[str, dict[str, dict]],
                              out_of_memory: set[str]) -> Table:
    """One row per contrastive shape: tempfast's time and TFLOP/s, its speedups, every
    provider's peak extra memory; ``OOM`` for a baseline skipped as out of memory (its id in
    ``out_of_memory``)."""
    others = [p for p in contrastive.PROVIDERS if p != "tempfast"]
    table = Table(f"{', '.join(contrastive.OPS)}: tempfast (flops: CLIP 6 B^2 D, "
                  "NT-Xent 4 (2B)^2 D)",
                  ["op", "B", "D", "dtype", "device", "tempfast", "TFLOP/s"]
                  + [f"vs {LINEAR_SHORT[p]}" for p in others]
                  + [f"peak MiB {LINEAR_SHORT.get(p, p)}" for p in contrastive.PROVIDERS])
    for cases in groups.values():
        spec = contrastive.ContrastiveSpec.from_info(next(iter(cases.values())))
        oom = {p for p in contrastive.BASELINES
               if dataclasses.replace(spec, provider=p).id in out_of_memory}
        ours = cases.get("tempfast", {})
        speed = ours.get("speedup_vs", {})
        table.rows.append(
            [spec.op, str(spec.batch), str(spec.dim), spec.dtype, spec.device,
             _time(ours.get("time_s")), _tflops(ours.get("tflops"))]
            + ["OOM" if p in oom else _ratio(speed.get(p)) for p in others]
            + ["OOM" if p in oom else _mib(cases.get(p, {}).get("peak_extra_bytes"))
               for p in contrastive.PROVIDERS])
    return table


def linear_detail_tables(groups: dict[str, dict[str, dict]]) -> list[Table]:
    """Per fused-head or contrastive group: each provider's time, TFLOP/s, peak extra
    memory and speedups."""
    tables = []
    for group, cases in groups.items():
        present = [p for p in linear.PROVIDERS if p in cases]
        table = Table(group, ["provider", "time", "TFLOP/s", "peak extra MiB"]
                      + [f"vs {PROVIDER_NAMES[p]}" for p in present], level=4)
        for provider in present:
            info = cases[provider]
            speed = info.get("speedup_vs", {})
            table.rows.append(
                [PROVIDER_NAMES[provider], _time(info.get("time_s")),
                 _tflops(info.get("tflops")), _mib(info.get("peak_extra_bytes"))]
                + ["-" if p == provider else _ratio(speed.get(p)) for p in present])
        tables.append(table)
    return tables


def trainer_tables(benchmarks: list[dict]) -> list[Table]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if "images_per_step" in info:
            groups[bench["group"]].append(info)
    tables = []
    for group, infos in sorted(groups.items()):
        table = Table(group, ["provider", "step time", "images/s", "vs the other"])
        for info in infos:
            others = info.get("speedup_vs", {})
            table.rows.append([PROVIDER_NAMES.get(info["provider"], info["provider"]),
                               _time(info.get("time_s")), f"{info.get('images_per_s', 0):.0f}",
                               ", ".join(f"{_ratio(v)} vs {PROVIDER_NAMES.get(p, p)}"
                                         for p, v in others.items()) or "-"])
        tables.append(table)
    return tables


def target_table(benchmarks: list[dict]) -> Table:
    met = {True: "yes", False: "NO", None: "-"}
    return Table("Targets", ["target", "goal", "measured", "met"],
                 [[t.name, t.goal, t.measured, met[t.met]] for t in summary.targets(benchmarks)])


def skipped_table(data: dict) -> Table:
    skipped = data.get("tempfast_bench", {}).get("skipped", [])
    return Table("Skipped cases", ["reason", "cases"],
                 [[s["reason"], str(s["count"])] for s in skipped])


def build(data: dict, stat: str = "median") -> list[Table]:
    """All tables of a loaded JSON file (derived numbers recomputed from ``stat``)."""
    benchmarks = data.get("benchmarks", [])
    summary.derive(benchmarks, stat)
    groups = _op_cases(benchmarks)
    heads = _linear_cases(benchmarks, memory_only=False)
    memory_only = _linear_cases(benchmarks, memory_only=True)
    contrastive_groups = _contrastive_cases(benchmarks)
    out_of_memory = contrastive.out_of_memory_ids(data.get("tempfast_bench", {}).get("skipped", []))
    tables = [run_table(data), *summary_tables(groups), linear_summary_table(heads),
              linear_memory_table(memory_only),
              contrastive_summary_table(contrastive_groups, out_of_memory),
              target_table(benchmarks), *trainer_tables(benchmarks), *detail_tables(groups),
              *linear_detail_tables(heads), *linear_detail_tables(contrastive_groups),
              skipped_table(data)]
    return [t for t in tables if t.rows]


def to_markdown(tables: list[Table], stat: str = "median") -> str:
    lines = ["## tempfast benchmark results", "",
             f"Times are the {stat} of each case's rounds; `vs X` = time of X / time of the "
             "row (above 1: the row is faster); `% of copy BW` = (floor bytes / time) / "
             "copy bandwidth measured in the same run; TFLOP/s = 6 N H C / time (fused linear "
             "head), 6 B^2 D / time (CLIP), 4 (2B)^2 D / time (NT-Xent); OOM = out of "
             "memory; peak MiB = peak extra memory of one step.", ""]
    for table in tables:
        lines += [f"{'#' * table.level} {table.title}", "",
                  "| " + " | ".join(table.headers) + " |",
                  "|" + "|".join("---" for _ in table.headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines.append("")
    return "\n".join(lines)


def print_rich(tables: list[Table], console: Console) -> None:
    for table in tables:
        rich = RichTable(title=table.title, title_justify="left")
        for i, header in enumerate(table.headers):
            rich.add_column(header, justify="left" if i == 0 else "right")
        for row in table.rows:
            rich.add_row(*row)
        console.print(rich)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a JSON file from pytest --benchmark-json")
    parser.add_argument("--markdown", type=Path, metavar="OUT.md",
                        help="also write the tables as markdown to this file")
    parser.add_argument("--stat", choices=summary.STATS, default="median",
                        help="statistic of each case's rounds (default: median)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"bench.report: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    tables = build(data, args.stat)
    if args.markdown is not None:
        args.markdown.write_text(to_markdown(tables, args.stat))
    print_rich(tables, Console() if sys.stdout.isatty() else Console(width=WIDTH))
    return 0


if __name__ == "__main__":
    sys.exit(main())

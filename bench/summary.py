"""Numbers derived from a pytest-benchmark JSON file, across the cases of one group.

For each case of a group (same op, shape, dtype and device), with ``t`` its time (the
median of its rounds by default, or their minimum: ``stat``):

* ``gbps``: the group's floor bytes / ``t`` (for the copy provider: the bytes it copies);
* ``copy_gbps``: the copy provider's bytes / its time, measured in the same run;
* ``copy_fraction``: ``gbps / copy_gbps`` -- for cross-entropy fwd+bwd and softmax forward
  this is ``copy time / t``, the share of the bandwidth floor reached;
* ``speedup_vs``: ``{provider: t_provider / t}`` for every other provider of the group
  (above 1: this case is faster);
* trainer cases: ``images_per_s = images_per_step / t``;
* fused linear head and contrastive cases (``flops`` in extra_info): ``tflops = flops / t``
  instead of the bandwidth numbers; for the fused head's memory-only case ``t`` is ``step_s``
  (the step alone, timed in the memory worker) and ``speedup_vs`` holds ``torch_eager``:
  ``eager_step_s / step_s``.

:func:`targets` checks the performance targets of the project's issues against these.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

WIDE_CLASSES = (32000, 128256, 262144)
TRAINER_TOLERANCE = 0.9
LINEAR_OPS = ("linear_ce_fwd_bwd", "linear_ce_memory")
LINEAR_TARGET = {"device": "cuda", "dtype": "bf16", "rows": 8192, "hidden": 4096,
                 "classes": 128256}
LINEAR_MEMORY_FRACTION = 0.25
LINEAR_VS_LIGER = 1.2
LINEAR_VS_EAGER = 1 / 1.3


def _ours(bench: dict) -> bool:
    info = bench.get("extra_info") or {}
    return "provider" in info and any(k in info for k in ("floor_bytes", "images_per_step",
                                                          "flops"))


STATS = ("median", "min")


def derive(benchmarks: list[dict], stat: str = "median") -> None:
    """Add the derived numbers above (and ``time_s``, ``statistic``) to each case's
    ``extra_info``, in place."""
    if stat not in STATS:
        raise ValueError(f"stat: expected one of {STATS}, got {stat!r}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in benchmarks:
        if _ours(bench):
            groups[bench["group"]].append(bench)
    for members in groups.values():
        times = {b["extra_info"]["provider"]: b["stats"][stat] for b in members}
        copy = next((b for b in members if b["extra_info"]["provider"] == "copy"), None)
        copy_gbps = copy["extra_info"]["copy_bytes"] / times["copy"] / 1e9 if copy else None
        for bench in members:
            info, t = bench["extra_info"], bench["stats"][stat]
            if "eager_step_s" in info:
                _derive_memory_only(info, stat)
                continue
            info["time_s"], info["statistic"] = t, stat
            info["speedup_vs"] = {p: other / t for p, other in times.items()
                                  if p != info["provider"]}
            if "images_per_step" in info:
                info["images_per_s"] = info["images_per_step"] / t
                continue
            if "flops" in info:
                info["tflops"] = info["flops"] / t / 1e12
                continue
            info["gbps"] = info["floor_bytes"] / t / 1e9
            info["copy_gbps"] = copy_gbps
            info["copy_fraction"] = info["gbps"] / copy_gbps if copy_gbps else None


def _derive_memory_only(info: dict, stat: str) -> None:
    t = info["step_s"]
    info["time_s"], info["statistic"] = t, f"{stat} (one step in the memory worker)"
    info["speedup_vs"] = {"torch_eager": info["eager_step_s"] / t}
    info["tflops"] = info["flops"] / t / 1e12


@dataclass(frozen=True)
class Target:
    """One target: what was measured against what was asked; ``met`` is None if unmeasured."""

    name: str
    goal: str
    measured: str
    met: bool | None


def _by_group(benchmarks: list[dict]) -> dict[str, dict[str, dict]]:
    """``group -> {provider: extra_info}`` of our cases."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        if _ours(bench):
            out[bench["group"]][bench["extra_info"]["provider"]] = bench["extra_info"]
    return out


def _ratio_target(name: str, info: dict, other: str, goal: float) -> Target:
    value = info.get("speedup_vs", {}).get(other)
    if value is None:
        return Target(name, f">= {goal:.2f}x", f"no {other} case", None)
    return Target(name, f">= {goal:.2f}x", f"{value:.2f}x", value >= goal)


def _fraction_target(name: str, info: dict, goal: float) -> Target:
    value = info.get("copy_fraction")
    if value is None:
        return Target(name, f">= {goal:.0%} of copy", "no copy case", None)
    return Target(name, f">= {goal:.0%} of copy", f"{value:.1%}", value >= goal)


def _op_targets(cases: dict[str, dict]) -> list[Target]:
    info, eager = cases.get("tempfast"), cases.get("torch_eager")
    if info is None:
        return []
    op, classes, dtype, device = info["op"], info["classes"], info["dtype"], info["device"]
    out = []
    if device == "cuda" and dtype == "bf16":
        if op == "ce_fwd_bwd" and classes in WIDE_CLASSES and info["rows"] == 8192:
            label = f"CE fwd+bwd bf16 N=8192 C={classes}"
            out.append(_fraction_target(f"{label}: bandwidth", info, 0.85))
            out.append(_ratio_target(f"{label}: vs Liger (x/T)", info, "liger_x_div_t", 1.3))
            out.append(_ratio_target(f"{label}: vs torch.compile", info, "torch_compile", 1.5))
        if op == "softmax_fwd" and classes >= 1000:
            out.append(_fraction_target(f"softmax fwd bf16 C={classes}: bandwidth", info, 0.85))
    if device == "cpu" and op == "ce_fwd_bwd" and eager is not None:
        label = f"CPU CE fwd+bwd {dtype} C={classes}"
        out.append(_ratio_target(f"{label}: time vs eager", info, "torch_eager", 1.0))
        ours, theirs = info.get("peak_extra_bytes"), eager.get("peak_extra_bytes")
        if ours is None or theirs is None:
            out.append(Target(f"{label}: peak memory", "< eager", "not measured", None))
        else:
            out.append(Target(f"{label}: peak memory", "< eager",
                              f"{ours / 2**20:.1f} vs {theirs / 2**20:.1f} MiB", ours < theirs))
    return out


def _memory_target(name: str, ours: int | None, theirs: int | None, fraction: float,
                   strict: bool) -> Target:
    goal = f"{'<' if strict else '<='} {fraction:.0%} of eager"
    if ours is None or theirs is None:
        return Target(name, goal, "not measured", None)
    ratio = ours / theirs
    return Target(name, goal, f"{ours / 2**20:.1f} vs {theirs / 2**20:.1f} MiB ({ratio:.1%})",
                  ratio < fraction if strict else ratio <= fraction)


def _linear_targets(cases: dict[str, dict]) -> list[Target]:
    """The fused head's targets: on CUDA at the issue's shape (peak memory at most 1/4 of
    eager's, >= 1.2x Liger, time within 1.3x of eager's); the CPU memory case (peak extra
    memory under 25% of eager's)."""
    info = cases.get("tempfast")
    if info is None or info.get("op") not in LINEAR_OPS:
        return []
    shape = f"N={info['rows']} H={info['hidden']} C={info['classes']}"
    if "eager_step_s" in info:
        return [_memory_target(f"CPU linear CE {info['dtype']} {shape}: peak memory",
                               info.get("peak_extra_bytes"), info.get("eager_peak_extra_bytes"),
                               LINEAR_MEMORY_FRACTION, strict=True)]
    if any(info.get(k) != v for k, v in LINEAR_TARGET.items()):
        return []
    label = f"linear CE fwd+bwd bf16 {shape}"
    eager = cases.get("torch_eager", {})
    return [_memory_target(f"{label}: peak memory", info.get("peak_extra_bytes"),
                           eager.get("peak_extra_bytes"), LINEAR_MEMORY_FRACTION, strict=False),
            _ratio_target(f"{label}: vs Liger (h/T)", info, "liger_h_div_t", LINEAR_VS_LIGER),
            _ratio_target(f"{label}: vs eager (time <= 1.3x)", info, "torch_eager",
                          LINEAR_VS_EAGER)]


def targets(benchmarks: list[dict]) -> list[Target]:
    """The targets that the cases in ``benchmarks`` (already :func:`derive`-d) can answer:
    CUDA bf16 CE fwd+bwd bandwidth and speedups, softmax forward bandwidth, CPU CE fwd+bwd
    time and memory against eager, the fused linear head's memory and speed, and the trainer
    step against the minimal loop."""
    def order(item: tuple[str, dict[str, dict]]) -> tuple:
        info = next(iter(item[1].values()))
        return (info.get("device", ""), info.get("op", ""), info.get("classes", 0),
                info.get("dtype", ""))

    out = []
    for group, cases in sorted(_by_group(benchmarks).items(), key=order):
        out.extend(_op_targets(cases))
        out.extend(_linear_targets(cases))
        if "tempfast_train_step" in cases:
            out.append(_ratio_target(f"{group}: vs minimal loop", cases["tempfast_train_step"],
                                     "minimal_loop", TRAINER_TOLERANCE))
    return out

"""The derived numbers, the targets and the report renderer (no timing: these run in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import report, summary
from .cases import Spec
from .linear import LinearSpec

ROOT = Path(__file__).resolve().parent.parent


def _bench(spec: Spec, time: float, peak: int | None = None) -> dict:
    info = spec.extra_info()
    if peak is not None:
        info["peak_extra_bytes"] = peak
    return {"group": spec.group_name, "name": spec.id, "stats": {"median": time, "min": time / 2},
            "extra_info": info}


def _group(op: str, device: str, classes: int, rows: int, times: dict[str, float],
           peaks: dict[str, int] | None = None) -> list[dict]:
    peaks = peaks or {}
    return [_bench(Spec(op, p, classes, rows, "bf16", device), t, peaks.get(p))
            for p, t in times.items()]


def test_derive_computes_bandwidth_fraction_and_pairwise_speedups() -> None:
    benches = _group("ce_fwd_bwd", "cpu", 1000, 64,
                     {"copy": 1e-3, "tempfast": 2e-3, "torch_eager": 4e-3})
    summary.derive(benches)
    copy, ours, eager = (b["extra_info"] for b in benches)
    floor = 2 * 64 * 1000 * 2
    assert ours["gbps"] == floor / 2e-3 / 1e9
    assert copy["copy_fraction"] == 1.0
    assert abs(ours["copy_fraction"] - 0.5) < 1e-12
    assert ours["speedup_vs"] == {"copy": 0.5, "torch_eager": 2.0}
    assert eager["speedup_vs"]["tempfast"] == 0.5


def test_ce_forward_floor_is_half_a_copy() -> None:
    benches = _group("ce_fwd", "cpu", 1000, 64, {"copy": 1e-3, "tempfast": 1e-3})
    summary.derive(benches)
    assert abs(benches[1]["extra_info"]["copy_fraction"] - 0.5) < 1e-12


def test_targets_report_cpu_time_and_memory_against_eager() -> None:
    benches = _group("ce_fwd_bwd", "cpu", 1000, 64,
                     {"copy": 1e-3, "tempfast": 5e-3, "torch_eager": 4e-3},
                     peaks={"tempfast": 1 << 20, "torch_eager": 3 << 20})
    summary.derive(benches)
    met = {t.name: t.met for t in summary.targets(benches)}
    assert met == {"CPU CE fwd+bwd bf16 C=1000: time vs eager": False,
                   "CPU CE fwd+bwd bf16 C=1000: peak memory": True}


def test_targets_report_gpu_bandwidth_and_missing_peers() -> None:
    benches = _group("ce_fwd_bwd", "cuda", 32000, 8192,
                     {"copy": 1e-3, "tempfast": 1.1e-3, "torch_compile": 2e-3})
    summary.derive(benches)
    found = {t.name: t for t in summary.targets(benches)}
    label = "CE fwd+bwd bf16 N=8192 C=32000"
    assert found[f"{label}: bandwidth"].met is True
    assert found[f"{label}: vs torch.compile"].met is True
    assert found[f"{label}: vs Liger (x/T)"].met is None


def test_report_markdown_has_summary_details_and_targets(tmp_path: Path) -> None:
    benches = _group("ce_fwd_bwd", "cpu", 1000, 64,
                     {"copy": 1e-3, "tempfast": 2e-3, "torch_eager": 4e-3},
                     peaks={"tempfast": 1 << 20, "torch_eager": 3 << 20})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": benches, "machine_info": {}}))
    out = tmp_path / "r.md"
    assert report.main([str(path), "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| 1000 | 64 | 2 ms | 50% | 2.00x | - | - | 1.0 | 3.0 |" in text
    assert "| CPU CE fwd+bwd bf16 C=1000: time vs eager | >= 1.00x | 2.00x | yes |" in text
    assert "#### ce_fwd_bwd C=1000 N=64 bf16 cpu" in text


def test_derive_can_use_the_minimum_of_the_rounds() -> None:
    benches = _group("ce_fwd_bwd", "cpu", 1000, 64, {"copy": 1e-3, "tempfast": 2e-3})
    summary.derive(benches, "min")
    assert benches[1]["extra_info"]["time_s"] == 1e-3
    assert benches[1]["extra_info"]["statistic"] == "min"


def test_report_rejects_an_unreadable_file(tmp_path: Path) -> None:
    assert report.main([str(tmp_path / "missing.json")]) == 2


def test_suite_json_renders_end_to_end(tmp_path: Path) -> None:
    """A real (tiny) benchmark run writes derived numbers and skip reasons into its JSON."""
    out = tmp_path / "run.json"
    selection = "ce_fwd_bwd-C262144 and fp32 and (copy or tempfast or eager or liger)"
    # A child pytest that inherits an xdist worker's variables believes it runs under xdist,
    # and pytest-benchmark then refuses --benchmark-only.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update(TEMPFAST_BENCH_CASE_S="0.02", TEMPFAST_BENCH_DEVICE="cpu")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_bench_ops.py", "-q", "-p",
         "no:cacheprovider", "--benchmark-only", f"--benchmark-json={out}", "-k", selection],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    providers = {b["extra_info"]["provider"]: b["extra_info"] for b in data["benchmarks"]}
    assert set(providers) == {"copy", "tempfast", "torch_eager"}
    assert providers["tempfast"]["copy_fraction"] > 0
    assert providers["tempfast"]["peak_extra_bytes"] > 0
    assert all("data" not in b["stats"] and b["stats"]["median"] > 0 for b in data["benchmarks"])
    assert "Liger" in data["tempfast_bench"]["skipped"][0]["reason"]
    assert data["machine_info"]["tempfast_bench"]["torch"]
    md = tmp_path / "run.md"
    assert report.main([str(out), "--markdown", str(md)]) == 0
    assert "ce_fwd_bwd fp32 on cpu: tempfast" in md.read_text()


def _linear_bench(provider: str, time: float, peak: int | None, rows: int = 8192,
                  hidden: int = 4096, classes: int = 128256, device: str = "cuda",
                  **extra: object) -> dict:
    spec = LinearSpec(provider, rows, hidden, classes, False, "bf16", device,
                      memory_only="eager_step_s" in extra)
    info = {**spec.extra_info(), **extra}
    if peak is not None:
        info["peak_extra_bytes"] = peak
    return {"group": spec.group_name, "name": spec.id, "stats": {"median": time, "min": time},
            "extra_info": info}


def test_derive_gives_the_linear_head_tflops_and_speedups() -> None:
    benches = [_linear_bench("tempfast", 0.05, 1 << 30),
               _linear_bench("torch_eager", 0.04, 1 << 33)]
    summary.derive(benches)
    ours = benches[0]["extra_info"]
    assert ours["tflops"] == 6 * 8192 * 4096 * 128256 / 0.05 / 1e12
    assert ours["speedup_vs"] == {"torch_eager": 0.04 / 0.05}
    assert "gbps" not in ours and "copy_fraction" not in ours


def test_linear_targets_at_the_issue_shape() -> None:
    benches = [_linear_bench("tempfast", 0.05, 2 << 30),
               _linear_bench("torch_eager", 0.04, 8 << 30),
               _linear_bench("liger_h_div_t", 0.055, 1 << 30)]
    summary.derive(benches)
    found = {t.name: t for t in summary.targets(benches)}
    label = "linear CE fwd+bwd bf16 N=8192 H=4096 C=128256"
    assert found[f"{label}: peak memory"].met is True  # 2 GiB is exactly 1/4 of 8 GiB
    assert found[f"{label}: peak memory"].measured == "2048.0 vs 8192.0 MiB (25.0%)"
    assert found[f"{label}: vs Liger (h/T)"].met is False  # 1.1x < 1.2x
    assert found[f"{label}: vs eager (time <= 1.3x)"].met is True  # 1.25x eager's time
    small = [_linear_bench("tempfast", 0.05, 1, classes=32000)]
    summary.derive(small)
    assert summary.targets(small) == []


def test_memory_only_case_reports_the_worker_step_times_and_its_target(tmp_path: Path) -> None:
    bench = _linear_bench("tempfast", 99.0, 600 << 20, rows=8192, hidden=1024, classes=65536,
                          device="cpu", step_s=30.0, eager_step_s=45.0,
                          eager_peak_extra_bytes=6000 << 20)
    summary.derive([bench])
    info = bench["extra_info"]
    assert info["time_s"] == 30.0 and info["speedup_vs"] == {"torch_eager": 1.5}
    (target,) = summary.targets([bench])
    assert target.name == "CPU linear CE bf16 N=8192 H=1024 C=65536: peak memory"
    assert target.met is True and target.measured == "600.0 vs 6000.0 MiB (10.0%)"
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [bench], "machine_info": {}}))
    out = tmp_path / "r.md"
    assert report.main([str(path), "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| 8192 | 1024 | 65536 | bf16 | 30 s | 45 s | 1.50x | 600.0 | 6000.0 | 10.0% |" in text
    assert "| CPU linear CE bf16 N=8192 H=1024 C=65536: peak memory | < 25% of eager |" in text


def test_report_renders_the_linear_head_summary_and_details(tmp_path: Path) -> None:
    benches = [_linear_bench("tempfast", 0.05, 2 << 30),
               _linear_bench("torch_eager", 0.04, 8 << 30)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": benches, "machine_info": {}}))
    out = tmp_path / "r.md"
    assert report.main([str(path), "--markdown", str(out)]) == 0
    text = out.read_text()
    tflops = f"{6 * 8192 * 4096 * 128256 / 0.05 / 1e12:.3g}"
    assert (f"| 8192 | 4096 | 128256 | no | bf16 | cuda | 50 ms | {tflops} | 0.80x | - | - "
            "| 2048.0 | 8192.0 | - | - |") in text
    assert "#### linear_ce_fwd_bwd N=8192 H=4096 C=128256 bf16 cuda" in text
    assert f"| tempfast | 50 ms | {tflops} | 2048.0 | - | 0.80x |" in text

"""CI budgets on the static cost model (``bench.static``): spills, 128-bit row accesses,
Triton launches and torch ops per cross-entropy call, read from the kernels compiled for
sm_90a and sm_80 with the JIT's specialisation at the headline shapes (N = 8192,
C in {1000, 4096, 32000, 128256, 262144}, bf16 and fp32).

The compile-and-read part runs in a subprocess WITHOUT ``TRITON_INTERPRET`` (the real
compiler), with a fresh Triton cache. The checkers are also run on deliberately worse kernels
(registers capped, misaligned rows) to show that a budget can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                            "TEMPFAST_BACKEND")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_the_headline_kernels_stay_within_the_budgets(tmp_path):
    result = _run("""
        import json
        from bench.static import budgets
        print(json.dumps(budgets.check(jobs=2), default=str))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["violations"] == [], "\n".join(report["violations"])
    # no kernel accesses its rows narrower than 128 bits where 16-byte rows allow it
    assert report["measured"]["narrow_rows"] == []


def test_the_checkers_catch_spills_narrow_rows_extra_launches_and_ops(tmp_path):
    """A CE kernel capped at 32 registers spills; rows that start 2 bytes off a 16-byte
    boundary get narrow loads; a case with an extra launch or extra ops breaks its budget."""
    result = _run("""
        import json
        import torch
        from bench.static import budgets, compile as C, record, residency
        from tempfast.ops.cross_entropy import triton_path

        def launches(x, y):
            rec = record.LaunchRecorder()
            with residency.triton_on_cpu(), rec.active():
                triton_path.ce_rows(x, y, torch.full((1,), 8.0), None, -100, 0.0,
                                    torch.ones(1), torch.empty_like(x), False)
            return rec.launches

        y = torch.zeros(64, dtype=torch.int64)
        good = launches(torch.empty(64, 4096, dtype=torch.bfloat16), y)[0]
        capped = record.Launch(**{**good.__dict__, "kwargs": {**good.kwargs, "maxnreg": 32}})
        buf = torch.empty(64, 4097, dtype=torch.bfloat16)
        misaligned = launches(buf[:, 1:], y)[0]
        out = {
            "good_spills": budgets.spill_violations(good, C.read_launch(good, 90), 0),
            "good_narrow": budgets.narrow_access_violations(good, C.read_launch(good, 90)),
            "capped": budgets.spill_violations(capped, C.read_launch(capped, 90), 0),
            "misaligned": budgets.narrow_access_violations(misaligned,
                                                           C.read_launch(misaligned, 90)),
        }
        print(json.dumps(out))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["good_spills"] == [] and out["good_narrow"] == []
    assert out["capped"] and "bytes of spills" in out["capped"][0]
    assert out["misaligned"] and "128-bit" in out["misaligned"][0]

    from bench.static import budgets

    big = {"count": 1, "gpus": {"H100": {"hbm_bytes": 10**9}}}
    case = {"id": "ce_fwd_bwd-test", "op": "ce_fwd_bwd", "floor_bytes": 10**9,
            "triton_launches": {"forward": 1, "backward": budgets.MAX_CE_LAUNCHES},
            "launches": [big, big],
            "host": {"gpu_call_ops": {"forward": budgets.MAX_CE_TORCH_OPS_GPU, "backward": 1}}}
    found = budgets.case_violations(case)
    assert any("Triton launches" in v for v in found)
    assert any("move the N x C data" in v for v in found)
    assert any("torch ops" in v for v in found)
    cpu = {"tempfast": {"forward": budgets.MAX_CE_TORCH_OPS_CPU, "backward": 1}}
    assert budgets.cpu_path_violations(cpu)

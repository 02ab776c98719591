"""Ahead-of-time compilation of every kernel variant for sm_80 and sm_90 (no GPU needed).

Runs ``tests/aot_compile.py`` in a subprocess WITHOUT ``TRITON_INTERPRET`` (the interpreter
accepts programs the compiler rejects) and with an empty Triton cache, so every launch the
launchers make over the script's calls is really compiled to PTX and a cubin, with the JIT's
run-time specialisation.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("aot_compile.py")
ROOT = SCRIPT.parents[1]


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                            "TEMPFAST_BACKEND")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    return env


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm80_and_sm90(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--arch", "80", "90", "--jobs", "2"],
                            capture_output=True, text=True, env=_env(tmp_path), timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert " 0 failures" in result.stdout


def _recorded_variants(tmp_path: Path) -> list[dict]:
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(SCRIPT.parent)!r})
        import aot_compile
        out = [{{"name": l.name, "warps": l.num_warps, "constants": l.constants,
                 "signature": l.signature,
                 "aligned": sorted(list(l.signature)[k[0]] for k, v in l.attrs.items() if v)}}
               for l in aot_compile.record_calls(aot_compile.all_calls())]
        print(json.dumps(out, default=str))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(tmp_path), cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


KERNELS = {  # (op, path) -> the kernel whose constexprs carry the configuration
    ("ce", "rows"): "ce_rows_kernel", ("ce", "slices"): "ce_slices_kernel",
    ("softmax", "rows"): "softmax_rows_kernel", ("softmax", "slices"): "softmax_slices_kernel",
    ("softmax_bwd", "rows"): "softmax_bwd_rows_kernel",
    ("softmax_bwd", "slices"): "softmax_bwd_slices_kernel",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[dict]:
    """The launches ``tests/aot_compile.py`` records, once per module."""
    return _recorded_variants(tmp_path_factory.mktemp("aot-record"))


def test_the_compiled_set_covers_every_configuration_the_heuristics_choose(recorded):
    """Over a dense grid of shapes (not only the script's powers of two), every launch
    configuration the launchers can pick is among the launches the AOT script records (the
    slices path in its cooperative launch and both phases of its fallback), and the run-time
    specialisations include aligned rows, rows aligned to 16 bytes only (the VEC hints) and
    neither, a single row and the ``stride == 1`` per-row temperature and upstream
    gradient."""
    from tempfast.kernels.heuristics import row_config, vector_width
    from tempfast.kernels.rescale import apply_config

    variants = recorded
    have = {(v["name"], v["constants"].get("BLOCK_N"), v["constants"].get("BLOCK_C"),
             v["warps"], v["constants"].get("BLOCK_S"), v["constants"].get("PHASE"))
            for v in variants}
    rows = sorted({1, 2, 3, 5, 7, 100, 127, 129, 600, 1000, 4095, 8192, 65537})
    cols = sorted({1, 2, 3, 10, 17, 100, 1000, 4097, 32000, 32769, 65536, 128256, 262144,
                   1 << 20})
    for (op, n_inputs), (n, c), size in itertools.product(
            (("ce", 1), ("softmax", 1), ("softmax_bwd", 2), ("softmax_bwd", 3)),
            itertools.product(rows, cols), (2, 4)):
        for sms in (None, 108, 132):
            cfg = row_config(n, c, size, sms, n_inputs)
            name = KERNELS[(op, cfg.path)]
            block_n = cfg.block_n if cfg.path == "rows" else None
            block_s = cfg.block_s if cfg.path == "slices" else None
            phases = (0, 1, 2) if cfg.path == "slices" else (None,)
            for phase in phases:
                assert (name, block_n, cfg.block_c, cfg.num_warps, block_s, phase) in have, \
                    (op, cfg, phase)
    applies = {(v["constants"]["BLOCK_N"], v["constants"]["BLOCK_C"], v["warps"])
               for v in variants if v["name"] == "grad_apply_kernel"}
    for n, c in itertools.product(rows, cols):
        assert apply_config(n, c)[:3] in applies
    consts = [v["constants"] for v in variants]
    assert any(k.get("stride_t") == 1 for k in consts)
    assert any(k.get("stride_scale") == 1 for k in consts)
    assert any(k.get("n_rows") == 1 for k in consts)
    for name in ("ce_rows_kernel", "ce_slices_kernel", "softmax_rows_kernel",
                 "grad_apply_kernel"):
        mine = [v for v in variants if v["name"] == name]
        assert any(v["constants"].get("VEC", 1) > 1 and "stride_x" not in v["aligned"]
                   for v in mine) or name == "grad_apply_kernel", name  # 16-byte rows only
        assert any(v["constants"].get("VEC", 1) == 1 for v in mine), name
    assert vector_width(1000, 2, 1000) == 8 and vector_width(1001, 2, 1001) == 1
    ce = [v for v in variants if v["name"] == "ce_rows_kernel"]
    assert any("stride_x" in v["aligned"] for v in ce)  # rows a multiple of 16 wide
    assert any("stride_x" not in v["aligned"] for v in ce)  # and not


def test_aot_distill_calls_cover_every_configuration_the_heuristics_choose(recorded):
    """The distillation kernels' launches in the compiled set: every configuration
    ``distill_config`` picks (both phases of the slices path, with and without ``EXTRAS``), the
    combine kernel, VEC and unaligned rows, a single row and a per-row temperature; at most 12
    configurations (CI compiles each for two arches and two Triton versions)."""
    import itertools

    from tempfast.kernels.distillation import DISTILL_BLOCK_S, distill_config

    variants = [v for v in recorded if v["name"].startswith("kd_")]
    have = {(v["name"], v["constants"].get("BLOCK_N"), v["constants"].get("BLOCK_C"),
             v["warps"], v["constants"].get("PHASE"), v["constants"].get("EXTRAS"))
            for v in variants}
    assert {v["constants"].get("BLOCK_S") for v in variants} <= {None, DISTILL_BLOCK_S}
    assert any(v["name"] == "kd_combine_kernel" for v in variants)
    for n, c in itertools.product((1, 2, 7, 100, 8192), (1, 10, 33, 256, 1000, 4096, 4097,
                                                         32000, 262144)):
        for extras in (False, True):
            cfg = distill_config(n, c, 2, extras=extras)
            if cfg.path == "rows":
                key = ("kd_rows_kernel", cfg.block_n, cfg.block_c, cfg.num_warps, None, extras)
                assert key in have, key
            else:
                for phase in (1, 2):
                    warps = cfg.num_warps if phase == 2 else distill_config(n, c, 2).num_warps
                    key = ("kd_slices_kernel", None, cfg.block_c, warps, phase,
                           extras and phase == 2)
                    assert key in have, key
    consts = [v["constants"] for v in variants]
    assert any(k.get("VEC", 1) > 1 for k in consts) and any(k.get("VEC", 1) == 1 for k in consts)
    assert any(k.get("stride_temp") == 1 for k in consts)
    assert any(k.get("n_rows") == 1 for k in consts)
    configs = {(v["name"], v["constants"].get("BLOCK_N"), v["constants"].get("BLOCK_C"),
                v["constants"].get("PHASE"), v["constants"].get("EXTRAS")) for v in variants}
    assert len(configs) <= 12  # rows: 4 blocks x 2; slices: phase 1, phase 2 x 2, combine

"""The compiled kernels: ahead-of-time compilation of every kernel configuration for sm_80 and
sm_90 (no GPU needed), and the CI budgets the static cost model reads from the binaries
(``bench.static.budgets``: spills, 128-bit row accesses, Triton launches and torch ops per
cross-entropy call, at the headline shapes N = 8192, C in {1000, 4096, 32000, 128256, 262144},
bf16 and fp32).

``tests/aot_compile.py`` runs in a subprocess WITHOUT ``TRITON_INTERPRET`` (the interpreter
accepts programs the compiler rejects) and with an empty Triton cache, so every launch it
selects (:func:`aot_compile.covering`) is really compiled to PTX and a cubin, with the JIT's
run-time specialisation; it also compiles the headline launches, so the budget check that
follows in the same cache reads binaries already built. The checkers are also run on
deliberately worse kernels (registers capped, misaligned rows) to show that a budget can fail.
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


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                            "TEMPFAST_BACKEND")}
    env["TRITON_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def triton_cache(tmp_path_factory) -> Path:
    """One Triton cache for this module: the binaries compiled once, read by the budgets."""
    return tmp_path_factory.mktemp("triton-cache")


@pytest.fixture(scope="module")
def compiled(triton_cache) -> subprocess.CompletedProcess:
    """The AOT script's run for sm_80 and sm_90, the headline launches included."""
    return subprocess.run([sys.executable, str(SCRIPT), "--arch", "80", "90", "--jobs", "2",
                           "--headline"], capture_output=True, text=True,
                          env=_env(triton_cache), timeout=1800)


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm80_and_sm90(compiled):
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-5000:]
    assert " 0 failures" in compiled.stdout


def _run(code: str, cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=_env(cache), cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_the_headline_kernels_stay_within_the_budgets(compiled, triton_cache):
    result = _run("""
        import json
        from bench.static import budgets
        print(json.dumps(budgets.check(jobs=2), default=str))
    """, triton_cache)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["violations"] == [], "\n".join(report["violations"])
    # no kernel accesses its rows narrower than 128 bits where 16-byte rows allow it
    assert report["measured"]["narrow_rows"] == []
    # the memory ordering of every kernel that waits was read from its PTX, on both targets
    waiting = {"ce_slices_kernel", "softmax_slices_kernel", "softmax_bwd_slices_kernel",
               "kd_coop_slices_kernel"}
    assert set(report["measured"]["waits_checked"]) == {f"{k} sm_{a}" for k in waiting
                                                        for a in (80, 90)}


def test_the_ordering_check_passes_a_sound_wait_and_fails_each_wrong_one(triton_cache):
    """``bench/static/ordering.py`` on the PTX of tests/wrong_waits.py for sm_80 and sm_90:
    the sound wait passes; a plain-load poll, a relaxed poll, a relaxed arrival and an arrival
    without a CTA barrier are each reported. (The real kernels are checked by the budgets.)"""
    result = _run("""
        import json
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from bench.static.ordering import wait_violations
        from tests import wrong_waits

        out = {}
        for arch in (80, 90):
            for kernel in wrong_waits.KERNELS:
                src = ASTSource(kernel, {"counter": "*i32", "out": "*fp32", "n": "i32"}, {})
                binary = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                        options={"num_warps": 4})
                out[f"{kernel.fn.__name__} {arch}"] = wait_violations(binary.asm["ptx"], "k")
        print(json.dumps(out))
    """, triton_cache)
    assert result.returncode == 0, result.stderr[-5000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"sound_wait": None, "plain_load_wait": "polls with 'ld.global",
                "relaxed_poll_wait": "neither acquire", "relaxed_arrival_wait": "does not release",
                "unbarriered_arrival_wait": "no CTA barrier"}
    for arch in (80, 90):
        for name, message in expected.items():
            found = out[f"{name} {arch}"]
            if message is None:
                assert found == [], (name, arch, found)
            else:
                assert len(found) == 1 and message in found[0], (name, arch, found)


def test_the_checkers_catch_spills_narrow_rows_extra_launches_and_ops(triton_cache):
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
    """, triton_cache)
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
    head = {"id": "linear-test", "op": "linear_ce_fwd_bwd", "dtype": "bf16",
            "host": {"gpu_call_ops": {"forward": budgets.MAX_LINEAR_TORCH_OPS_GPU,
                                      "backward": 1}}}
    assert any("per linear head" in v for v in budgets.case_violations(head))
    cpu = {"tempfast": {"forward": budgets.MAX_CE_TORCH_OPS_CPU, "backward": 1}}
    assert budgets.cpu_path_violations(cpu)


def _recorded_variants(cache: Path) -> dict:
    """The compiled set (``covering`` of every recorded launch), and whether it keeps every
    configuration and specialisation pattern of the whole recording."""
    result = _run(f"""
        import json, sys
        sys.path.insert(0, {str(SCRIPT.parent)!r})
        import aot_compile as A
        every = A.record_calls(A.all_calls())
        chosen = A.covering(every)
        out = [{{"name": l.name, "warps": l.num_warps, "constants": l.constants,
                 "signature": l.signature,
                 "aligned": sorted(list(l.signature)[k[0]] for k, v in l.attrs.items() if v)}}
               for l in chosen]
        kept = all({{f(l) for l in every}} == {{f(l) for l in chosen}}
                   for f in (A.configuration, A.specialisation))
        print(json.dumps({{"launches": out, "recorded": len(every), "kept": kept}},
                         default=str))
    """, cache, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


KERNELS = {  # (op, path) -> the kernel whose constexprs carry the configuration
    ("ce", "rows"): "ce_rows_kernel", ("ce", "slices"): "ce_slices_kernel",
    ("softmax", "rows"): "softmax_rows_kernel", ("softmax", "slices"): "softmax_slices_kernel",
    ("softmax_bwd", "rows"): "softmax_bwd_rows_kernel",
    ("softmax_bwd", "slices"): "softmax_bwd_slices_kernel",
}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict:
    """What ``tests/aot_compile.py`` records and compiles, once per module."""
    return _recorded_variants(tmp_path_factory.mktemp("aot-record"))


@pytest.fixture(scope="module")
def recorded(recording) -> list[dict]:
    """The launches ``tests/aot_compile.py`` compiles."""
    return recording["launches"]


def test_the_compiled_set_keeps_every_configuration_and_specialisation(recording):
    """Every distinct program (kernel, warps, constexprs, pointer dtypes) and every distinct
    specialisation of each kernel that the calls record is compiled, each once: fewer binaries
    than the recorded launches, nothing left out."""
    assert recording["kept"]
    assert len(recording["launches"]) < recording["recorded"]


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
    combine kernel, the fp32 one-read launch and its repair launch at every combine tile
    ``coop_block_s`` picks, VEC and unaligned rows, a single row and a per-row temperature; at
    most 16 configurations (CI compiles each for two arches and two Triton versions)."""
    import itertools

    from tempfast.kernels.distillation import (
        DISTILL_BLOCK_S,
        DISTILL_COOP_BLOCK_S,
        coop_block_s,
        coop_config,
        distill_config,
    )

    variants = [v for v in recorded if v["name"].startswith("kd_")]
    have = {(v["name"], v["constants"].get("BLOCK_N"), v["constants"].get("BLOCK_C"),
             v["warps"], v["constants"].get("PHASE"), v["constants"].get("EXTRAS"))
            for v in variants}
    low, high = DISTILL_COOP_BLOCK_S
    tiles = {1 << i for i in range(low.bit_length() - 1, high.bit_length())}
    assert {v["constants"].get("BLOCK_S") for v in variants} <= {None, DISTILL_BLOCK_S, *tiles}
    coop = {(v["constants"].get("BLOCK_S"), v["warps"], v["constants"].get("PHASE"),
             v["constants"].get("EXTRAS")) for v in variants
            if v["name"] == "kd_coop_slices_kernel"}
    for c, extras in itertools.product((4097, 32000, 262144, 600000), (False, True)):
        cfg = coop_config(16, c, extras=extras)
        for phase in (0, 2):
            key = (coop_block_s(cfg.n_slices), cfg.num_warps, phase, extras)
            assert key in coop, key
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
    # rows: 4 blocks x 2; slices: phase 1, phase 2 x 2, combine; one read: 2 phases x 2
    assert len(configs) <= 16

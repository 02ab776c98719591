"""Ahead-of-time compilation of every tempfast kernel for sm_80 and sm_90, without a GPU.

Run as a script in a process *without* ``TRITON_INTERPRET`` (the interpreter forgives what the
compiler rejects): ``python tests/aot_compile.py [--arch 80 90] [--jobs 2]``. It enumerates
every launch configuration the heuristics can choose for every dtype, plus every combination of
the cross-entropy feature flags, compiles each to PTX and a cubin, and prints one line per
failure. Exit status 0 when everything compiles.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2}
# The heuristics depend on next_pow2(rows), next_pow2(columns) and the split count, so powers
# of two (and one past them) reach every configuration they can choose.
ROW_COUNTS = tuple(1 << i for i in range(14))
COL_COUNTS = tuple(sorted({c for i in range(21) for c in (1 << i, (1 << i) + 1)}))
SPLIT_BLOCKS = (2, 4, 8, 16, 32, 64)  # BLOCK_S = next_pow2(splits), splits in [2, 64]
CE_FLAGS = ("PROB", "HAS_WEIGHT", "SMOOTH", "COMPUTE_GRAD", "COMPUTE_DT")


def _configs(n_inputs: int = 1):
    """(dtype, LaunchConfig) pairs: every configuration the heuristics produce over the grid of
    shapes and dtypes, compiled once (with the first dtype that selects it), plus, for each
    path, one configuration in every dtype (the dtype changes the pointer types, not the
    constexprs)."""
    from tempfast.kernels.heuristics import row_config

    chosen: dict = {}  # constexprs -> (dtype, config); splits / chunks are runtime values
    for dtype, size in DTYPES.items():
        for n_rows, n_cols in itertools.product(ROW_COUNTS, COL_COUNTS):
            cfg = row_config(n_rows, n_cols, size, None, n_inputs)
            chosen.setdefault((cfg.path, cfg.block_n, cfg.block_c, cfg.num_warps), (dtype, cfg))
    pairs = set(chosen.values())
    for path in {key[0] for key in chosen}:
        first = next(cfg for key, (_, cfg) in chosen.items() if key[0] == path)
        pairs |= {(dtype, first) for dtype in DTYPES}
    return sorted(pairs, key=lambda p: (p[1].path, p[1].block_n, p[1].block_c, p[0]))


def _ce_jobs():
    base = {"PROB": False, "HAS_WEIGHT": False, "SMOOTH": False, "COMPUTE_GRAD": True,
            "COMPUTE_DT": False}
    jobs = [("ce", dtype, cfg, base) for dtype, cfg in _configs()]
    reps = {}
    for dtype, cfg in _configs():
        reps.setdefault(cfg.path, (dtype, cfg))
    for values in itertools.product((False, True), repeat=len(CE_FLAGS)):
        flags = dict(zip(CE_FLAGS, values, strict=True))
        for dtype, cfg in reps.values():
            jobs.append(("ce", dtype, cfg, flags))
    # fp32 probability targets with 16-bit logits (mixup under autocast): q_ptr is *fp32.
    for grad, dt in itertools.product((False, True), repeat=2):
        flags = {**base, "PROB": True, "COMPUTE_GRAD": grad, "COMPUTE_DT": dt, "Q_FP32": True}
        for (_dtype, cfg), dtype in itertools.product(reps.values(), ("fp16", "bf16")):
            jobs.append(("ce", dtype, cfg, flags))
    return jobs


def _softmax_jobs():
    jobs = []
    for log in (False, True):
        jobs += [("softmax", dtype, cfg, {"LOG": log}) for dtype, cfg in _configs()]
        for dt in (False, True):
            jobs += [("softmax_bwd", dtype, cfg, {"LOG": log, "COMPUTE_DT": dt})
                     for dtype, cfg in _configs(3 if dt else 2)]
    return jobs


def _rescale_jobs():
    from tempfast.kernels.heuristics import elementwise_config

    shapes = sorted({elementwise_config(n, c) for n, c in itertools.product(ROW_COUNTS,
                                                                            COL_COUNTS)})
    jobs = [("rescale", "fp32", shape, {}) for shape in shapes]
    return jobs + [("rescale", dtype, shapes[-1], {}) for dtype in DTYPES if dtype != "fp32"]


def _compile(kernel, types: dict, constexprs: dict, num_warps: int, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    for name in constexprs:
        signature[name] = "constexpr"
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    assert compiled.asm.get("cubin"), "no cubin produced"


def _ce_kernels(dtype: str, cfg, flags: dict):
    from tempfast.kernels import cross_entropy as kmod

    ptr = f"*{dtype}"
    flags = dict(flags)
    q_ptr = "*fp32" if flags.pop("Q_FP32", False) else ptr
    types = {"x_ptr": ptr, "g_ptr": ptr, "q_ptr": q_ptr, "y_ptr": "*i64", "t_ptr": "*fp32",
             "w_ptr": "*fp32", "loss_ptr": "*fp32", "lse_ptr": "*fp32", "dt_ptr": "*fp32",
             "scale_ptr": "*fp32", "part_ptr": "*fp32", "stride_x": "i64", "stride_q": "i64",
             "stride_g": "i64", "stride_t": "i32", "stride_scale": "i32", "n_rows": "i32",
             "n_cols": "i32", "n_chunks": "i32", "chunks_per_split": "i32", "ignore_index": "i64",
             "eps": "fp32"}
    if cfg.path == "single":
        yield kmod.ce_single_pass_kernel, types, {**flags, "BLOCK_N": cfg.block_n,
                                               "BLOCK_C": cfg.block_c}
    elif cfg.path == "stream":
        yield kmod.ce_stream_kernel, types, {**flags, "BLOCK_C": cfg.block_c}
    else:
        stats = {k: v for k, v in flags.items() if k != "COMPUTE_GRAD"}
        yield kmod.ce_split_stats_kernel, types, {**stats, "BLOCK_C": cfg.block_c}
        for block_s in SPLIT_BLOCKS:
            yield kmod.ce_split_finish_kernel, types, {**flags, "BLOCK_C": cfg.block_c,
                                                    "BLOCK_S": block_s}


def _softmax_kernels(kind: str, dtype: str, cfg, flags: dict):
    from tempfast.kernels import softmax as kmod

    ptr = f"*{dtype}"
    types = {name: ptr for name in ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr")}
    types |= {"t_ptr": "*fp32", "part_ptr": "*fp32", "dt_ptr": "*fp32", "stride_t": "i32",
              "n_rows": "i32", "n_cols": "i32", "n_chunks": "i32", "chunks_per_split": "i32"}
    types |= {f"stride_{n}": "i64" for n in ("x", "y", "dy", "dx")}
    fwd = kind == "softmax"
    if cfg.path == "single":
        kernel = kmod.softmax_single_pass_kernel if fwd else kmod.softmax_bwd_single_pass_kernel
        yield kernel, types, {**flags, "BLOCK_N": cfg.block_n, "BLOCK_C": cfg.block_c}
    elif cfg.path == "stream":
        kernel = kmod.softmax_stream_kernel if fwd else kmod.softmax_bwd_stream_kernel
        yield kernel, types, {**flags, "BLOCK_C": cfg.block_c}
    elif fwd:
        yield kmod.softmax_split_stats_kernel, types, {"BLOCK_C": cfg.block_c}
        for block_s in SPLIT_BLOCKS:
            yield kmod.softmax_split_finish_kernel, types, {**flags, "BLOCK_C": cfg.block_c,
                                                         "BLOCK_S": block_s}
    else:
        yield kmod.softmax_bwd_split_stats_kernel, types, {"LOG": flags["LOG"],
                                                           "BLOCK_C": cfg.block_c}
        for block_s in SPLIT_BLOCKS:
            yield kmod.softmax_bwd_split_finish_kernel, types, {
                **flags, "BLOCK_C": cfg.block_c, "BLOCK_S": block_s}


def _rescale_kernels(dtype: str, shape, flags: dict):
    from tempfast.kernels import rescale as kmod

    block_n, block_c, _ = shape
    types = {"buf_ptr": f"*{dtype}", "g_ptr": "*fp32", "stride_buf": "i64", "stride_g": "i32",
             "n_rows": "i32", "n_cols": "i32"}
    yield kmod.rescale_rows_kernel, types, {"BLOCK_N": block_n, "BLOCK_C": block_c}


def run_job(job, arches) -> list[str]:
    kind, dtype, cfg, flags = job
    if kind == "ce":
        kernels, warps = _ce_kernels(dtype, cfg, flags), cfg.num_warps
    elif kind == "rescale":
        kernels, warps = _rescale_kernels(dtype, cfg, flags), cfg[2]
    else:
        kernels, warps = _softmax_kernels(kind, dtype, cfg, flags), cfg.num_warps
    errors = []
    for kernel, types, constexprs in kernels:
        for arch in arches:
            try:
                _compile(kernel, types, constexprs, warps, arch)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                errors.append(f"sm_{arch} {kernel.__name__} {dtype} {cfg} {constexprs}: {first}")
    return errors


def all_jobs():
    return _ce_jobs() + _softmax_jobs() + _rescale_jobs()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: AOT compilation needs the real compiler", file=sys.stderr)
        return 2
    jobs = all_jobs()
    start = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_job, jobs, itertools.repeat(args.arch)))
    errors = [e for r in results for e in r]
    for e in errors:
        print("FAIL", e)
    import triton

    print(f"compiled {len(jobs)} configurations for sm_{args.arch} with triton "
          f"{triton.__version__} in {time.time() - start:.0f}s: {len(errors)} failures")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Ahead-of-time compilation of every tempfast kernel variant the JIT can build, without a GPU.

Run as a script in a process *without* ``TRITON_INTERPRET`` (the interpreter forgives what the
compiler rejects): ``python tests/aot_compile.py [--arch 80 90] [--jobs 2]``.

What is compiled is what really runs: the script calls the real launchers of
``tempfast.ops.triton_impl`` on lazily allocated CPU tensors with every Triton launch
intercepted (``bench.static.record``), and compiles each distinct launch with the
specialisation the JIT computes for those arguments (Triton's own binder: 16-byte pointer
alignment, integers divisible by 16, integers equal to 1 as constexprs). The calls cover:

* every launch configuration the heuristics can choose (path, block sizes, warps and, for the
  split path, ``BLOCK_S``), in fp32 and bf16, each with rows whose width is a multiple of 16
  (aligned: 128-bit accesses) and one that is not, and with a single row where it selects the
  configuration (``n_rows == 1``);
* every combination of the cross-entropy feature flags, fp32 probability targets with 16-bit
  logits, log-softmax, dL/dT, fp16, and the ``stride == 1`` variants (a per-row temperature, a
  per-row upstream gradient) on one configuration of each path;
* the gradient rescale for every block shape, with a scalar and a per-row upstream gradient.

Prints one line per failure; exit status 0 when everything compiles. Works with Triton 3.6
(``PYTHONPATH=<triton 3.6 dir>``, as ``.ci/run`` does) and 3.8.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.static, tempfast

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The heuristics depend on next_pow2(rows), next_pow2(columns) and the split count, so powers
# of two (and one past them) reach every configuration they can choose.
ROW_COUNTS = tuple(1 << i for i in range(14))
COL_COUNTS = tuple(sorted({c for i in range(21) for c in (1 << i, (1 << i) + 1)}))
CE_FLAGS = ("PROB", "HAS_WEIGHT", "SMOOTH", "COMPUTE_GRAD", "COMPUTE_DT")
MAX_ELEMENTS = 1 << 31  # representative shapes stay below this (lazy, but address space)


def config_key(cfg) -> tuple:
    from tempfast.kernels.heuristics import next_pow2

    block_s = next_pow2(cfg.splits) if cfg.path == "split" else 0
    return (cfg.path, cfg.block_n, cfg.block_c, cfg.num_warps, block_s)


def representatives(n_inputs: int, elem_size: int) -> dict[tuple, dict[tuple, tuple]]:
    """For every configuration the heuristics choose over the shape grid: one shape per
    specialisation variant ``(width % 16 == 0, rows == 1)``, with a row count divisible by 16
    where one selects it (else the smallest), and the fewest elements."""
    from tempfast.kernels.heuristics import row_config

    reps: dict[tuple, dict[tuple, tuple]] = {}
    for rows, cols in itertools.product(ROW_COUNTS, COL_COUNTS):
        if rows * cols > MAX_ELEMENTS:
            continue
        cfg = row_config(rows, cols, elem_size, None, n_inputs)
        variants = reps.setdefault(config_key(cfg), {})
        variant = (cols % 16 == 0, rows == 1)
        rank = (rows % 16 != 0 and rows != 1, rows * cols)
        if variant not in variants or rank < variants[variant][0]:
            variants[variant] = (rank, (rows, cols))
    return {key: {v: shape for v, (_, shape) in variants.items()} for key, variants in
            reps.items()}


def _preferred(variants: dict[tuple, tuple]) -> tuple[int, int]:
    """The natural shape of a configuration: aligned width, more than one row if possible."""
    for variant in ((True, False), (False, False), (True, True), (False, True)):
        if variant in variants:
            return variants[variant]
    raise ValueError("no shape")


def path_reps(n_inputs: int, elem_size: int) -> dict[str, dict[tuple, tuple]]:
    """Per path, the variants of its smallest configuration (aligned or not, one row)."""
    out: dict[str, tuple] = {}
    for key, variants in representatives(n_inputs, elem_size).items():
        rows, cols = _preferred(variants)
        if key[0] not in out or rows * cols < out[key[0]][0]:
            out[key[0]] = (rows * cols, variants)
    return {path: variants for path, (_, variants) in out.items()}


# --------------------------------------------------------------------------------------------
# Calls: (kind, dtype, rows, cols, options) -> the real launcher with recorded launches
# --------------------------------------------------------------------------------------------
BASE_CE = {"PROB": False, "HAS_WEIGHT": False, "SMOOTH": False, "COMPUTE_GRAD": True,
           "COMPUTE_DT": False}
KINDS = ((1, "ce", BASE_CE), (1, "softmax", {"LOG": False}),
         (2, "softmax_bwd", {"LOG": False, "COMPUTE_DT": False}),
         (3, "softmax_bwd", {"LOG": False, "COMPUTE_DT": True}))


def _size(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def all_calls() -> list[tuple]:
    calls: list[tuple] = []
    # 1. every configuration, compiled once with the first dtype that selects it
    for n_inputs, kind, opts in KINDS:
        seen: set[tuple] = set()
        for dtype in ("fp32", "bf16"):
            for key, variants in sorted(representatives(n_inputs, _size(dtype)).items()):
                if key not in seen:
                    seen.add(key)
                    calls.append((kind, dtype, *_preferred(variants), opts))
    # 2. per path: every dtype, rows not a multiple of 16 wide, a single row, stride == 1
    for (n_inputs, kind, opts), dtype in itertools.product(KINDS, DTYPES):
        for variants in path_reps(n_inputs, _size(dtype)).values():
            shapes = [_preferred(variants)]
            if dtype != "fp16":
                shapes += [v for k, v in variants.items() if k != (True, False)]
            calls += [(kind, dtype, rows, cols, opts) for rows, cols in shapes]
            rows, cols = shapes[0]
            per_row = {"PER_ROW_T": True, "PER_ROW_SCALE": True} if kind == "ce" \
                else {"PER_ROW_T": True}
            calls.append((kind, dtype, rows, cols, {**opts, **per_row}))
            if kind != "ce":
                calls.append((kind, dtype, rows, cols, {**opts, "LOG": True}))
            elif dtype != "fp32":  # fp32 probability targets with 16-bit logits
                for grad, dt in itertools.product((False, True), repeat=2):
                    calls.append(("ce", dtype, rows, cols, {**BASE_CE, "PROB": True,
                                                            "COMPUTE_GRAD": grad,
                                                            "COMPUTE_DT": dt, "Q_FP32": True}))
            if kind == "ce":
                calls.append(("ce", dtype, rows, cols, {**BASE_CE, "INPLACE": True}))
    # 3. every combination of the cross-entropy flags, on each path
    for variants in path_reps(1, 2).values():
        rows, cols = _preferred(variants)
        for values in itertools.product((False, True), repeat=len(CE_FLAGS)):
            calls.append(("ce", "bf16", rows, cols, dict(zip(CE_FLAGS, values, strict=True))))
    # 4. the gradient rescale
    from tempfast.kernels.heuristics import elementwise_config

    shapes: dict[tuple, tuple] = {}
    for rows, cols in itertools.product(ROW_COUNTS, COL_COUNTS):
        if rows * cols <= MAX_ELEMENTS and (rows % 16 == 0 or rows < 16):
            variant = elementwise_config(rows, cols)
            if variant not in shapes or rows * cols < shapes[variant][0] * shapes[variant][1]:
                shapes[variant] = (rows, cols)
    for rows, cols in shapes.values():
        calls.append(("rescale", "fp32", rows, cols, {"PER_ROW_SCALE": False}))
    rows, cols = max(shapes.values(), key=lambda s: s[0] * s[1])
    for dtype, per_row, width in itertools.product(DTYPES, (False, True), (cols, cols + 1)):
        calls.append(("rescale", dtype, rows, width, {"PER_ROW_SCALE": per_row}))
    return calls


def _call(kind: str, dtype: str, rows: int, cols: int, opts: dict) -> None:
    from tempfast.ops import triton_impl

    dt = DTYPES[dtype]
    x = torch.empty(rows, cols, dtype=dt)
    t = torch.full((rows,) if opts.get("PER_ROW_T") else (1,), 8.0)
    if kind == "softmax":
        triton_impl.softmax_forward(x, t, opts["LOG"])
    elif kind == "softmax_bwd":
        triton_impl.softmax_backward(x, torch.empty_like(x), t, opts["LOG"],
                                     torch.empty_like(x) if opts["COMPUTE_DT"] else None)
    elif kind == "rescale":
        triton_impl.rescale_(x, torch.full((rows,) if opts["PER_ROW_SCALE"] else (1,), 2.0))
    else:
        if opts["PROB"]:
            target = torch.empty(rows, cols, dtype=torch.float32 if opts.get("Q_FP32") else dt)
        else:
            target = torch.zeros(rows, dtype=torch.int64)
        weight = torch.ones(cols) if opts["HAS_WEIGHT"] else None
        scale = None
        grad = None
        if opts["COMPUTE_GRAD"]:
            scale = torch.ones(rows if opts.get("PER_ROW_SCALE") else 1)
            grad = x if opts.get("INPLACE") else torch.empty_like(x)
        triton_impl.ce_rows(x, target, t, weight, -100, 0.1 if opts["SMOOTH"] else 0.0, scale,
                            grad, opts["COMPUTE_DT"])


def record_calls(calls: list[tuple]) -> list:
    """Run every call through the launchers; the distinct launches, in call order."""
    from bench.static.record import LaunchRecorder, triton_on_cpu

    recorder = LaunchRecorder()
    with triton_on_cpu(), recorder.active():
        for call in calls:
            _call(*call)
    unique: dict[tuple, object] = {}
    for launch in recorder.launches:
        unique.setdefault(launch.compile_key(), launch)
    return list(unique.values())


def compile_one(launch, arches) -> list[str]:
    from bench.static.compile import compile_binary

    errors = []
    for arch in arches:
        try:
            compiled = compile_binary(launch, arch)
            assert compiled.asm.get("cubin"), "no cubin produced"
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            errors.append(f"sm_{arch} {launch.name} {launch.constants} "
                          f"{launch.signature}: {first}")
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--list", action="store_true", help="print the launches, compile none")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: AOT compilation needs the real compiler", file=sys.stderr)
        return 2
    start = time.time()
    launches = record_calls(all_calls())
    if args.list:
        for launch in launches:
            print(launch.name, launch.num_warps, launch.constants, launch.signature)
        print(f"{len(launches)} distinct launches")
        return 0
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(compile_one, launches, itertools.repeat(args.arch)))
    errors = [e for r in results for e in r]
    for e in errors:
        print("FAIL", e)
    import triton

    print(f"compiled {len(launches)} distinct launches for sm_{args.arch} with triton "
          f"{triton.__version__} in {time.time() - start:.0f}s: {len(errors)} failures")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

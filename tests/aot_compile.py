"""Ahead-of-time compilation of every tempfast kernel variant the JIT can build, without a GPU.

Run as a script in a process *without* ``TRITON_INTERPRET`` (the interpreter forgives what the
compiler rejects): ``python tests/aot_compile.py [--arch 80 90] [--jobs 2]``.

What is compiled is what really runs: the script calls the real launchers (the ops'
``triton_path`` modules) on lazily allocated CPU tensors with every Triton launch
intercepted (``bench.static.record``), and compiles launches with the specialisation the JIT
computes for their arguments (Triton's own binder: 16-byte pointer alignment, integers
divisible by 16, integers equal to 1 as constexprs): every distinct program (kernel, warps,
constexprs, pointer dtypes) once, and every distinct specialisation of each kernel once
(:func:`covering`; ``--headline`` adds the static model's headline launches). The calls
cover:

* every launch configuration the heuristics can choose (path, block sizes, warps and, for the
  slices path, ``BLOCK_S``, both its cooperative launch and its two-phase fallback), in fp32
  and bf16, each with rows whose width is a multiple of 16 (aligned: 128-bit accesses), a
  multiple of 16 bytes only (the ``VEC`` hints) and neither, and with a single row where it
  selects the configuration (``n_rows == 1``);
* every combination of the cross-entropy feature flags (``REDUCE`` included: the prep kernel
  and the last-program reduction), fp32 probability targets with 16-bit logits, log-softmax,
  dL/dT, fp16, a temperature by value, and the ``stride == 1`` variants (a per-row
  temperature, a per-row upstream gradient) on one configuration of each path;
* the backward's gradient apply for every tile shape, every dtype and width variant, with and
  without dL/dT and with the deferred mean.

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
# The heuristics depend on next_pow2(rows), next_pow2(columns) and the slice count, so powers
# of two (and one past them) reach every configuration they can choose; widths that are a
# multiple of 8 but not 16 (C = 1000-like) select the 128-bit hints (VEC) on unaligned rows.
ROW_COUNTS = tuple(1 << i for i in range(14))
COL_COUNTS = tuple(sorted({c for i in range(21) for c in (1 << i, (1 << i) + 1)}
                          | {(1 << i) + 8 for i in range(4, 21)}))
CE_FLAGS = ("PROB", "HAS_WEIGHT", "SMOOTH", "COMPUTE_GRAD", "COMPUTE_DT", "REDUCE")
MAX_ELEMENTS = 1 << 31  # representative shapes stay below this (lazy, but address space)


def config_key(cfg) -> tuple:
    return (cfg.path, cfg.block_n, cfg.block_c, cfg.num_warps,
            cfg.block_s if cfg.path == "slices" else 0)


def _variant(rows: int, cols: int, elem_size: int) -> tuple:
    """What the JIT and the launcher specialise on: width a multiple of 16 elements, of 16
    bytes (the VEC hint), a single row."""
    from tempfast.kernels.heuristics import vector_width

    return (cols % 16 == 0, vector_width(cols, elem_size, cols) > 1, rows == 1)


def representatives(n_inputs: int, elem_size: int) -> dict[tuple, dict[tuple, tuple]]:
    """For every configuration the heuristics choose over the shape grid: one shape per
    specialisation variant, with a row count divisible by 16 where one selects it (else the
    smallest), and the fewest elements."""
    from tempfast.kernels.heuristics import row_config

    reps: dict[tuple, dict[tuple, tuple]] = {}
    for rows, cols in itertools.product(ROW_COUNTS, COL_COUNTS):
        if rows * cols > MAX_ELEMENTS:
            continue
        cfg = row_config(rows, cols, elem_size, None, n_inputs)
        variants = reps.setdefault(config_key(cfg), {})
        variant = _variant(rows, cols, elem_size)
        rank = (rows % 16 != 0 and rows != 1, rows * cols)
        if variant not in variants or rank < variants[variant][0]:
            variants[variant] = (rank, (rows, cols))
    return {key: {v: shape for v, (_, shape) in variants.items()} for key, variants in
            reps.items()}


def _preferred(variants: dict[tuple, tuple]) -> tuple[int, int]:
    """The natural shape of a configuration: aligned width, more than one row if possible."""
    order = sorted(variants, key=lambda v: (not v[0], not v[1], v[2]))
    return variants[order[0]]


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
           "COMPUTE_DT": False, "REDUCE": True}
KINDS = ((1, "ce", BASE_CE), (1, "softmax", {"LOG": False}),
         (2, "softmax_bwd", {"LOG": False, "COMPUTE_DT": False}),
         (3, "softmax_bwd", {"LOG": False, "COMPUTE_DT": True}))


def _size(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def _with_fallback(calls: list[tuple], path: str) -> list[tuple]:
    """The slices path runs one cooperative launch on a GPU; its two-phase fallback too."""
    if path != "slices":
        return calls
    return calls + [(k, d, r, c, {**o, "TWO_PHASE": True}) for k, d, r, c, o in calls]


def all_calls() -> list[tuple]:
    calls: list[tuple] = []
    # 1. every configuration, compiled once with the first dtype that selects it
    for n_inputs, kind, opts in KINDS:
        seen: set[tuple] = set()
        for dtype in ("fp32", "bf16"):
            for key, variants in sorted(representatives(n_inputs, _size(dtype)).items()):
                if key not in seen:
                    seen.add(key)
                    calls += _with_fallback([(kind, dtype, *_preferred(variants), opts)],
                                            key[0])
    # 2. per path: every dtype, every width variant, a single row, stride == 1
    for (n_inputs, kind, opts), dtype in itertools.product(KINDS, DTYPES):
        for path, variants in path_reps(n_inputs, _size(dtype)).items():
            shapes = [_preferred(variants)]
            if dtype != "fp16":
                shapes += [v for v in variants.values() if v != shapes[0]]
            mine = [(kind, dtype, rows, cols, opts) for rows, cols in shapes]
            rows, cols = shapes[0]
            per_row = {"PER_ROW_T": True, "PER_ROW_SCALE": True} if kind == "ce" \
                else {"PER_ROW_T": True}
            mine.append((kind, dtype, rows, cols, {**opts, **per_row}))
            if kind != "ce":
                mine.append((kind, dtype, rows, cols, {**opts, "LOG": True}))
                mine.append((kind, dtype, rows, cols, {**opts, "T_VALUE": True}))
            else:
                mine.append(("ce", dtype, rows, cols, {**BASE_CE, "REDUCE": False,
                                                       "PER_ROW_SCALE": True}))
                mine.append(("ce", dtype, rows, cols, {**BASE_CE, "INPLACE": True}))
                mine.append(("ce", dtype, rows, cols, {**BASE_CE, "T_VALUE": True,
                                                       "SUM": True}))
                if dtype != "fp32":  # fp32 probability targets with 16-bit logits
                    for grad, dt in itertools.product((False, True), repeat=2):
                        mine.append(("ce", dtype, rows, cols, {
                            **BASE_CE, "PROB": True, "COMPUTE_GRAD": grad, "COMPUTE_DT": dt,
                            "Q_FP32": True}))
            calls += _with_fallback(mine, path)
    # 3. every combination of the cross-entropy flags, on each path
    for path, variants in path_reps(1, 2).items():
        rows, cols = _preferred(variants)
        combos = [("ce", "bf16", rows, cols, dict(zip(CE_FLAGS, values, strict=True)))
                  for values in itertools.product((False, True), repeat=len(CE_FLAGS))]
        # soft-capping (its own constexpr; the z-loss is a run-time scalar): the plain and the
        # everything variants, reduced or not, class indices and probabilities, both dtypes
        everything = dict.fromkeys(CE_FLAGS, True)
        combos += [("ce", d, rows, cols, {**base, "SOFTCAP": True, "Z_LOSS": True})
                   for d in ("bf16", "fp32")
                   for base in (BASE_CE, {**BASE_CE, "REDUCE": False}, everything,
                                {**everything, "PROB": False}, {**everything, "REDUCE": False})]
        calls += _with_fallback(combos, path)
    # 4. the backward's gradient apply: every tile shape, every dtype and width variant,
    # with and without dL/dT, deferred mean or not
    from tempfast.kernels.rescale import apply_config

    shapes: dict[tuple, tuple] = {}
    for rows, cols in itertools.product(ROW_COUNTS, COL_COUNTS):
        if rows * cols <= MAX_ELEMENTS and (rows % 16 == 0 or rows < 16):
            variant = apply_config(rows, cols)[:3]
            if variant not in shapes or rows * cols < shapes[variant][0] * shapes[variant][1]:
                shapes[variant] = (rows, cols)
    for rows, cols in shapes.values():
        calls.append(("apply", "fp32", rows, cols, {}))
    rows, cols = max(shapes.values(), key=lambda s: s[0] * s[1])
    for dtype, n_dt, width in itertools.product(DTYPES, (0, 1, rows), (cols, cols + 1,
                                                                      cols + 8)):
        calls.append(("apply", dtype, rows, width, {"N_DT": n_dt, "DEFER": n_dt == 1}))
    return calls + distill_calls() + token_calls()


def _call(kind: str, dtype: str, rows: int, cols: int, opts: dict) -> None:
    from tempfast.kernels import common
    from tempfast.ops import launch, rescale
    from tempfast.ops.softmax import triton_path as softmax

    dt = DTYPES[dtype]
    x = torch.empty(rows, cols, dtype=dt)
    t = torch.full((rows,) if opts.get("PER_ROW_T") else (1,), 8.0)
    t_value = 8.0 if opts.get("T_VALUE") else 0.0
    override = launch.resident_override
    if opts.get("TWO_PHASE"):  # as on a device where the slices of a row cannot all fit
        launch.resident_override = lambda kernel, args, kwargs: 1
    try:
        if kind == "softmax":
            softmax.softmax_forward(x, t, opts["LOG"], t_value)
        elif kind == "softmax_bwd":
            softmax.softmax_backward(x, torch.empty_like(x), t, opts["LOG"],
                                     torch.empty_like(x) if opts["COMPUTE_DT"] else None,
                                     t_value)
        elif kind == "distill":
            _call_distill(x, t, opts)
        elif kind == "token":
            _call_token(x, t, t_value, opts)
        elif kind == "apply":
            ws = torch.zeros(common.WS_HEADER.value + 3 * rows)
            n_dt = opts.get("N_DT", 0)
            rescale.apply_kernel(x, torch.full((), 2.0), ws, common.WS_HEADER.value, n_dt,
                                 opts.get("DEFER", False))
        else:
            _call_ce(x, t, t_value, opts)
    finally:
        launch.resident_override = override


def _call_ce(x: torch.Tensor, t: torch.Tensor, t_value: float, opts: dict) -> None:
    from tempfast.ops.cross_entropy import triton_path as ce

    rows, cols = x.shape
    if opts["PROB"]:
        target = torch.empty(rows, cols, dtype=torch.float32 if opts.get("Q_FP32") else x.dtype)
    else:
        target = torch.zeros(rows, dtype=torch.int64)
    weight = torch.ones(cols) if opts["HAS_WEIGHT"] else None
    label_smoothing = 0.1 if opts["SMOOTH"] else 0.0
    grad = None
    if opts["COMPUTE_GRAD"]:
        grad = x if opts.get("INPLACE") else torch.empty_like(x)
    softcap = 30.0 if opts.get("SOFTCAP") else 0.0
    z_loss = 1e-4 if opts.get("Z_LOSS") else 0.0
    if opts["REDUCE"]:
        ce.ce_reduced(x, target, t, t_value, weight, -100, label_smoothing,
                      "sum" if opts.get("SUM") else "mean", grad, opts["COMPUTE_DT"],
                      x.dtype == torch.float16, softcap, z_loss)
    else:
        scale = torch.ones(rows if opts.get("PER_ROW_SCALE") else 1) if grad is not None \
            else None
        ce.ce_rows(x, target, t, weight, -100, label_smoothing, scale, grad, opts["COMPUTE_DT"],
                   softcap, z_loss)


def record_calls(calls: list[tuple]) -> list:
    """Run every call through the launchers; the distinct binaries' launches, in call order."""
    from bench.static.record import LaunchRecorder
    from bench.static.residency import triton_on_cpu

    recorder = LaunchRecorder()
    # the binary does not depend on the grid: no compile for the residency here
    with triton_on_cpu(resident=lambda kernel, args, kwargs: 4 * 132), recorder.active():
        for call in calls:
            _call(*call)
    unique: dict[tuple, object] = {}
    for launch in recorder.launches:
        unique.setdefault(launch.compile_key(), launch)
    return list(unique.values())


def configuration(launch) -> tuple:
    """What makes a different program of a kernel: its warps, its declared constexprs (the
    launch configuration and feature flags) and the dtypes of its pointers."""
    return (launch.name, launch.num_warps,
            tuple(sorted((k, repr(v)) for k, v in launch.constants.items() if k.isupper())),
            tuple(t for t in launch.signature.values() if t.startswith("*")))


def specialisation(launch) -> tuple:
    """What the JIT specialises a kernel on besides: integers equal to 1 (compiled as
    constants), 16-byte alignment of pointers and divisibility by 16 of integers, 32- or
    64-bit integers."""
    names = list(launch.signature)
    return (launch.name,
            tuple(sorted(k for k in launch.constants if not k.isupper())),
            tuple(sorted(names[path[0]] for path, value in launch.attrs.items() if value)),
            tuple(t for t in launch.signature.values() if t[0] in "iu"))


def covering(launches: list, required: list = ()) -> list:
    """The launches to compile: every ``required`` launch, then each configuration and each
    specialisation pattern of each kernel that they leave uncovered, once (its first launch:
    the calls put the natural, aligned shape first). A configuration is a different program; a
    specialisation changes the same program's constants and memory-access widths, which can
    break a compile only through the kernel's own code, so one configuration per pattern
    covers it (the product would compile each configuration again per pattern: 961 binaries
    instead of about 800)."""
    chosen = {launch.compile_key(): launch for launch in required}
    seen = {key for launch in required for key in (configuration(launch),
                                                   specialisation(launch))}
    for launch in launches:
        keys = {configuration(launch), specialisation(launch)}
        if not keys <= seen:
            seen |= keys
            chosen.setdefault(launch.compile_key(), launch)
    return list(chosen.values())


def headline_launches() -> list:
    """The launches of the static model's headline workloads (``bench.static.workloads``),
    with their own specialisations: compiled here into the same Triton cache, the budget check
    (``bench.static.budgets``) that follows finds every binary it reads already built."""
    from bench.static.workloads import headline_workloads, record

    return [launch for w in headline_workloads() for launch in record(w).launches]


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
    parser.add_argument("--headline", action="store_true",
                        help="also compile the static model's headline launches (for the "
                             "budget check that reuses the Triton cache)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: AOT compilation needs the real compiler", file=sys.stderr)
        return 2
    start = time.time()
    launches = covering(record_calls(all_calls()), headline_launches() if args.headline else ())
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



# --------------------------------------------------------------------------------------------
# The distillation kernels (kernels/distillation.py): every configuration distill_config can
# choose (rows: each BLOCK_C of DISTILL_BLOCKS; slices: the cooperative one-read launch, and
# both phases and the combine between them), plain KD in fp32 and bf16 and with EXTRAS (the
# hard-label term, the teacher's gradient, dL/dT: run-time flags inside one binary) in bf16;
# per path fp16, rows a multiple of 16 bytes only (VEC) and of neither, one row and a per-row
# temperature (stride 1).
# --------------------------------------------------------------------------------------------
def distill_shapes() -> dict[tuple, tuple[int, int]]:
    """One aligned shape per configuration: ``config_key -> (rows, cols)``."""
    from tempfast.kernels.distillation import DISTILL_BLOCKS, DISTILL_SLICE, distill_config

    shapes = {}
    for cols in (*DISTILL_BLOCKS, 2 * DISTILL_SLICE):
        rows = 32 if cols <= 32 else 16
        shapes[config_key(distill_config(rows, cols, 4))] = (rows, cols)
    return shapes


def distill_calls() -> list[tuple]:
    calls = []
    by_path: dict[str, tuple[int, int]] = {}
    for key, (rows, cols) in distill_shapes().items():
        mine = [("distill", d, rows, cols, {}) for d in ("fp32", "bf16")]
        mine.append(("distill", "bf16", rows, cols, {"EXTRAS": True}))
        calls += _with_fallback(mine, key[0])  # slices: the one-read launch and the fallback
        by_path.setdefault(key[0], (rows, cols))
    # the cooperative one-read launch (fp32): every combine tile it chooses, plain and EXTRAS
    from tempfast.kernels.distillation import DISTILL_COOP_BLOCK_S, DISTILL_COOP_SLICE

    low, high = DISTILL_COOP_BLOCK_S
    for block_s in (1 << i for i in range(low.bit_length() - 1, high.bit_length() + 1)):
        # (the last: two chunks of the widest tile, a combine loop the JIT does not unroll)
        calls += [("distill", "fp32", 16, block_s * DISTILL_COOP_SLICE, {"EXTRAS": e})
                  for e in (False, True)]
    for rows, cols in by_path.values():
        calls += [("distill", "fp32", rows, cols, {"EXTRAS": True}),
                  ("distill", "fp32", rows, cols - 1, {}),
                  ("distill", "fp32", 1, cols, {}),
                  ("distill", "fp16", rows, cols, {}),
                  ("distill", "bf16", rows, cols - 8, {}),
                  ("distill", "bf16", rows, cols - 1, {}),
                  ("distill", "bf16", 1, cols, {}),
                  ("distill", "fp32", rows, cols, {"PER_ROW_T": True})]
    return calls


def _call_distill(x: torch.Tensor, t: torch.Tensor, opts: dict) -> None:
    from tempfast.ops.distillation.triton_path import distill_rows

    rows = x.shape[0]
    extras = opts.get("EXTRAS", False)
    distill_rows(x, torch.empty_like(x), t, torch.zeros(rows, dtype=torch.int64) if extras
                 else None, -100, 0.5, torch.ones(1) if extras else None, extras, extras)


# --------------------------------------------------------------------------------------------
# The token kernels (kernels/token_logprobs.py): every BLOCK_C token_config can choose, one
# slice per row (FINAL, many rows) and several (the finish launch), forward with the entropy and
# backward with its terms and dL/dT, in bf16 and fp32; on the widest tile every flag
# combination, fp16, rows a multiple of 16 bytes only and of neither, one row, a per-token T
# and a temperature by value.
# --------------------------------------------------------------------------------------------
TOKEN_FLAGS = ("SOFTCAP", "ENTROPY", "HAS_GH", "COMPUTE_DT")


def token_calls() -> list[tuple]:
    from tempfast.kernels.token_logprobs import TOKEN_TILE

    everything = dict.fromkeys(TOKEN_FLAGS, True)
    calls = []
    for i in range(4, TOKEN_TILE.bit_length()):
        cols = 1 << i
        rows = 4 * 132 * (TOKEN_TILE // cols if cols < 256 else 1)  # row programs fill the SMs
        calls.append(("token", "bf16", rows, cols, everything))
    wide = 2 * TOKEN_TILE
    for rows in (16, 1024):  # slices and the finish launch; one slice per row (FINAL)
        calls += [("token", "bf16", rows, wide, dict(zip(TOKEN_FLAGS, v, strict=True)))
                  for v in itertools.product((False, True), repeat=len(TOKEN_FLAGS))]
        calls += [("token", "fp16", rows, wide, everything),
                  ("token", "bf16", rows, wide - 8, everything),
                  ("token", "bf16", rows, wide - 1, everything),
                  ("token", "fp32", rows, wide, {**everything, "PER_ROW_T": True}),
                  ("token", "bf16", rows, wide, {**everything, "T_VALUE": True})]
    calls.append(("token", "bf16", 1, wide, everything))
    return calls


def _call_token(x: torch.Tensor, t: torch.Tensor, t_value: float, opts: dict) -> None:
    from tempfast.ops.token_logprobs import triton_path as token

    rows = x.shape[0]
    y = torch.zeros(rows, dtype=torch.int64)
    cap = 30.0 if opts["SOFTCAP"] else 0.0
    t = None if t_value else t
    _lp, _h, lse = token.token_forward(x, y, t, t_value, cap, -100, opts["ENTROPY"])
    g = torch.ones(rows)
    token.token_backward(x, y, t, t_value, cap, -100, torch.zeros(rows), lse, g,
                         g if opts["HAS_GH"] else None, g, opts["COMPUTE_DT"])


if __name__ == "__main__":
    sys.exit(main())

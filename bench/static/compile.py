"""Compile a recorded launch for a GPU target and read what the binary says.

``compile_launch`` builds exactly the variant the JIT would build at run time:
``ASTSource(fn, signature, constexprs, attrs)`` from the recording (Triton's own binder and
``_pack_args``), options parsed by the target's backend from the launch's keyword arguments
(``num_warps``, ``num_stages``, ``debug``), ``triton.compile(src, target=GPUTarget("cuda",
arch, 32))``; sm_90 compiles for ``sm_90a``, as on an H100 / H200.

From the cubin, with the tools Triton ships (``backends/nvidia/bin``):

* registers per thread, stack and shared memory: ``cuobjdump -res-usage``;
* spill stores / loads (bytes): ``ptxas -v`` rerun on the PTX with Triton's own flags;
* SASS (``nvdisasm``): the instructions of the kernel body (NOPs and the trailing
  ``EXIT; BRA self`` excluded, subroutines reached by ``CALL`` counted apart), its loops
  (a backward branch ``BRA`` to an earlier label closes a loop ``[label, branch]``; the
  innermost loops are the hot loops), and the widths of the global loads and stores
  (``LDG.E.128`` = 128 bits; no suffix = 32 bits; ``.U16`` / ``.64`` ...) in each hot loop and in
  the whole kernel.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .record import Launch

ARCHES = (90, 80)


@functools.lru_cache(maxsize=1)
def _bin_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _tool(name: str) -> str:
    path = _bin_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found beside Triton ({path})")
    return str(path)


@dataclass(frozen=True)
class Loop:
    """One innermost loop of the SASS: instructions between the branch target and the
    backward branch, and the global accesses in it (``{"LDG": [bits...], "STG": [...]}``)."""

    start: int
    end: int
    instructions: int
    accesses: dict[str, list[int]]
    syncs: int = 0  # BAR and SHFL: on-chip round trips a block-wide reduction waits on


@dataclass(frozen=True)
class SassReading:
    instructions: int  # kernel body, NOPs excluded
    subroutine_instructions: int  # after the body's EXIT (reached by CALL: slow paths)
    loops: list[Loop]
    accesses: dict[str, list[int]]  # global load / store widths (bits) in the whole body
    local_accesses: int  # LDL / STL (spill traffic) instructions
    mufu: int  # MUFU (exp2, rcp, lg2) instructions in the body
    all_loops: list[Loop] = field(default_factory=list)  # every loop, outer ones included
    tail_exit: int | None = None  # the first predicated EXIT after the body's last atomic
    before_tail: int = 0  # body instructions up to it (all of them if none)
    syncs: int = 0  # BAR and SHFL instructions in the body
    mma: int = 0  # tensor-core instructions (HMMA, HGMMA, IMMA, ...: a tl.dot) in the body

    def outermost(self) -> list[Loop]:
        """Loops contained in no other loop."""
        return [lp for lp in self.all_loops
                if not any(o is not lp and o.start <= lp.start and lp.end <= o.end
                           for o in self.all_loops)]


@dataclass(frozen=True)
class KernelReading:
    """What the binary of one launch says on one target."""

    name: str
    arch: str
    num_warps: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    sass: SassReading
    constants: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


_ADDR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\b(BRA|BRX|JMP)\b.*?(\.L_x_\d+)")
_GLOBAL = re.compile(r"\b(LDG|STG|LD|ST)\b((?:\.[A-Z0-9_]+)*)")
_WIDTHS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def _width(suffixes: str) -> int:
    for part in suffixes.split("."):
        if part in _WIDTHS:
            return _WIDTHS[part]
    return 32


def parse_sass(text: str) -> SassReading:
    """Read the instruction stream of ``nvdisasm`` output (one kernel)."""
    labels: dict[str, int] = {}
    instrs: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _ADDR.search(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for name in pending:
            labels[name] = addr
        pending = []
        instrs.append((addr, m.group(2)))
    # the body ends at the last EXIT that precedes the final self-branch; what follows are
    # subroutines reached by CALL (division / sqrt slow paths) and padding
    body_end = len(instrs)
    for i in range(len(instrs) - 1, -1, -1):
        op = instrs[i][1]
        if re.search(r"\bEXIT\b", op) and not op.startswith("@"):
            body_end = i + 1
            break
    body = [(a, op) for a, op in instrs[:body_end] if not re.match(r"^NOP\b", op)]
    rest = [(a, op) for a, op in instrs[body_end:]
            if not re.match(r"^NOP\b", op) and not _is_self_branch(a, op, labels)]
    loops = []
    for addr, op in body:
        m = _BRANCH.search(op)
        if m and m.group(2) in labels and labels[m.group(2)] < addr:
            start = labels[m.group(2)]
            inside = [o for a, o in body if start <= a <= addr]
            loops.append(Loop(start, addr, len(inside), _accesses(inside), _syncs(inside)))
    innermost = [lp for lp in loops
                 if not any(o is not lp and lp.start <= o.start and o.end <= lp.end
                            for o in loops)]
    ops = [op for _, op in body]
    # a "last block" epilogue: an atomic counter, then the programs that were not last exit
    atomics = [a for a, op in body if re.search(r"\b(ATOMG|ATOM|RED)\b", op)]
    exits = [a for a, op in body if re.search(r"\bEXIT\b", op) and op.startswith("@")
             and atomics and a > atomics[-1]]
    tail_exit = exits[0] if exits else None
    before = len(body) if tail_exit is None else sum(a <= tail_exit for a, _ in body)
    return SassReading(len(body), len(rest), innermost, _accesses(ops),
                       sum(bool(re.search(r"\b(LDL|STL)\b", op)) for op in ops),
                       sum(bool(re.search(r"\bMUFU\b", op)) for op in ops), loops, tail_exit,
                       before, _syncs(ops), sum(bool(_MMA.search(op)) for op in ops))


_MMA = re.compile(r"\b(HMMA|HGMMA|IMMA|IGMMA|DMMA|QGMMA|BMMA)\b")


def _syncs(ops: list[str]) -> int:
    return sum(bool(re.search(r"\b(BAR|SHFL)\b", op)) for op in ops)


def _is_self_branch(addr: int, op: str, labels: dict[str, int]) -> bool:
    m = _BRANCH.search(op)
    return bool(m and labels.get(m.group(2)) == addr)


def _accesses(ops: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"LDG": [], "STG": []}
    for op in ops:
        m = _GLOBAL.search(op.split(" ", 1)[-1] if op.startswith("@") else op)
        if m and m.group(1) in ("LDG", "STG"):
            out[m.group(1)].append(_width(m.group(2)))
    return out


def _resources(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {"registers": int(fields.get("REG", 0)), "stack": int(fields.get("STACK", 0)),
            "shared_static": int(fields.get("SHARED", 0)), "sass": sass}


@functools.lru_cache(maxsize=1)
def _reg_alloc_flags() -> tuple[str, ...]:
    """``--regAllocOptLevel=2`` where this Triton's ``make_cubin`` passes it (3.8, not 3.6)."""
    import inspect

    from triton.backends.nvidia.compiler import CUDABackend

    source = inspect.getsource(CUDABackend.make_cubin)
    return ("--regAllocOptLevel=2",) if "--regAllocOptLevel=2" in source else ()


def _ptxas_spills(ptx: str, arch: int, gpu_name: str) -> tuple[int, int]:
    """``ptxas -v`` spill bytes (stores, loads), with the flags Triton's ``make_cubin`` uses."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    flags = ["-lineinfo", "-v", *_reg_alloc_flags()]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [ptxas, *flags, f"--gpu-name={gpu_name}", str(src), "-o",
               str(src.with_suffix(".o"))]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def compile_binary(launch: Launch, arch: int):
    """``triton.compile`` of the JIT's variant of ``launch`` for ``sm_<arch>``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .record import make_backend

    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options(dict(launch.kwargs))
    src = ASTSource(launch.kernel(), dict(launch.signature), dict(launch.constexprs),
                    dict(launch.attrs))
    return triton.compile(src, target=target, options=options.__dict__)


_CACHE: dict[tuple, KernelReading] = {}


def read_launch(launch: Launch, arch: int) -> KernelReading:
    """Compile ``launch`` for ``sm_<arch>`` and read the binary (cached per compile key)."""
    key = (launch.compile_key(), arch)
    if key in _CACHE:
        return _CACHE[key]
    compiled = compile_binary(launch, arch)
    res = _resources(compiled.asm["cubin"])
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    stores, loads = _ptxas_spills(compiled.asm["ptx"], arch, sm)
    shared = max(int(compiled.metadata.shared), res["shared_static"])
    reading = KernelReading(launch.name, sm, launch.num_warps, res["registers"], stores, loads,
                            res["stack"], shared, parse_sass(res["sass"]),
                            {k: v for k, v in launch.constants.items()})
    _CACHE[key] = reading
    return reading


def cache_dir_note() -> str:
    return os.environ.get("TRITON_CACHE_DIR", "~/.triton/cache")

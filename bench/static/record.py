"""Record every Triton launch the real public ops make, without running it.

The tool never hard-codes the kernels or their argument types: it runs ``tempfast.softmax``,
``tempfast.cross_entropy`` and ``tempfast.linear_cross_entropy`` (forward and backward) with the
Triton backend forced on CPU tensors, in a process *without* ``TRITON_INTERPRET``, while
:class:`LaunchRecorder` replaces ``JITFunction.run``. For each ``kernel[grid](*args, **kw)`` it
keeps the grid, the tensor arguments' shapes / dtypes / addresses, the scalars, and the
specialisation the JIT would compile for those arguments on a CUDA target, computed by Triton's
own machinery: the binder ``create_function_from_signature(fn.signature, fn.params, backend)``
(pointer alignment to 16 bytes, integers divisible by 16, integers equal to 1 as constexprs)
and ``JITFunction._pack_args`` (signature, constexprs, attributes). The kernel does not run.

CPU tensors stand in for CUDA ones: ``torch.empty`` on the CPU is lazy (pages are mapped only
when touched) and nothing reads the logits while the launches are intercepted, so an
``8192 x 262144`` bf16 case costs no memory. Their addresses are 64-byte aligned like (or less
than) the CUDA caching allocator's 512 bytes, and views keep the same offsets, so the alignment
keys match the ones a GPU run computes. The SM count the heuristics see is their default (132,
the H100 SXM and H200 count).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction, create_function_from_signature

SMALL_VALUES = 64  # tensors up to this many elements keep their values (e.g. the upstream grad)
RECORD_TARGET = GPUTarget("cuda", 90, 32)  # the binder's backend; its keys are arch-independent


def make_backend(target: GPUTarget):
    from triton.compiler.compiler import make_backend

    return make_backend(target)


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a launch (no data, except the values of tiny tensors)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    itemsize: int
    data_ptr: int
    storage_ptr: int
    values: tuple[float, ...] | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorArg:
        values = None
        if t.numel() <= SMALL_VALUES:
            values = tuple(float(v) for v in t.detach().reshape(-1).tolist())
        return cls(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."),
                   t.element_size(), t.data_ptr(), t.untyped_storage().data_ptr(), values)


@dataclass(frozen=True)
class Launch:
    """One intercepted ``kernel[grid](...)``: what to compile and what it touches.

    ``signature`` / ``constexprs`` / ``attrs`` are exactly what ``JITFunction.run`` passes to
    ``ASTSource`` for these arguments; ``kwargs`` the launch options (``num_warps``,
    ``num_stages``, ``debug``, ...) to parse per target.
    """

    module: str
    name: str
    grid: tuple[int, int, int]
    tensors: dict[str, TensorArg]
    scalars: dict[str, Any]
    signature: dict[str, str]
    constexprs: dict[tuple, Any]
    attrs: dict[tuple, Any]
    kwargs: dict[str, Any]
    phase: str = ""

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def num_warps(self) -> int:
        return int(self.kwargs.get("num_warps", 4))

    @property
    def constants(self) -> dict[str, Any]:
        """The constexprs by parameter name (``BLOCK_C``, flags, integers equal to 1)."""
        names = list(self.signature)
        return {names[path[0]]: value for path, value in self.constexprs.items()}

    def compile_key(self) -> tuple:
        """What decides the compiled binary (for de-duplication and caching)."""
        opts = tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))
        return (self.module, self.name, tuple(self.signature.items()),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())),
                tuple(sorted((k, repr(v)) for k, v in self.attrs.items())), opts)

    def kernel(self) -> JITFunction:
        import importlib

        return getattr(importlib.import_module(self.module), self.name)


def _grid3(grid, bound_args) -> tuple[int, int, int]:
    if callable(grid):
        grid = grid(bound_args)
    grid = tuple(int(g) for g in grid)
    return (*grid, 1, 1, 1)[:3]


def _jit_kwargs(fn: JITFunction, kwargs: dict) -> dict:
    """The two options ``JITFunction.run`` adds before binding (Triton 3.6 and 3.8)."""
    from triton import knobs

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    return kwargs


class Specialiser:
    """Triton's own binder and argument packing for a CUDA target, cached per kernel."""

    def __init__(self, target: GPUTarget = RECORD_TARGET) -> None:
        self.backend = make_backend(target)
        self._binders: dict[int, Any] = {}

    def __call__(self, fn: JITFunction, args: tuple, kwargs: dict):
        binder = self._binders.get(id(fn))
        if binder is None:
            binder = create_function_from_signature(fn.signature, fn.params, self.backend)
            self._binders[id(fn)] = binder
        kwargs = _jit_kwargs(fn, kwargs)
        bound_args, specialization, options = binder(*args, **kwargs)
        _opts, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound_args,
                                                            specialization, options)
        return bound_args, signature, constexprs, attrs, kwargs


@dataclass
class LaunchRecorder:
    """Context manager: while active, ``kernel[grid](...)`` records a :class:`Launch` into
    ``launches`` (tagged with ``phase``) instead of compiling and running the kernel."""

    phase: str = ""
    launches: list[Launch] = field(default_factory=list)
    specialiser: Specialiser = field(default_factory=Specialiser)

    def record(self, fn: JITFunction, args: tuple, grid, kwargs: dict) -> None:
        from torch.utils._python_dispatch import _disable_current_modes

        bound, signature, constexprs, attrs, kw = self.specialiser(fn, args, kwargs)
        with _disable_current_modes():  # reading tiny tensors' values is not the op's work
            tensors = {k: TensorArg.of(v) for k, v in bound.items()
                       if isinstance(v, torch.Tensor)}
        scalars = {k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}
        options = {k: v for k, v in kw.items() if k not in signature}
        self.launches.append(Launch(fn.fn.__module__, fn.fn.__name__, _grid3(grid, bound),
                                    tensors, scalars, signature, constexprs, attrs, options,
                                    self.phase))

    @contextlib.contextmanager
    def active(self) -> Iterator[LaunchRecorder]:
        recorder = self

        def run(fn, *args, grid, warmup, **kwargs):
            recorder.record(fn, args, grid, kwargs)

        original = JITFunction.run
        JITFunction.run = run
        try:
            yield self
        finally:
            JITFunction.run = original


_SPECIALISER: list = []


def launch_of(fn: JITFunction, args: tuple, kwargs: dict) -> Launch:
    """The :class:`Launch` (grid ``(1, 1, 1)``, no tensor records) of a call the JIT would
    compile for these arguments: what decides its binary."""
    if not _SPECIALISER:
        _SPECIALISER.append(Specialiser())
    _bound, signature, constexprs, attrs, kw = _SPECIALISER[0](fn, args, kwargs)
    options = {k: v for k, v in kw.items() if k not in signature}
    return Launch(fn.fn.__module__, fn.fn.__name__, (1, 1, 1), {}, {}, signature, constexprs,
                  attrs, options)


@dataclass(frozen=True)
class Gemm:
    """One matrix product a call made: ``(m x k) @ (k x n)``, operands of ``itemsize`` bytes,
    the result of ``out_itemsize`` bytes (read too when accumulated into: ``accumulates``)."""

    phase: str
    m: int
    n: int
    k: int
    itemsize: int
    out_itemsize: int
    accumulates: bool

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def bytes(self) -> int:
        """Operands read once, the result written (and read when accumulated into)."""
        out = self.m * self.n * self.out_itemsize * (2 if self.accumulates else 1)
        return (self.m * self.k + self.k * self.n) * self.itemsize + out


@dataclass
class GemmLog:
    """The matrix products of a recorded call, with the phase they ran in."""

    phase: str = ""
    gemms: list[Gemm] = field(default_factory=list)

    def add(self, a, b, out_dtype, accumulates: bool):
        out_size = torch.empty((), dtype=out_dtype).element_size()
        self.gemms.append(Gemm(self.phase, a.shape[0], b.shape[1], a.shape[1], a.element_size(),
                               out_size, accumulates))


def _stubs(log: GemmLog) -> dict:
    """Shape-only stand-ins of aten's matrix products that log each product."""

    def mm(a, b):
        log.add(a, b, a.dtype, False)
        return a.new_empty((a.shape[0], b.shape[1]))

    def mm_out(a, b, *, out):
        log.add(a, b, out.dtype, False)
        return out

    def mm_dtype(a, b, out_dtype):
        log.add(a, b, out_dtype, False)
        return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)

    def addmm(c, a, b, *, beta=1, alpha=1):
        log.add(a, b, a.dtype, False)
        return a.new_empty((a.shape[0], b.shape[1]))

    def addmm_(c, a, b, *, beta=1, alpha=1):
        log.add(a, b, c.dtype, beta != 0)
        return c

    def addmm_out(c, a, b, *, beta=1, alpha=1, out):
        log.add(a, b, out.dtype, beta != 0)
        return out

    def addmm_dtype_out(c, a, b, out_dtype, *, beta=1, alpha=1, out):
        log.add(a, b, out.dtype, beta != 0)
        return out

    def mul_out(a, b, *, out):  # the weight gradient's conversion: C x H, values unused
        return out

    return {"mm": mm, "mm.out": mm_out, "mm.dtype": mm_dtype, "addmm": addmm, "addmm_": addmm_,
            "addmm.out": addmm_out, "addmm.dtype_out": addmm_dtype_out, "mul.out": mul_out}


@contextlib.contextmanager
def no_gemm(log: GemmLog | None = None) -> Iterator[GemmLog]:
    """Replace aten's CPU matrix products (and ``mul.out``, the head's ``C x H`` weight
    gradient conversion) with shape-only stubs (results uninitialised) that log each
    product's shape (:class:`GemmLog`), and let the fused linear head accumulate
    16-bit products into fp32 as cuBLAS does (``addmm(..., out_dtype=float32)``), so that its
    ops are those of a GPU call.

    The linear head's GEMMs would take minutes on a CPU; the model reads the cross-entropy's
    launches, whose shapes, not values, it needs, and times the GEMMs from their shapes. The
    stubs sit below autograd and below any dispatch mode, so the op layer sees a plain eager
    call."""
    from tempfast.ops.linear_cross_entropy import op as linear_op

    log = log if log is not None else GemmLog()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = torch.library.Library("aten", "IMPL")
        for name, fn in _stubs(log).items():
            lib.impl(name, fn, "CPU")
    original = linear_op.gemm_accumulates_in_fp32
    linear_op.gemm_accumulates_in_fp32 = lambda device: True
    try:
        yield log
    finally:
        linear_op.gemm_accumulates_in_fp32 = original
        lib._destroy()


def triton_version() -> str:
    return triton.__version__

"""Fused linear head cases: ``loss = CE((h @ W.T + b) / T, y)`` forward + backward.

Inputs: ``h (N, H) = T * randn / sqrt(H)``, ``W (C, H) = randn`` (so the logits are about
``T * randn`` and ``z / T`` about standard normal, as in :mod:`bench.cases`), ``b (C,) = randn``
when the case has a bias, ``y (N,)`` uniform class indices, ``T = 8``. The timed step is the
mean loss and its backward: ``dh``, ``dW`` (and ``db``).

Work: three GEMMs of ``2 N H C`` flops each (logits, ``dh``, ``dW``), ``flops = 6 N H C`` (the
bias, the softmax and the loss are not counted). The copy floor means nothing here (the step
is compute-bound), so the report gives TFLOP/s, peak memory and speedups.

Providers: ``tempfast`` (``tempfast.linear_cross_entropy``: row chunks, logits never whole),
``torch_eager`` (``F.cross_entropy(F.linear(h, W, b) / T, y)``), ``torch_compile``
(``torch.compile(..., dynamic=False)`` of the eager function, compiled for the exact shape
before timing) and ``liger_h_div_t`` (Liger-Kernel's ``liger_fused_linear_cross_entropy``
applied to ``h / T`` with bias ``b / T``: it has no temperature, and ``(h / T) @ W.T + b / T
= (h @ W.T + b) / T``, so this is the same loss; the two divisions are part of its time).

:data:`MEMORY_SPECS` is the issue's CPU memory case (N = 8192, H = 1024, C = 65536, fp32):
too slow to time in rounds on a small CPU, it runs one step per provider in the memory worker
(:mod:`bench.memory`), which measures the peak RSS and returns :func:`fingerprint` s of the
loss and the gradients.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import tempfast
from tempfast import backend, reference

from .cases import DTYPES, REFERENCE_CHUNK_ELEMENTS, TEMPERATURE, assert_close

OP = "linear_ce_fwd_bwd"
MEMORY_OP = "linear_ce_memory"
PROVIDERS = ("tempfast", "torch_eager", "torch_compile", "liger_h_div_t")
# (N, H, C, bias, dtype): the first CUDA shape is the target.
SHAPES = {
    "cuda": ((8192, 4096, 128256, False, "bf16"), (8192, 2048, 32000, True, "bf16")),
    "cpu": ((512, 256, 4096, True, "bf16"), (512, 256, 4096, True, "fp32")),
}
TARGET_SHAPE = (8192, 4096, 128256, "bf16", "cuda")
MEMORY_SHAPE = (8192, 1024, 65536, True, "fp32")
WARM_UP_ROWS = 64
FINGERPRINT_VALUES = 4096


@dataclass(frozen=True)
class LinearSpec:
    """What one fused-head case runs; ``memory_only``: one step in the memory worker."""

    provider: str
    rows: int
    hidden: int
    classes: int
    bias: bool
    dtype: str
    device: str
    memory_only: bool = False

    @property
    def op(self) -> str:
        return MEMORY_OP if self.memory_only else OP

    @property
    def shape_id(self) -> str:
        bias = "-bias" if self.bias else ""
        return f"N{self.rows}-H{self.hidden}-C{self.classes}{bias}-{self.dtype}"

    @property
    def id(self) -> str:
        return f"{self.op}-{self.shape_id}-{self.provider}"

    @property
    def group_name(self) -> str:
        bias = " bias" if self.bias else ""
        return (f"{self.op} N={self.rows} H={self.hidden} C={self.classes}{bias} "
                f"{self.dtype} {self.device}")

    @property
    def flops(self) -> int:
        return 6 * self.rows * self.hidden * self.classes

    @property
    def headline(self) -> bool:
        """The issue's target shape: run before the other cases of the group."""
        return (self.rows, self.hidden, self.classes, self.dtype, self.device) == TARGET_SHAPE

    def warm_up_spec(self) -> LinearSpec:
        """A few rows of the same case: warms thread pools and allocators cheaply."""
        return dataclasses.replace(self, rows=min(self.rows, WARM_UP_ROWS))

    def extra_info(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "op": self.op, "flops": self.flops,
                "temperature": TEMPERATURE}


def all_specs(device: str) -> list[LinearSpec]:
    """The timed cases of ``device``: each shape with every provider."""
    return [LinearSpec(p, n, h, c, bias, dtype, device)
            for n, h, c, bias, dtype in SHAPES[device] for p in PROVIDERS]


MEMORY_SPECS = {p: LinearSpec(p, *MEMORY_SHAPE, device="cpu", memory_only=True)
                for p in ("torch_eager", "tempfast")}


def liger_fused_linear_ce() -> Callable | None:
    """Liger-Kernel's fused linear cross entropy, or None when it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def skip_reason(spec: LinearSpec) -> str | None:
    """Why a case cannot be benchmarked here, or None."""
    if spec.provider == "liger_h_div_t":
        if spec.device != "cuda":
            return ("Liger-Kernel is Triton-only: on CPU only the Triton interpreter could run "
                    "it, and the interpreter is not a benchmark")
        if liger_fused_linear_ce() is None:
            return "liger_kernel is not installed"
    if spec.provider == "tempfast" and spec.device == "cpu" and backend.get_backend() == "triton":
        return ("TEMPFAST_BACKEND=triton runs the Triton interpreter on CPU tensors, and the "
                "interpreter is not a benchmark")
    return None


def _eager(h: Tensor, w: Tensor, b: Tensor | None, y: Tensor) -> Tensor:
    return F.cross_entropy(F.linear(h, w, b) / TEMPERATURE, y)


def _row_chunks(rows: int, classes: int) -> list[slice]:
    step = max(1, REFERENCE_CHUNK_ELEMENTS // classes)
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


class LinearCase:
    """The inputs of one spec, its timed ``step`` and its correctness ``check``."""

    def __init__(self, spec: LinearSpec, seed: int = 0) -> None:
        self.spec = spec
        device = torch.device(spec.device)
        dtype = DTYPES[spec.dtype]
        gen = torch.Generator(device=device).manual_seed(seed)
        scale = TEMPERATURE / math.sqrt(spec.hidden)
        self.h = (torch.randn(spec.rows, spec.hidden, generator=gen, device=device) * scale) \
            .to(dtype).requires_grad_(True)
        self.w = torch.randn(spec.classes, spec.hidden, generator=gen, device=device,
                             dtype=dtype).requires_grad_(True)
        self.b = torch.randn(spec.classes, generator=gen, device=device,
                             dtype=dtype).requires_grad_(True) if spec.bias else None
        self.y = torch.randint(0, spec.classes, (spec.rows,), generator=gen, device=device)
        self.forward = self._forward_fn()

    @property
    def params(self) -> tuple[Tensor, ...]:
        return (self.h, self.w) if self.b is None else (self.h, self.w, self.b)

    def _forward_fn(self) -> Callable[[], Tensor]:
        provider, h, w, b, y = self.spec.provider, self.h, self.w, self.b, self.y
        if provider == "tempfast":
            return lambda: tempfast.linear_cross_entropy(h, w, y, b, TEMPERATURE)
        if provider == "liger_h_div_t":
            liger = liger_fused_linear_ce()
            return lambda: liger(h / TEMPERATURE, w, y,
                                 bias=None if b is None else b / TEMPERATURE)
        if provider == "torch_compile":
            torch._dynamo.reset()
            compiled = torch.compile(_eager, dynamic=False)
            return lambda: compiled(h, w, b, y)
        return lambda: _eager(h, w, b, y)

    def reset(self) -> None:
        """Drop the gradients of the last step, so that a step never accumulates into them."""
        for p in self.params:
            p.grad = None

    def step(self) -> Tensor:
        """The timed work: the loss and its backward."""
        self.reset()
        loss = self.forward()
        loss.backward()
        return loss

    def reference(self) -> tuple[Tensor, ...]:
        """``(loss, dh, dW[, db])`` of :func:`tempfast.reference.linear_cross_entropy` in fp32,
        row chunk by row chunk (bounded memory; dW and db summed over the chunks)."""
        w = self.w.detach().float().requires_grad_(True)
        b = None if self.b is None else self.b.detach().float().requires_grad_(True)
        loss = torch.zeros((), device=w.device)
        dh = torch.empty(self.h.shape, device=w.device)
        dw, db = torch.zeros_like(w), None if b is None else torch.zeros_like(b)
        for rows in _row_chunks(self.spec.rows, self.spec.classes):
            h = self.h[rows].detach().float().requires_grad_(True)
            part = reference.linear_cross_entropy(h, w, self.y[rows], b, TEMPERATURE,
                                                  reduction="sum") / self.spec.rows
            grads = torch.autograd.grad(part, (h, w) if b is None else (h, w, b))
            loss += part.detach()
            dh[rows] = grads[0]
            dw += grads[1]
            if b is not None:
                db += grads[2]
        return (loss, dh, dw) if b is None else (loss, dh, dw, db)

    def check(self) -> None:
        """Run one step and compare the loss and the gradients of h, W (and b) with
        :meth:`reference`; raises AssertionError (tolerances: ``bench.cases.TOLERANCES``)."""
        loss = self.step()
        expected = self.reference()
        names = ("loss", "h.grad", "W.grad", "b.grad")
        actual = (loss, *(p.grad for p in self.params))
        for name, got, want in zip(names, actual, expected, strict=False):
            assert_close(self.spec.id, name, got, want, self.spec.dtype)


def fingerprint(case: LinearCase, loss: Tensor) -> dict[str, list[float]]:
    """The loss and, per gradient, its fp64 norm (``"<name> norm"``) and
    :data:`FINGERPRINT_VALUES` of its entries at a fixed stride: enough to compare two
    full-size runs made in other processes."""
    out = {"loss": [float(loss.detach())]}
    for name, p in zip(("h.grad", "W.grad", "b.grad"), case.params, strict=False):
        flat = p.grad.detach().reshape(-1)
        stride = max(1, flat.numel() // FINGERPRINT_VALUES)
        out[name] = flat[::stride][:FINGERPRINT_VALUES].tolist()
        out[f"{name} norm"] = [float(torch.linalg.vector_norm(flat, dtype=torch.float64))]
    return out


def assert_same_fingerprint(spec: LinearSpec, actual: dict[str, list[float]],
                            expected: dict[str, list[float]]) -> None:
    """Every entry of two :func:`fingerprint` s within the tolerances of
    :func:`bench.cases.assert_close`."""
    assert actual.keys() == expected.keys(), f"{spec.id}: fingerprints of different tensors"
    for name, values in expected.items():
        assert_close(spec.id, name, torch.tensor(actual[name], dtype=torch.float64),
                     torch.tensor(values, dtype=torch.float64), spec.dtype)

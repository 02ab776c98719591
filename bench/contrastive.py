"""Contrastive loss cases: CLIP's loss (``contrastive_fwd_bwd``) and SimCLR's NT-Xent
(``nt_xent_fwd_bwd``), forward + backward, against the usual composition of PyTorch ops.

Inputs: features ``a``, ``b`` (NT-Xent: the two views ``z1``, ``z2`` of ``B`` examples) of
shape ``(B, D)``, ``F.normalize(randn, dim=1)`` once when the inputs are built (unit rows; the
normalisation is not part of any provider's time), and the temperature ``t``, a 0-dim fp32
tensor with grad, the same for every provider: 0.07 for CLIP, 0.5 for NT-Xent. The timed step
is the mean loss and its backward: the gradients of ``a``, ``b`` and ``t``.

Work (counted as the static model counts it, :func:`bench.static.analysis.head_flops_and_bytes`):
CLIP makes the ``B x B`` similarities once for both directions, plus two gradient products,
``flops = 6 B^2 D``; NT-Xent makes ``s = z z^T`` over the ``2B`` views and ``dz = (ds + ds^T) z``,
``flops = 4 (2B)^2 D``. The report gives TFLOP/s, peak memory and speedups.

Providers: ``tempfast`` (``tempfast.contrastive_loss`` / ``tempfast.nt_xent_loss``: chunks of
rows, the similarities never whole), ``torch_eager`` (:func:`clip_composition`,
:func:`nt_xent_composition`) and ``torch_compile`` (``torch.compile(..., dynamic=False)`` of
the eager function, compiled before timing).

Shapes (:data:`BATCHES`, ``D = 768``): on CUDA bf16, ``B`` in {4096, 16384, 65536}; on CPU
fp32 only, ``B`` in {1024, 4096} (a CPU bf16 matrix product runs about 80 times slower than an
fp32 one: 2.8 s against 33 ms for 1024 x 768 x 1024 on the 2-core machine).

Correctness, before timing: the loss and the gradients of ``a``, ``b`` and ``t`` against the
float64 reference (:func:`tempfast.reference.contrastive_loss`,
:func:`tempfast.reference.nt_xent_loss`, which build the whole matrix) on the same inputs, with
:data:`bench.cases.TOLERANCES` (fp32: tight, bf16: loose). Up to ``B = 8192`` on the whole
batch; above it the float64 matrix would not fit (34 GB at ``B = 65536``), so the provider's
function runs on the first :data:`CHECK_ROWS` rows of ``a`` and ``b`` (NT-Xent: of ``z1`` and
``z2``) and is compared with the reference on that slice.

Out of memory: a baseline whose step runs out of CUDA memory is skipped with the reason
:func:`out_of_memory_reason` writes; the report finds it among the skip reasons
(:func:`out_of_memory_ids`) and shows ``OOM`` for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import tempfast
from tempfast import backend, reference

from .cases import DTYPES, assert_close

OPS = ("contrastive_fwd_bwd", "nt_xent_fwd_bwd")
PROVIDERS = ("tempfast", "torch_eager", "torch_compile")
BASELINES = ("torch_eager", "torch_compile")
DIM = 768
BATCHES = {"cuda": (4096, 16384, 65536), "cpu": (1024, 4096)}
DEVICE_DTYPE = {"cuda": "bf16", "cpu": "fp32"}
TEMPERATURES = {"contrastive_fwd_bwd": 0.07, "nt_xent_fwd_bwd": 0.5}
FULL_CHECK_MAX_BATCH = 8192
CHECK_ROWS = 4096
SEED = 0
OUT_OF_MEMORY = "out of memory: "


@dataclass(frozen=True)
class ContrastiveSpec:
    """What one contrastive case runs: ``batch`` examples of ``dim`` features (NT-Xent: two
    views of each)."""

    op: str
    provider: str
    batch: int
    dim: int
    dtype: str
    device: str

    @classmethod
    def from_info(cls, info: dict) -> ContrastiveSpec:
        """The spec whose :meth:`extra_info` is ``info``."""
        return cls(**{f.name: info[f.name] for f in dataclasses.fields(cls)})

    @property
    def rows(self) -> int:
        """The batch ``B``: the static model's ``N`` (``bench/static/workloads.py``)."""
        return self.batch

    @property
    def classes(self) -> int:
        """The similarity matrix's columns, the static model's ``C``: ``B`` for CLIP, ``2B``
        (the views) for NT-Xent."""
        return self.batch if self.op == "contrastive_fwd_bwd" else 2 * self.batch

    @property
    def temperature(self) -> float:
        return TEMPERATURES[self.op]

    @property
    def id(self) -> str:
        return f"{self.op}-B{self.batch}-D{self.dim}-{self.dtype}-{self.provider}"

    @property
    def group_name(self) -> str:
        return f"{self.op} B={self.batch} D={self.dim} {self.dtype} {self.device}"

    @property
    def flops(self) -> int:
        """``6 B^2 D`` (CLIP) or ``4 (2B)^2 D`` (NT-Xent): see the module's docstring."""
        if self.op == "contrastive_fwd_bwd":
            return 6 * self.batch ** 2 * self.dim
        return 4 * (2 * self.batch) ** 2 * self.dim

    @property
    def checked_rows(self) -> int:
        """The rows of ``a`` and ``b`` the correctness check runs on: all of them up to
        :data:`FULL_CHECK_MAX_BATCH`, else the first :data:`CHECK_ROWS`."""
        return self.batch if self.batch <= FULL_CHECK_MAX_BATCH else CHECK_ROWS

    def extra_info(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "rows": self.rows, "classes": self.classes,
                "flops": self.flops, "temperature": self.temperature,
                "checked_rows": self.checked_rows}


def all_specs(device: str) -> list[ContrastiveSpec]:
    """The cases of ``device``: each op and batch with every provider, the providers of a
    shape one after another (they share the reference, :func:`fp64_reference`)."""
    return [ContrastiveSpec(op, p, batch, DIM, DEVICE_DTYPE[device], device)
            for op in OPS for batch in BATCHES[device] for p in PROVIDERS]


def skip_reason(spec: ContrastiveSpec) -> str | None:
    """Why a case cannot be benchmarked here, or None."""
    if spec.provider == "tempfast" and spec.device == "cpu" and backend.get_backend() == "triton":
        return ("TEMPFAST_BACKEND=triton runs the Triton interpreter on CPU tensors, and the "
                "interpreter is not a benchmark")
    return None


def out_of_memory_reason(spec: ContrastiveSpec, error: torch.OutOfMemoryError) -> str:
    """The skip reason of a case that ran out of memory: :data:`OUT_OF_MEMORY`, the case's
    id, then the first three sentences of PyTorch's message (what it tried to allocate, the
    device's capacity and what was free)."""
    first_line = (str(error).strip().splitlines() or ["no message"])[0]
    return f"{OUT_OF_MEMORY}{spec.id} ({'. '.join(first_line.split('. ')[:3])})"


def out_of_memory_ids(skipped: list[dict]) -> set[str]:
    """The ids of the cases that ran out of memory, from the JSON's skip reasons
    (``[{"reason": ..., "count": ...}]``, :mod:`bench.conftest`)."""
    return {s["reason"].removeprefix(OUT_OF_MEMORY).split(" ", 1)[0]
            for s in skipped if s["reason"].startswith(OUT_OF_MEMORY)}


def clip_composition(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """CLIP's loss as usually written: ``s = a @ b.T / t``, the mean of
    ``F.cross_entropy(s, y)`` and ``F.cross_entropy(s.T, y)`` with ``y = arange(B)``."""
    s = a @ b.T / t
    y = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(s, y) + F.cross_entropy(s.T, y)) / 2


def nt_xent_composition(z1: Tensor, z2: Tensor, t: Tensor) -> Tensor:
    """SimCLR's NT-Xent as usually written: ``z = cat(z1, z2)``, ``s = z @ z.T / t`` with its
    diagonal set to ``-inf`` in place (each view's own similarity masked, without a
    ``2B x 2B`` mask tensor), ``F.cross_entropy(s, (arange(2B) + B) % 2B)``."""
    z = torch.cat([z1, z2])
    views = z.shape[0]
    s = z @ z.T / t
    s.fill_diagonal_(float("-inf"))
    positives = (torch.arange(views, device=z.device) + views // 2) % views
    return F.cross_entropy(s, positives)


def loss_function(spec: ContrastiveSpec) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The provider's ``(a, b, t) -> mean loss``; ``torch_compile`` is compiled on its first
    call (the correctness check, or the untimed calls before the timing)."""
    clip = spec.op == "contrastive_fwd_bwd"
    if spec.provider == "tempfast":
        return tempfast.contrastive_loss if clip else tempfast.nt_xent_loss
    composition = clip_composition if clip else nt_xent_composition
    if spec.provider == "torch_compile":
        torch._dynamo.reset()
        return torch.compile(composition, dynamic=False)
    return composition


def unit_features(spec: ContrastiveSpec) -> tuple[Tensor, Tensor]:
    """Two ``(B, D)`` tensors of the spec's dtype and device, rows of unit norm
    (``F.normalize(randn, dim=1)`` in fp32, then cast); the same for every provider."""
    device = torch.device(spec.device)
    gen = torch.Generator(device=device).manual_seed(SEED)
    return tuple(F.normalize(torch.randn(spec.batch, spec.dim, generator=gen, device=device),
                             dim=1).to(DTYPES[spec.dtype]) for _ in range(2))


_REFERENCE_OF_SHAPE: dict[str, tuple[Tensor, ...]] = {}


def fp64_reference(spec: ContrastiveSpec, a: Tensor, b: Tensor) -> tuple[Tensor, ...]:
    """``(loss, da, db, dt)`` of the float64 reference on ``a``, ``b`` (the checked rows of
    the spec's inputs) at the spec's temperature. Kept for one shape (``group_name``): the
    providers of a shape run one after another on the same inputs (:func:`all_specs`), so
    the reference is computed once per shape."""
    if spec.group_name not in _REFERENCE_OF_SHAPE:
        op = reference.contrastive_loss if spec.op == "contrastive_fwd_bwd" \
            else reference.nt_xent_loss
        a64, b64 = (x.detach().double().requires_grad_(True) for x in (a, b))
        t64 = torch.tensor(spec.temperature, dtype=torch.float64, device=a.device,
                           requires_grad=True)
        loss = op(a64, b64, t64)
        _REFERENCE_OF_SHAPE.clear()
        _REFERENCE_OF_SHAPE[spec.group_name] = (loss.detach(),
                                                *torch.autograd.grad(loss, (a64, b64, t64)))
    return _REFERENCE_OF_SHAPE[spec.group_name]


class ContrastiveCase:
    """The inputs of one spec, its timed ``step`` and its correctness ``check``."""

    def __init__(self, spec: ContrastiveSpec) -> None:
        self.spec = spec
        self.a, self.b = (x.requires_grad_(True) for x in unit_features(spec))
        self.t = torch.tensor(spec.temperature, device=spec.device, requires_grad=True)
        self.loss = loss_function(spec)

    @property
    def params(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.a, self.b, self.t

    def reset(self) -> None:
        """Drop the gradients of the last step, so that a step never accumulates into them."""
        for p in self.params:
            p.grad = None

    def step(self) -> Tensor:
        """The timed work: the mean loss and its backward."""
        self.reset()
        loss = self.loss(self.a, self.b, self.t)
        loss.backward()
        return loss

    def check(self) -> None:
        """Run the provider's loss and backward on the first ``spec.checked_rows`` rows of
        ``a`` and ``b`` (all of them up to ``B = 8192``) and compare the loss and the
        gradients of ``a``, ``b`` and ``t`` with :func:`fp64_reference`; raises AssertionError
        (tolerances: ``bench.cases.TOLERANCES``)."""
        rows = self.spec.checked_rows
        a, b = (x[:rows].detach().requires_grad_(True) for x in (self.a, self.b))
        t = self.t.detach().clone().requires_grad_(True)
        loss = self.loss(a, b, t)
        loss.backward()
        expected = fp64_reference(self.spec, a, b)
        for name, got, want in zip(("loss", "a.grad", "b.grad", "t.grad"),
                                   (loss, a.grad, b.grad, t.grad), expected, strict=True):
            assert_close(self.spec.id, name, got, want, self.spec.dtype)

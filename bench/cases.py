"""Benchmark cases: one op, one provider, one shape and one dtype.

Logits ``x (N, C)`` are ``T * randn`` with ``T = 8`` (so ``x / T`` is standard normal), class
indices ``y (N,)`` are uniform, the softmax's upstream gradient ``dy (N, C)`` is ``randn``.
``e`` is the element size (2 bytes for bf16, 4 for fp32).

=========================  =============================================  ===========
op                         timed work                                     floor bytes
=========================  =============================================  ===========
softmax_fwd                ``p = softmax(x / T)``                         2 N C e
softmax_fwd_bwd            ``p = softmax(x / T); p.backward(dy)``         5 N C e
ce_fwd                     ``loss = CE(x / T, y)`` (mean), no grad        1 N C e
ce_fwd_bwd                 ``loss = CE(x / T, y); loss.backward()``       2 N C e
ce_learnable_t_fwd_bwd     as ce_fwd_bwd, ``T`` a 0-dim tensor with grad  2 N C e
kd_fwd_bwd                 ``loss = KD(x, t_x, T); loss.backward()``      3 N C e
token_logprobs_fwd         ``logp, H = token_logprobs(x, y, T)``          1 N C e
token_logprobs_fwd_bwd     and ``backward`` of ``(logp, H)`` with         3 N C e
                           upstream gradients 1 and 0.01 (an entropy
                           bonus)
ce_softcap_fwd_bwd         ``CE(30 tanh(x / 30) / T, y)``, backward       2 N C e
ce_z_loss_fwd_bwd          ``CE(x / T, y) + 1e-4 mean(lse(x / T)^2)``     2 N C e
=========================  =============================================  ===========

The floor is the memory traffic no implementation can avoid: softmax reads ``x`` and writes
``p``; its backward reads ``p`` and ``dy`` and writes ``dx``; cross-entropy reads ``x`` and
(with backward) writes ``dx``; distillation (``KD = KL(softmax(t_x / T) || softmax(x / T)) T^2``,
batchmean, teacher logits ``t_x`` like ``x`` and without grad) reads ``x`` and ``t_x`` and writes
``dx``. Its eager and compiled providers run ``F.kl_div(F.log_softmax(x / T, -1),
F.log_softmax(t_x / T, -1), log_target=True, reduction="batchmean") * T**2``; Liger has no
peer for it here.

Providers: ``copy`` (``dst.copy_(x)``: reads and writes ``N C e`` bytes once, the bandwidth
yardstick), ``tempfast`` (the public ops: Triton on CUDA, the PyTorch path on CPU),
``torch_eager`` (``F.cross_entropy(x / T, y)``, ``torch.softmax(x / T, -1)``),
``torch_compile`` (``torch.compile(..., dynamic=False)`` of the eager function, compiled for
the exact shape before timing), ``liger_x_div_t`` (Liger-Kernel's cross entropy / softmax
applied to ``x / T``: Liger has no temperature argument, so the division is part of its time)
and ``liger_t1`` (Liger's kernel on ``x`` itself, i.e. at T = 1: the fair peer, since ``x / T``
adds two elementwise passes that are not Liger's; checked against the reference at T = 1).

The language-model ops (issue 25) compare tempfast with what users write today: eager and
compiled ``log_softmax(x / T)`` + ``gather`` and the entropy from the probabilities
(``-(p * log p).sum(-1)``), ``tanh`` before ``/ T`` for the soft cap, ``logsumexp`` for the
z-loss; Liger where it has the operation: its cross-entropy's ``softcap=`` (at T = 1 only:
Liger caps its input, and ``cap(x / T)`` is not ``cap(x) / T``) and ``lse_square_scale=``
(both forms); it has no per-token log-probability / entropy op of this form.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import tempfast
from tempfast import backend, reference

TEMPERATURE = 8.0
OPS = ("softmax_fwd", "softmax_fwd_bwd", "ce_fwd", "ce_fwd_bwd", "ce_learnable_t_fwd_bwd",
       "kd_fwd_bwd", "token_logprobs_fwd", "token_logprobs_fwd_bwd", "ce_softcap_fwd_bwd",
       "ce_z_loss_fwd_bwd")
LM_OPS = OPS[6:]  # the language-model workloads
PROVIDERS = ("copy", "tempfast", "torch_eager", "torch_compile", "liger_x_div_t", "liger_t1")
LIGER_PROVIDERS = ("liger_x_div_t", "liger_t1")
CLASS_COUNTS = {"cuda": (10, 100, 1000, 32000, 128256, 262144), "cpu": (10, 1000, 32000, 262144)}
KD_CLASS_COUNTS = {"cuda": (1000, 32000, 128256), "cpu": (1000, 32000)}  # a distillation head
LM_CLASS_COUNTS = {"cuda": (32000, 128256, 151936, 262144), "cpu": (1000, 32000)}
SOFTCAP = 30.0
Z_LOSS = 1e-4
ENTROPY_WEIGHT = 0.01  # the entropy's upstream gradient in the token_logprobs_fwd_bwd step
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FLOOR_UNITS = {"softmax_fwd": 2, "softmax_fwd_bwd": 5, "ce_fwd": 1, "ce_fwd_bwd": 2,
               "ce_learnable_t_fwd_bwd": 2, "kd_fwd_bwd": 3, "token_logprobs_fwd": 1,
               "token_logprobs_fwd_bwd": 3, "ce_softcap_fwd_bwd": 2, "ce_z_loss_fwd_bwd": 2}
COPY_UNITS = 2
CPU_ELEMENTS = 1 << 21
GPU_ELEMENTS = 1 << 28
GPU_WIDE_ROWS = 8192
WIDE_CLASSES = 32000
REFERENCE_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - expected| <= atol * max|expected| + rtol * |expected|``, and in
    aggregate ``sum |actual - expected| <= l1 * sum |expected|``.

    The elementwise test alone would pass wrong results: in a cross-entropy gradient row the
    target entry is about ``C`` times every other, so ``atol * max`` exceeds the non-target
    entries, which could then be zero, doubled or at the wrong temperature. In L1 the
    non-target entries weigh about half of each row, so the aggregate test fails on those; a
    temperature off by 2.5% moves a cross-entropy gradient by 2.7% and a softmax (C >= 1000) by
    1.9% in L1. ``l1`` for bf16 leaves room for eager PyTorch, whose backward reads its own
    bf16 log-softmax (entries near ``-log C`` rounded to 2^-4, so single ``p_i`` are off by up
    to 3%): 1.05% in L1 at most on the CPU shapes, against 0.2% for tempfast. A bf16 mean
    loss is a single number rounded to bf16 (eager's is off by up to 0.8%), so the
    forward-only cross-entropy check in bf16 catches only gross errors.
    """

    rtol: float
    atol: float
    l1: float


TOLERANCES = {"fp32": Tolerance(rtol=1e-4, atol=1e-5, l1=1e-4),
              "bf16": Tolerance(rtol=2e-2, atol=1e-2, l1=1.5e-2),
              # eager / compiled distillation in bf16: two bf16 log-softmaxes and their
              # difference, 1.6% in L1 on the CPU shapes (tempfast meets "bf16")
              "bf16-kd-eager": Tolerance(rtol=2e-2, atol=1e-2, l1=3e-2)}


def assert_close(case_id: str, what: str, actual: Tensor, expected: Tensor, dtype: str) -> None:
    """Assert ``actual`` matches ``expected`` within :data:`TOLERANCES` ``[dtype]`` (both
    tests), naming ``case_id`` and ``what`` on failure."""
    tol = TOLERANCES[dtype]
    expected = expected.detach().float()
    actual = actual.detach().float()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=tol.rtol, atol=tol.atol * scale,
        msg=lambda m: f"{case_id}: {what} differs from the reference: {m}")
    size = float(expected.abs().sum())
    if size > 0.0:
        ratio = float((actual - expected).abs().sum()) / size
        assert ratio <= tol.l1, (
            f"{case_id}: {what} differs from the reference: L1 error {ratio:.3g} of the "
            f"reference's L1 norm (> {tol.l1})")


def bench_device() -> str:
    """``TEMPFAST_BENCH_DEVICE`` (``cpu`` or ``cuda``), else ``cuda`` when available."""
    name = os.environ.get("TEMPFAST_BENCH_DEVICE", "").strip().lower()
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"TEMPFAST_BENCH_DEVICE: expected 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("TEMPFAST_BENCH_DEVICE=cuda, but torch sees no CUDA device")
    return name


def rows_for(classes: int, device: str) -> int:
    """N for C classes: on CUDA 8192 rows for C >= 32000 (2^28 to 2^31 elements) and 2^28
    elements otherwise; on CPU about 2^21 elements (and fewer class counts: each
    torch.compile case compiles for its exact shape, seconds per shape on 2 cores)."""
    if device == "cuda":
        return GPU_WIDE_ROWS if classes >= WIDE_CLASSES else GPU_ELEMENTS // classes
    return max(1, CPU_ELEMENTS // classes)


@dataclass(frozen=True)
class Spec:
    """What one benchmark case runs."""

    op: str
    provider: str
    classes: int
    rows: int
    dtype: str
    device: str

    @property
    def id(self) -> str:
        return f"{self.op}-C{self.classes}-N{self.rows}-{self.dtype}-{self.provider}"

    @property
    def group_name(self) -> str:
        return f"{self.op} C={self.classes} N={self.rows} {self.dtype} {self.device}"

    @property
    def elements(self) -> int:
        return self.rows * self.classes

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def copy_bytes(self) -> int:
        return COPY_UNITS * self.elements * self.element_size

    @property
    def floor_bytes(self) -> int:
        """The op's floor; for the copy provider, the bytes the copy itself moves."""
        if self.provider == "copy":
            return self.copy_bytes
        return FLOOR_UNITS[self.op] * self.elements * self.element_size

    def extra_info(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "floor_bytes": self.floor_bytes,
                "copy_bytes": self.copy_bytes, "temperature": TEMPERATURE}


def is_headline(spec: Spec) -> bool:
    """The shapes of the performance targets (bf16; CE fwd+bwd at C >= 32000; softmax
    forward at C >= 1000): run first, so a time budget never cuts them."""
    if spec.dtype != "bf16":
        return False
    if spec.op == "ce_fwd_bwd":
        return spec.classes >= WIDE_CLASSES
    return spec.op == "softmax_fwd" and spec.classes >= 1000


def all_specs(device: str) -> list[Spec]:
    """Every case, headline shapes first, then bf16 before fp32, by op, C and provider."""
    specs = [Spec(g, p, c, rows_for(c, device), d, device)
             for g in OPS for d in DTYPES for c in _class_counts(g)[device]
             for p in PROVIDERS]
    return sorted(specs, key=lambda s: (not is_headline(s), list(DTYPES).index(s.dtype),
                                        OPS.index(s.op), s.classes,
                                        PROVIDERS.index(s.provider)))


def _class_counts(op: str) -> dict[str, tuple[int, ...]]:
    if op.startswith("kd"):
        return KD_CLASS_COUNTS
    return LM_CLASS_COUNTS if op in LM_OPS else CLASS_COUNTS


def liger_functions() -> tuple[Callable, Callable] | None:
    """Liger-Kernel's ``(cross_entropy, softmax)``, or None when it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except ImportError:
        return None
    try:
        from liger_kernel.transformers.functional import liger_softmax
    except ImportError:
        from liger_kernel.ops.softmax import LigerSoftmaxFunction

        liger_softmax = LigerSoftmaxFunction.apply
    return liger_cross_entropy, liger_softmax


def skip_reason(spec: Spec) -> str | None:
    """Why a case cannot be benchmarked here, or None."""
    if spec.provider == "liger_t1" and spec.op == "ce_learnable_t_fwd_bwd":
        return "Liger at T = 1 has no temperature to learn"
    if spec.provider in LIGER_PROVIDERS and spec.op.startswith("kd"):
        return "Liger-Kernel has no temperature KL distillation loss of this form"
    if spec.provider in LIGER_PROVIDERS and spec.op.startswith("token"):
        return "Liger-Kernel has no per-token log-probability and entropy op of this form"
    if spec.provider == "liger_x_div_t" and spec.op == "ce_softcap_fwd_bwd":
        return "Liger caps its input: cap(x / T) is not cap(x) / T (liger_t1 is the peer)"
    if spec.provider in LIGER_PROVIDERS:
        if spec.device != "cuda":
            return ("Liger-Kernel is Triton-only: on CPU only the Triton interpreter could run "
                    "it, and the interpreter is not a benchmark")
        if liger_functions() is None:
            return "liger_kernel is not installed"
    if spec.provider == "tempfast" and spec.device == "cpu" and backend.get_backend() == "triton":
        return ("TEMPFAST_BACKEND=triton runs the Triton interpreter on CPU tensors, and the "
                "interpreter is not a benchmark")
    return None


def _eager_softmax(x: Tensor, t: float | Tensor) -> Tensor:
    return torch.softmax(x / t, -1)


def _eager_cross_entropy(x: Tensor, y: Tensor, t: float | Tensor) -> Tensor:
    return F.cross_entropy(x / t, y)


def _eager_distillation(x: Tensor, teacher: Tensor, t: float | Tensor) -> Tensor:
    return F.kl_div(F.log_softmax(x / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t ** 2


def _eager_token_logprobs(x: Tensor, y: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
    log_p = torch.log_softmax(x.float() / t, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p.gather(-1, y[:, None])[:, 0], entropy


def _eager_softcap_cross_entropy(x: Tensor, y: Tensor, t: float | Tensor) -> Tensor:
    return F.cross_entropy(SOFTCAP * torch.tanh(x / SOFTCAP) / t, y)


def _eager_z_loss_cross_entropy(x: Tensor, y: Tensor, t: float | Tensor) -> Tensor:
    scaled = x / t
    return F.cross_entropy(scaled, y) + Z_LOSS * torch.logsumexp(scaled.float(), -1).pow(2).mean()


_EAGER_LM = {"token_logprobs_fwd": _eager_token_logprobs,
             "token_logprobs_fwd_bwd": _eager_token_logprobs,
             "ce_softcap_fwd_bwd": _eager_softcap_cross_entropy,
             "ce_z_loss_fwd_bwd": _eager_z_loss_cross_entropy}


def _tempfast_lm(op: str) -> Callable:
    if op.startswith("token"):
        return lambda x, y, t: tempfast.token_logprobs(x, y, t, return_entropy=True)
    if op == "ce_softcap_fwd_bwd":
        return lambda x, y, t: tempfast.cross_entropy(x, y, t, softcap=SOFTCAP)
    return lambda x, y, t: tempfast.cross_entropy(x, y, t, z_loss=Z_LOSS)


def _liger_lm(op: str, liger_ce: Callable, divide: bool) -> Callable:
    extra = {"softcap": SOFTCAP} if op == "ce_softcap_fwd_bwd" else {"lse_square_scale": Z_LOSS}
    if divide:
        return lambda x, y, t: liger_ce(x / t, y, **extra)
    return lambda x, y, t: liger_ce(x, y, **extra)


def _row_chunks(rows: int, classes: int) -> Iterator[slice]:
    step = max(1, REFERENCE_CHUNK_ELEMENTS // classes)
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


class Case:
    """The inputs of one spec, its timed ``step`` and its correctness ``check``."""

    def __init__(self, spec: Spec, seed: int = 0) -> None:
        self.spec = spec
        device = torch.device(spec.device)
        gen = torch.Generator(device=device).manual_seed(seed)
        shape = (spec.rows, spec.classes)
        self.softmax = spec.op.startswith("softmax")
        self.kd = spec.op.startswith("kd")
        self.lm = spec.op in LM_OPS
        self.token = spec.op.startswith("token")
        self.backward = spec.op.endswith("_bwd") and spec.provider != "copy"
        self.x = torch.randn(shape, generator=gen, device=device, dtype=DTYPES[spec.dtype])
        self.x.mul_(TEMPERATURE).requires_grad_(self.backward)
        self.y = None if self.softmax or self.kd else torch.randint(
            0, spec.classes, (spec.rows,), generator=gen, device=device)
        self.teacher = None
        if self.kd and spec.provider != "copy":
            self.teacher = torch.randn(shape, generator=gen, device=device, dtype=self.x.dtype)
            self.teacher.mul_(TEMPERATURE)
        self.dy = torch.randn(shape, generator=gen, device=device, dtype=self.x.dtype) \
            if self.softmax and self.backward else None
        self.t: float | Tensor = TEMPERATURE
        # the temperature the result is checked at (Liger at T = 1 computes softmax(x))
        self.check_t = 1.0 if spec.provider == "liger_t1" else TEMPERATURE
        if spec.op == "ce_learnable_t_fwd_bwd" and spec.provider != "copy":
            self.t = torch.tensor(TEMPERATURE, device=device, requires_grad=True)
        self.dst = torch.empty_like(self.x) if spec.provider == "copy" else None
        self.token_grads = (torch.ones(spec.rows, device=device),
                            torch.full((spec.rows,), ENTROPY_WEIGHT, device=device)) \
            if self.token else None
        self.forward = self._forward_fn()

    def _forward_fn(self) -> Callable[[], Tensor]:
        provider, x, y, t = self.spec.provider, self.x, self.y, self.t
        if provider == "copy":
            src = x.detach()
            return lambda: self.dst.copy_(src)
        if self.lm:
            if provider == "tempfast":
                fn = _tempfast_lm(self.spec.op)
            elif provider in LIGER_PROVIDERS:
                fn = _liger_lm(self.spec.op, liger_functions()[0], provider == "liger_x_div_t")
            else:
                fn = _EAGER_LM[self.spec.op]
                if provider == "torch_compile":
                    torch._dynamo.reset()
                    fn = torch.compile(fn, dynamic=False)
            return lambda: fn(x, y, t)
        if self.kd:
            teacher = self.teacher
            if provider == "tempfast":
                return lambda: tempfast.distillation_loss(x, teacher, t)
            eager_kd = _eager_distillation
            if provider == "torch_compile":
                torch._dynamo.reset()
                eager_kd = torch.compile(eager_kd, dynamic=False)
            return lambda: eager_kd(x, teacher, t)
        if provider == "tempfast":
            return (lambda: tempfast.softmax(x, t)) if self.softmax \
                else (lambda: tempfast.cross_entropy(x, y, t))
        eager = _eager_softmax if self.softmax else _eager_cross_entropy
        if provider == "torch_compile":
            torch._dynamo.reset()
            eager = torch.compile(eager, dynamic=False)
        elif provider == "liger_x_div_t":
            liger_ce, liger_sm = liger_functions()
            return (lambda: liger_sm(x / t)) if self.softmax else (lambda: liger_ce(x / t, y))
        elif provider == "liger_t1":
            liger_ce, liger_sm = liger_functions()
            return (lambda: liger_sm(x)) if self.softmax else (lambda: liger_ce(x, y))
        return (lambda: eager(x, t)) if self.softmax else (lambda: eager(x, y, t))

    def reset(self) -> None:
        """Drop the gradients of the last step, so that a step never accumulates into them."""
        self.x.grad = None
        if isinstance(self.t, Tensor):
            self.t.grad = None

    def step(self) -> Tensor:
        """The timed work: the forward, and the backward for the ``*_bwd`` groups."""
        if not self.backward:
            return self.forward()
        self.reset()
        out = self.forward()
        if self.softmax:
            out.backward(self.dy)
        elif self.token:
            torch.autograd.backward(out, self.token_grads)
        else:
            out.backward()
        return out

    def check(self) -> None:
        """Run one step and compare its results with :mod:`tempfast.reference` in fp32.

        Raises AssertionError (tolerances: :data:`TOLERANCES`) naming the case and the tensor.
        """
        out = self.step()
        if self.spec.provider == "copy":
            assert torch.equal(self.dst, self.x), f"{self.spec.id}: the copy differs from x"
            return
        if self.softmax:
            self._check_softmax(out)
        elif self.kd:
            self._check_distillation(out)
        elif self.token:
            self._check_token_logprobs(out)
        else:
            self._check_cross_entropy(out)

    def _assert_close(self, what: str, actual: Tensor, expected: Tensor,
                      kd: bool = False) -> None:
        dtype = self.spec.dtype
        if kd and dtype == "bf16" and self.spec.provider in ("torch_eager", "torch_compile"):
            dtype = "bf16-kd-eager"
        assert_close(self.spec.id, what, actual, expected, dtype)

    def _check_softmax(self, out: Tensor) -> None:
        for rows in _row_chunks(self.spec.rows, self.spec.classes):
            xc = self.x[rows].detach().float().requires_grad_(self.backward)
            ref = reference.softmax(xc, self.check_t)
            self._assert_close("softmax output", out[rows], ref)
            if self.backward:
                (grad,) = torch.autograd.grad(ref, xc, self.dy[rows].float())
                self._assert_close("x.grad", self.x.grad[rows], grad)

    def _check_cross_entropy(self, out: Tensor) -> None:
        learnable = isinstance(self.t, Tensor)
        loss = torch.zeros((), device=self.x.device)
        dt = torch.zeros((), device=self.x.device)
        for rows in _row_chunks(self.spec.rows, self.spec.classes):
            xc = self.x[rows].detach().float().requires_grad_(self.backward)
            tc = torch.tensor(self.check_t, device=xc.device, requires_grad=True) \
                if learnable else self.check_t
            extra = {"softcap": SOFTCAP} if self.spec.op == "ce_softcap_fwd_bwd" else \
                {"z_loss": Z_LOSS} if self.spec.op == "ce_z_loss_fwd_bwd" else {}
            part = reference.cross_entropy(xc, self.y[rows], tc, reduction="sum",
                                           **extra) / self.spec.rows
            loss += part.detach()
            if self.backward:
                grads = torch.autograd.grad(part, (xc, tc) if learnable else (xc,))
                self._assert_close("x.grad", self.x.grad[rows], grads[0])
                if learnable:
                    dt += grads[1]
        self._assert_close("loss", out, loss)
        if learnable:
            self._assert_close("temperature.grad", self.t.grad, dt)

    def _check_token_logprobs(self, out: tuple[Tensor, Tensor]) -> None:
        for rows in _row_chunks(self.spec.rows, self.spec.classes):
            xc = self.x[rows].detach().float().requires_grad_(self.backward)
            ref = reference.token_logprobs(xc, self.y[rows], self.check_t, return_entropy=True)
            self._assert_close("log-probabilities", out[0][rows], ref[0])
            self._assert_close("entropy", out[1][rows], ref[1])
            if self.backward:
                (grad,) = torch.autograd.grad(ref, xc, tuple(g[rows] for g in self.token_grads))
                self._assert_close("x.grad", self.x.grad[rows], grad)

    def _check_distillation(self, out: Tensor) -> None:
        loss = torch.zeros((), device=self.x.device)
        for rows in _row_chunks(self.spec.rows, self.spec.classes):
            xc = self.x[rows].detach().float().requires_grad_(True)
            part = reference.distillation_loss(
                xc, self.teacher[rows].float(), self.check_t, reduction="sum") / self.spec.rows
            loss += part.detach()
            (grad,) = torch.autograd.grad(part, xc)
            self._assert_close("x.grad", self.x.grad[rows], grad, kd=True)
        self._assert_close("loss", out, loss)

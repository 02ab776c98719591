"""The headline cases the static model reads, and the recording of their launches.

A case is one public op call at one shape: ``op`` (as in :data:`bench.cases.OPS`, plus
``linear_ce_fwd_bwd``, the fused linear head at ``H = LINEAR_HIDDEN``, and
``contrastive_fwd_bwd`` / ``nt_xent_fwd_bwd``, CLIP's and SimCLR's losses over a batch of
``N = C`` at ``D = CONTRASTIVE_DIM``), dtype, ``N`` and ``C``. The matrix products are not run
(:func:`bench.static.record.no_gemm`): their shapes are logged and timed by the model.
:func:`record` runs it with the Triton backend forced and every launch intercepted
(:mod:`bench.static.record`), the forward and the backward separately, counting the torch ops
each dispatches (:class:`bench.static.host.OpCounter`). The upstream gradient is that of
``loss.backward()`` (1) for the cross-entropy ops, a dense ``dy`` for softmax, and for the
token log-probabilities 1 for each token's and :data:`ENTROPY_WEIGHT` for its entropy.
"""

from __future__ import annotations

import contextlib
import gc
import resource
from dataclasses import dataclass, field

import torch

from ..cases import DTYPES, FLOOR_UNITS, TEMPERATURE
from .host import OpCounter
from .record import GemmLog, Launch, LaunchRecorder, no_gemm
from .residency import triton_on_cpu

HEADLINE_ROWS = 8192
HEADLINE_CLASSES = (1000, 4096, 32000, 128256, 262144)
HEADLINE_OPS = ("ce_fwd_bwd", "ce_learnable_t_fwd_bwd", "linear_ce_fwd_bwd", "softmax_fwd",
                "softmax_fwd_bwd", "kd_fwd_bwd")
LINEAR_HIDDEN = 4096  # the head's GEMMs are not run (no_gemm); H sizes the chunks and GEMMs
CONTRASTIVE_DIM = 768
CONTRASTIVE_BATCHES = (4096, 16384, 65536)
GEMM_OPS = ("linear_ce_fwd_bwd", "contrastive_fwd_bwd", "nt_xent_fwd_bwd")
# The language-model workloads of issue 25 (bf16, N = 8192): per-token log-probabilities and
# entropy (forward; forward + backward with both upstream gradients non-zero), and the
# cross-entropy soft-capped or with a z-loss beside the plain one, at these vocabularies.
LM_OPS = ("token_logprobs_fwd", "token_logprobs_fwd_bwd", "ce_softcap_fwd_bwd",
          "ce_z_loss_fwd_bwd", "ce_fwd_bwd")
LM_CLASSES = (32000, 128256, 151936, 262144)
SOFTCAP = 30.0
Z_LOSS = 1e-4
ENTROPY_WEIGHT = 0.01  # the entropy's upstream gradient (its bonus in a policy-gradient loss)


@dataclass(frozen=True)
class Workload:
    op: str
    dtype: str
    rows: int
    classes: int
    hidden: int = 0  # H (the linear head) or D (contrastive features); 0: no matrix product

    @property
    def id(self) -> str:
        tail = f"-H{self.hidden}" if self.hidden else ""
        return f"{self.op}-C{self.classes}-N{self.rows}{tail}-{self.dtype}"

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def floor_bytes(self) -> int:
        """The bytes no implementation can avoid (:data:`bench.cases.FLOOR_UNITS`; the linear
        head's CE part: the logits written by the GEMM are read once and the gradient is
        written once, as for ``ce_fwd_bwd``)."""
        units = FLOOR_UNITS.get(self.op, FLOOR_UNITS["ce_fwd_bwd"])
        return units * self.rows * self.classes * self.itemsize


@dataclass
class Recording:
    workload: Workload
    launches: list[Launch]
    ops: dict[str, int]  # phase -> aten ops dispatched
    ops_by_name: dict[str, dict[str, int]]  # phase -> op -> count, as a GPU call dispatches
    custom_ops: dict[str, int]
    host_check_ops: dict[str, int]  # ops of host-memory value checks (skipped on a GPU)
    gemms: list = field(default_factory=list)  # bench.static.record.Gemm, in call order
    side_bytes: dict[str, int] = field(default_factory=dict)  # phase -> bytes of torch ops

    def launches_in(self, phase: str) -> list[Launch]:
        return [launch for launch in self.launches if launch.phase == phase]


def headline_workloads(dtypes: tuple[str, ...] = ("bf16", "fp32"),
                       classes: tuple[int, ...] = HEADLINE_CLASSES,
                       ops: tuple[str, ...] = HEADLINE_OPS,
                       rows: int = HEADLINE_ROWS) -> list[Workload]:
    """Cross-entropy first (the headline), then the fused head, then softmax, then
    distillation."""
    return [Workload(op, dtype, rows, c, LINEAR_HIDDEN if op == "linear_ce_fwd_bwd" else 0)
            for op in ops for dtype in dtypes for c in classes]


def lm_workloads(classes: tuple[int, ...] = LM_CLASSES) -> list[Workload]:
    """The language-model workloads (:data:`LM_OPS`), bf16, ``N = HEADLINE_ROWS``; the plain
    cross-entropy only where the headline cases do not have it (C = 151936)."""
    return [Workload(op, "bf16", HEADLINE_ROWS, c) for op in LM_OPS for c in classes
            if op != "ce_fwd_bwd" or c not in HEADLINE_CLASSES]


def contrastive_workloads(batches: tuple[int, ...] = CONTRASTIVE_BATCHES) -> list[Workload]:
    """CLIP's loss at every batch, SimCLR's at the smallest (its chunks are PyTorch ops the
    recording runs on the CPU), bf16, ``D = CONTRASTIVE_DIM``."""
    clip = [Workload("contrastive_fwd_bwd", "bf16", b, b, CONTRASTIVE_DIM) for b in batches]
    return [*clip, Workload("nt_xent_fwd_bwd", "bf16", batches[0], 2 * batches[0],
                            CONTRASTIVE_DIM)]


def _inputs(w: Workload):
    """Lazily allocated inputs: ``torch.empty`` pages are never touched."""
    dtype = DTYPES[w.dtype]
    y = torch.zeros(w.rows, dtype=torch.int64)
    if w.op == "linear_ce_fwd_bwd":
        h = torch.empty(w.rows, w.hidden, dtype=dtype).requires_grad_(True)
        weight = torch.empty(w.classes, w.hidden, dtype=dtype).requires_grad_(True)
        return (h, weight, y), None
    if w.op in ("contrastive_fwd_bwd", "nt_xent_fwd_bwd"):  # zeros: the CPU checks read them
        return tuple(torch.zeros(w.rows if w.op == "contrastive_fwd_bwd" else w.classes // 2,
                                 w.hidden, dtype=dtype).requires_grad_(True)
                     for _ in range(2)), None
    x = torch.empty(w.rows, w.classes, dtype=dtype).requires_grad_(
        w.op not in ("softmax_fwd", "token_logprobs_fwd"))
    if w.op == "kd_fwd_bwd":  # the teacher's logits need no gradient
        return (x, torch.empty(w.rows, w.classes, dtype=dtype)), None
    if w.op.startswith("softmax"):
        dy = torch.empty(w.rows, w.classes, dtype=dtype) if w.op == "softmax_fwd_bwd" else None
        return (x,), dy
    if w.op == "token_logprobs_fwd_bwd":  # both upstream gradients non-zero (made here)
        return (x, y), (torch.ones(w.rows), torch.full((w.rows,), ENTROPY_WEIGHT))
    return (x, y), None


def _call(w: Workload, inputs):
    import tempfast

    t: float | torch.Tensor = TEMPERATURE
    if w.op == "ce_learnable_t_fwd_bwd":
        t = torch.tensor(TEMPERATURE, requires_grad=True)
    if w.op.startswith("softmax"):
        return tempfast.softmax(inputs[0], t)
    if w.op == "linear_ce_fwd_bwd":
        h, weight, y = inputs
        return tempfast.linear_cross_entropy(h, weight, y, temperature=t)
    if w.op == "kd_fwd_bwd":
        return tempfast.distillation_loss(*inputs, t)
    if w.op == "contrastive_fwd_bwd":
        return tempfast.contrastive_loss(*inputs, 0.07)
    if w.op.startswith("token_logprobs"):
        return tempfast.token_logprobs(*inputs, t, return_entropy=True)
    if w.op == "ce_softcap_fwd_bwd":
        return tempfast.cross_entropy(*inputs, t, softcap=SOFTCAP)
    if w.op == "ce_z_loss_fwd_bwd":
        return tempfast.cross_entropy(*inputs, t, z_loss=Z_LOSS)
    if w.op == "nt_xent_fwd_bwd":
        return tempfast.nt_xent_loss(*inputs, 0.5)
    x, y = inputs
    return tempfast.cross_entropy(x, y, t)


def record(w: Workload) -> Recording:
    """Run ``w``'s forward and backward with every Triton launch recorded, not run."""
    recorder = LaunchRecorder()
    counter = OpCounter()
    inputs, dy = _inputs(w)
    log = GemmLog()
    gemm = no_gemm(log) if w.op in GEMM_OPS else contextlib.nullcontext()
    with triton_on_cpu(), gemm, recorder.active(), counter.counting():
        counter.phase = recorder.phase = log.phase = "forward"
        out = _call(w, inputs)
        if w.op not in ("softmax_fwd", "token_logprobs_fwd"):
            counter.phase = recorder.phase = log.phase = "backward"
            torch.autograd.backward(out, dy)
    del out, inputs, dy
    gc.collect()
    phases = ("forward", "backward")
    return Recording(w, recorder.launches, {p: counter.total(p) for p in phases},
                     {p: counter.by_op(p, on_gpu=True) for p in phases},
                     {p: sum(n for (q, _), n in counter.custom.items() if q == p)
                      for p in phases},
                     {p: sum(n for (q, _), n in counter.host_checks.items() if q == p)
                      for p in phases}, log.gemms, dict(counter.side_bytes))


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

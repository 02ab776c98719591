"""The Triton path of the cross-entropy: the launchers of ``kernels/cross_entropy.py``, with the
contract of ``torch_path.py`` (see there for the shapes).

Every launch writes into one fp32 workspace (layout: :mod:`tempfast.kernels.common` and
:class:`Layout`): the per-row loss / lse / dL/dT, the per-program partial sums of a reduced
loss, the slices' partial statistics and the int32 counters. A reduced call
(:func:`ce_reduced`) is two launches forward -- a one-program prep (divisor, counters) and the
cross-entropy kernel, whose last program sums the loss -- and one backward
(:func:`apply_upstream_`), which exits at once when the upstream gradient is 1.

The slices path runs its one-read cooperative launch (and the repair launch after it) when at
least ``n_slices`` programs of the compiled kernel can be resident at once
(:func:`tempfast.ops.launch.cooperative_grid`: the compiled registers and shared memory
against the device) or ``TEMPFAST_COOPERATIVE=1``; under the interpreter (one program at a
time) or when residency cannot be shown, it runs the two-phase fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...kernels import common
from ...kernels import cross_entropy as kernels
from ...kernels.heuristics import LaunchConfig, cdiv
from ..launch import (
    config_for,
    cooperative_grid,
    quiet_interpreter,
    run_slices,
    stride_of,
    unit_col_stride,
)
from ..rescale import apply_kernel

PREP_BLOCK = 1024
# The dL/dT variants of the slices kernel on 16-bit logits compile to 80 registers on sm_90
# (three 8-warp programs per SM); capped at 64 (ptxas .maxnreg, no spills: the AOT budgets
# check it) four fit, as for a fixed T, and the chain of each program's work items is a quarter
# shorter: the static model reads the 80-register binary as latency-bound on the H200 (1.11x
# the fixed-T time). fp32 logits stay uncapped: their rows take twice the bytes, the launch is
# memory-bound at three programs per SM, and at 64 registers sm_80 spills.
DT_SLICES_MAX_REGISTERS = 64


def _prob_target(target: Tensor, logits_dtype: torch.dtype) -> Tensor:
    """Probability targets in the logits' dtype or fp32 (fp32 soft labels with 16-bit logits,
    as mixed precision gives, stay fp32): the two pointer types the kernels are compiled for
    ahead of time. Other dtypes (fp64, 16-bit targets for fp32 logits) become fp32."""
    return target if target.dtype in (logits_dtype, torch.float32) else target.float()


@dataclass(frozen=True)
class Layout:
    """Offsets (fp32 elements) into a cross-entropy workspace: header, per-row outputs (loss,
    lse, dL/dT at ``rows + {0, N, 2N}``), per-program partial sums (``2 * programs``), the
    slices' partial statistics (``CE_PARTIALS`` per work item), one int32 counter per row and
    the repair list (one int32 per work item)."""

    n_rows: int
    programs: int
    items: int

    @property
    def rows(self) -> int:
        return common.WS_HEADER.value

    @property
    def part(self) -> int:
        return self.rows + 3 * self.n_rows

    @property
    def slices(self) -> int:
        return self.part + 2 * self.programs

    @property
    def sync(self) -> int:
        return self.slices + common.CE_PARTIALS.value * self.items

    @property
    def size(self) -> int:
        return self.sync + (self.n_rows + self.items if self.items else 0)


@dataclass
class CEResult:
    """A launch's workspace and where its outputs are (views, made on demand: each is a torch
    op on the host)."""

    ws: Tensor
    layout: Layout

    def row(self, which: int) -> Tensor:
        """Per-row loss (0), lse (1) or dL/dT (2): ``(N,)`` views of the workspace."""
        start = self.layout.rows + which * self.layout.n_rows
        return self.ws[start:start + self.layout.n_rows]

    @property
    def loss(self) -> Tensor:
        """The reduced loss (0-dim)."""
        return self.ws[common.WS_LOSS.value]

    def dt_rows(self) -> Tensor:
        """Per-row d loss / d T_row for an upstream gradient of 1 (the mean's factor in)."""
        return self.row(2)

    def dt_total(self) -> Tensor:
        """Their sum (0-dim): dL/dT of a scalar temperature."""
        return self.ws[common.WS_DT.value]

    @property
    def lse(self) -> Tensor:
        """Per-row log-sum-exp of ``a / T`` (the z-loss's, for ``return_z_loss``)."""
        return self.row(1)

    def dt_slot(self, per_row: bool) -> tuple[int, int]:
        """``(offset, count)`` of dL/dT in the workspace: per row, or the sum."""
        if per_row:
            return self.layout.rows + 2 * self.layout.n_rows, self.layout.n_rows
        return common.WS_DT.value, 1


def _inputs(softcap: float) -> int:
    """The row-sized register arrays a program holds, for the block sizes: the logits, and the
    cap's slope when soft-capping (kept from the load to the gradient's store)."""
    return 2 if softcap else 1


def _programs(n_rows: int, cfg: LaunchConfig) -> int:
    """The largest grid of either path: one program per work item (slices) or per
    ``block_n`` rows. The workspace is allocated before the programs are known (the
    cooperative grid depends on the compiled kernel), so its partials are sized for this."""
    return n_rows * cfg.n_slices if cfg.path == "slices" else cdiv(n_rows, cfg.block_n)


def _layout(n_rows: int, cfg: LaunchConfig, reduce: bool) -> Layout:
    """The workspace layout of a launch over ``n_rows`` rows (per-program partials only when
    it reduces)."""
    items = n_rows * cfg.n_slices if cfg.path == "slices" else 0
    return Layout(n_rows, _programs(n_rows, cfg) if reduce else 0, items)


@quiet_interpreter
def _ce_launch(x: Tensor, target: Tensor, t: Tensor | None, t_value: float,
               weight: Tensor | None, ignore_index: int, label_smoothing: float, *,
               grad_out: Tensor | None,
               grad_scale: Tensor | None, compute_dt: bool, reduce: str | None,
               defer: bool = False, cfg: LaunchConfig | None = None,
               ws: Tensor | None = None, softcap: float = 0.0, z_loss: float = 0.0,
               z_scale: Tensor | None = None) -> CEResult:
    """Launch the cross-entropy kernels over ``x (N, C)``; ``reduce``: ``None`` (per-row
    outputs only), ``"sum"`` or ``"mean"`` (with the gradient scaled by the prep kernel's
    factor; ``grad_scale`` is then ignored). ``ws``: a workspace to use (at least the layout's
    size, e.g. from :func:`chunk_workspaces`), else one is allocated. ``softcap`` (0: none) and
    ``z_loss`` as in ``kernels/cross_entropy.py``; the z-loss's factor is the prep kernel's
    when reducing, else ``z_scale`` (a one-value tensor) or 1."""
    n_rows, n_cols = x.shape
    probs = target.dim() == 2
    q = unit_col_stride(_prob_target(target, x.dtype)) if probs else None
    grad = grad_out is not None
    cfg = cfg or config_for(x, _inputs(softcap), *(a for a in (q, grad_out) if a is not None))
    flags = {"PROB": probs, "HAS_WEIGHT": weight is not None, "SMOOTH": label_smoothing > 0,
             "COMPUTE_GRAD": grad, "COMPUTE_DT": compute_dt, "REDUCE": reduce is not None,
             "SOFTCAP": softcap > 0}
    slices = cfg.path == "slices"
    layout = _layout(n_rows, cfg, reduce is not None)
    items, programs = layout.items, _programs(n_rows, cfg)
    if ws is None:
        ws = torch.empty(layout.size, dtype=torch.float32, device=x.device)
    w = weight.float().contiguous() if weight is not None else ws
    y = ws if probs else target.contiguous()
    t_arg, stride_t = (ws, 0) if t_value > 0 else (t.contiguous(), stride_of(t))
    if reduce is not None:
        scale, scale_off, stride_scale = ws, common.WS_GRAD_SCALE.value, 0
    elif grad:
        scale = grad_scale.float().contiguous()
        scale_off, stride_scale = 0, stride_of(scale)
    else:
        scale, scale_off, stride_scale = ws, 0, 0
    g = grad_out if grad else x
    q_arg = q if probs else ws
    head = (x, x.stride(0), t_arg, stride_t, float(t_value), y, q_arg,
            q.stride(0) if probs else 0, w, g, g.stride(0), scale, scale_off, stride_scale, ws,
            layout.part)
    if reduce is not None:
        z_ptr, z_off = ws, common.WS_Z_SCALE.value
    else:
        z_ptr, z_off = (z_scale.float(), 0) if z_scale is not None else (ws, -1)
    tail = (ignore_index, float(label_smoothing), float(softcap), float(z_loss), z_ptr, z_off)
    grid = None
    if slices:
        kernel = kernels.ce_slices_kernel
        args = (*head, layout.slices, layout.sync, n_rows, n_cols, cfg.n_slices, items, *tail)
        kernel_kw = {**flags, "VEC": cfg.vec, "BLOCK_C": cfg.block_c, "BLOCK_S": cfg.block_s,
                     "num_warps": cfg.num_warps}
        if compute_dt and x.element_size() == 2 and not softcap:  # (the slope needs more)
            kernel_kw["maxnreg"] = DT_SLICES_MAX_REGISTERS
        grid = cooperative_grid(kernel, args, kernel_kw, cfg.n_slices, items, x.device)
    if reduce is not None or grid is not None:
        mean = reduce == "mean"
        chunks = cdiv(n_rows, PREP_BLOCK) if mean and not probs else 0
        kernels.ce_prep_kernel[(1,)](
            y, w, ws, layout.sync, n_rows if grid is not None else 0, n_rows, n_cols,
            ignore_index, chunks, int(mean), int(defer), HAS_WEIGHT=weight is not None,
            BLOCK=PREP_BLOCK, num_warps=4)
    if not slices:
        kernels.ce_rows_kernel[(programs,)](
            *head, n_rows, n_cols, *tail, **flags, VEC=cfg.vec, BLOCK_N=cfg.block_n,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    else:  # the two-phase statistics launch neither writes the gradient nor reduces
        run_slices(kernel, args, kernel_kw, grid, items,
                   {**kernel_kw, "COMPUTE_GRAD": False, "REDUCE": False})
    return CEResult(ws, layout)


def ce_rows(
    logits: Tensor,
    target: Tensor,
    t: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Tensor | None,
    grad_out: Tensor | None,
    compute_dt: bool,
    softcap: float = 0.0,
    z_loss: float = 0.0,
    z_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`.torch_path.ce_rows`."""
    aliased = grad_out is not None and grad_out.data_ptr() == logits.data_ptr()
    x = logits if aliased else unit_col_stride(logits)
    res = _ce_launch(x, target, t, 0.0, weight, ignore_index, label_smoothing,
                     grad_out=grad_out, grad_scale=grad_scale, compute_dt=compute_dt,
                     reduce=None, softcap=softcap, z_loss=z_loss, z_scale=z_scale)
    return res.row(0), res.row(1), res.row(2) if compute_dt else res.ws[:0]


# Where a chunk's summed loss and dL/dT lie in its workspace (side by side).
CHUNK_SUMS_AT = common.WS_LOSS.value
assert common.WS_DT.value == CHUNK_SUMS_AT + 1


def chunk_workspaces(logits: Tensor, n_chunks: int,
                     softcap: float = 0.0) -> tuple[LaunchConfig, Tensor]:
    """The launch configuration of the first (largest) of ``n_chunks`` chunks of rows like
    ``logits`` (their gradient written over them), and one workspace per chunk: ``(n_chunks,
    size)`` rows of one allocation, each large enough for any chunk of at most as many rows."""
    cfg = config_for(logits, _inputs(softcap), logits)
    size = _layout(logits.shape[0], cfg, reduce=True).size
    return cfg, torch.empty(n_chunks, size, dtype=torch.float32, device=logits.device)


def ce_chunk_sums(logits: Tensor, target: Tensor, t: Tensor, ignore_index: int,
                  label_smoothing: float, compute_dt: bool, ws: Tensor,
                  cfg: LaunchConfig, softcap: float = 0.0, z_loss: float = 0.0) -> None:
    """One chunk of a chunked sum: the gradient of the rows' summed loss written over
    ``logits``, the summed loss and (``compute_dt``) dL/dT at ``ws[CHUNK_SUMS_AT + {0, 1}]``;
    ``t`` one temperature ``(1,)``. No torch op: the launches write into ``ws``."""
    _ce_launch(logits, target, t, 0.0, None, ignore_index, label_smoothing, grad_out=logits,
               grad_scale=None, compute_dt=compute_dt, reduce="sum", cfg=cfg, ws=ws,
               softcap=softcap, z_loss=z_loss)


def ce_reduced(logits: Tensor, target: Tensor, t: Tensor | None, t_value: float,
               weight: Tensor | None, ignore_index: int, label_smoothing: float,
               reduction: str, grad_out: Tensor | None, compute_dt: bool,
               defer: bool, softcap: float = 0.0, z_loss: float = 0.0) -> CEResult:
    """A mean or sum cross-entropy in two launches, nothing else on the device: the loss at
    ``ws[WS_LOSS]``, with ``compute_dt`` dL/dT at ``ws[WS_DT]`` (summed) and per row (scaled
    by ``ws[WS_ROW_FACTOR]``), and, with ``grad_out``, the gradient for an upstream gradient of
    1 (without the mean's factor when ``defer``). ``t_value > 0``: the temperature by value."""
    aliased = grad_out is not None and grad_out.data_ptr() == logits.data_ptr()
    x = logits if aliased else unit_col_stride(logits)
    return _ce_launch(x, target, t, t_value, weight, ignore_index, label_smoothing,
                      grad_out=grad_out, grad_scale=None, compute_dt=compute_dt,
                      reduce=reduction, defer=defer, softcap=softcap, z_loss=z_loss)


def apply_upstream_(buf: Tensor | None, g: Tensor, res: CEResult, t_grad: str | None,
                    defer: bool, t_shape: torch.Size | None = None) -> Tensor | None:
    """The backward of :func:`ce_reduced`, one launch: ``buf *= g`` (``g`` times the mean's
    factor when it was deferred), skipped on the device when that is 1; returns dL/dT for the
    upstream gradient ``g`` (``t_grad``: ``"rows"`` per row, ``"scalar"``, or ``None``), shaped
    ``t_shape``. The buffer is written through its pointer: its version counter does not move
    (a retained graph is traversed again)."""
    dt_off, n_dt = res.dt_slot(t_grad == "rows") if t_grad else (0, 0)
    dt = torch.empty(t_shape if t_shape is not None else (n_dt,), dtype=torch.float32,
                     device=res.ws.device) if t_grad else res.ws
    apply_kernel(buf, g, res.ws, dt_off, n_dt, defer, dt)
    return dt if t_grad else None

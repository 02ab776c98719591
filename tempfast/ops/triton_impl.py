"""The Triton path: launchers for the kernels in :mod:`tempfast.kernels`.

Same row-wise contracts as :mod:`tempfast.ops.torch_impl`. Launchers never read tensor values on
the host (no synchronisation); the path and block sizes come from
:mod:`tempfast.kernels.heuristics`. Inputs need unit stride along the class dimension (other
layouts are copied once); the row stride is free.

Every cross-entropy launch writes into one fp32 workspace (layout: :mod:`tempfast.kernels.common`
and :class:`Layout`): the per-row loss / lse / dL/dT, the per-program partial sums of a
reduced loss, the slices' partial statistics and the int32 counters. A reduced call
(:func:`ce_reduced`) is two launches forward -- a one-program prep (divisor, counters) and the
cross-entropy kernel, whose last program sums the loss -- and one backward
(:func:`apply_upstream_`), which exits at once when the upstream gradient is 1.

The slices path runs its one-read cooperative launch only when at least ``n_slices``
programs of the compiled kernel can be resident at once (:func:`resident_programs`: the
compiled registers and shared memory against the device); under the interpreter (one program
at a time) or when that cannot be shown, it runs the two-phase fallback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import common
from ..kernels import cross_entropy as ce_kernels
from ..kernels import rescale as apply_kernels
from ..kernels import softmax as softmax_kernels
from ..kernels.heuristics import (
    LaunchConfig,
    apply_config,
    cdiv,
    row_config,
    slices_phases,
    vector_width,
)
from ..kernels.heuristics import resident_programs as occupancy

PREP_BLOCK = 1024
CE_FLAGS = ("PROB", "HAS_WEIGHT", "SMOOTH", "COMPUTE_GRAD", "COMPUTE_DT", "REDUCE")


@functools.lru_cache(maxsize=16)
def _device_limits(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    return {"sms": p.multi_processor_count,
            "regs_per_sm": getattr(p, "regs_per_multiprocessor", 65536),
            "threads_per_sm": getattr(p, "max_threads_per_multi_processor", 2048),
            "shared_per_sm": getattr(p, "shared_memory_per_multiprocessor", 228 * 1024)}


def _num_sms(device: torch.device) -> int | None:
    limits = _device_limits(device)
    return limits["sms"] if limits else None


# (kernel, args, kwargs) -> programs resident at once; bench.static installs one that reads the
# binary it compiles (the recording runs on CPU tensors without the interpreter).
resident_override: Callable[[object, tuple, dict], int] | None = None
_RESIDENT: dict[tuple, int] = {}


def _specialisation_key(args: tuple) -> tuple:
    """What the JIT specialises on, roughly: dtypes and 16-byte alignment of tensors,
    divisibility by 16 and equality to 1 of integers."""
    key = []
    for a in args:
        if isinstance(a, Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        elif isinstance(a, bool) or not isinstance(a, int):
            key.append(type(a))
        else:
            key.append((a % 16 == 0, a == 1))
    return tuple(key)


def resident_programs(kernel, args: tuple, kwargs: dict, device: torch.device) -> int:
    """Programs of ``kernel`` (compiled for these arguments) that fit on the device at once.
    1 off CUDA: the interpreter runs one program at a time."""
    if resident_override is not None:
        return resident_override(kernel, args, kwargs)
    limits = _device_limits(device)
    if limits is None:
        return 1
    key = (kernel.fn.__name__, tuple(sorted(kwargs.items())), _specialisation_key(args), device)
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()
        _RESIDENT[key] = occupancy(compiled.n_regs, compiled.metadata.shared,
                                   compiled.metadata.num_warps, **limits)
    return _RESIDENT[key]


def _unit_col_stride(x: Tensor) -> Tensor:
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


def _prob_target(target: Tensor, logits_dtype: torch.dtype) -> Tensor:
    """Probability targets in the logits' dtype or fp32 (fp32 soft labels with 16-bit logits,
    as mixed precision gives, stay fp32): the two pointer types the kernels are compiled for
    ahead of time. Other dtypes (fp64, 16-bit targets for fp32 logits) become fp32."""
    return target if target.dtype in (logits_dtype, torch.float32) else target.float()


def _stride_of(rows: Tensor) -> int:
    """0 for a broadcast ``(1,)`` per-row tensor, 1 for ``(N,)``."""
    return 0 if rows.numel() == 1 else 1


def config_for(x: Tensor, n_inputs: int = 1, *others: Tensor) -> LaunchConfig:
    """The launch configuration for rows of ``x`` (and ``others`` read or written alike)."""
    n_rows, n_cols = x.shape
    strides = [t.stride(0) for t in (x, *others) if t.dim() == 2 and n_rows > 1]
    vec = vector_width(n_cols, x.element_size(), *strides)
    return row_config(n_rows, n_cols, x.element_size(), _num_sms(x.device), n_inputs, vec)


@dataclass(frozen=True)
class Layout:
    """Offsets (fp32 elements) into a cross-entropy workspace: header, per-row outputs (loss,
    lse, dL/dT at ``rows + {0, N, 2N}``), per-program partial sums (``2 * programs``), the
    slices' partial statistics (``CE_PARTIALS`` per work item) and one int32 counter per row."""

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
        return self.sync + (self.n_rows if self.items else 0)


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

    def lse(self) -> Tensor:
        return self.row(1)

    def dt_rows(self) -> Tensor:
        """Per-row d loss / d T_row for an upstream gradient of 1 (the mean's factor in)."""
        return self.row(2)

    def dt_total(self) -> Tensor:
        """Their sum (0-dim): dL/dT of a scalar temperature."""
        return self.ws[common.WS_DT.value]

    def denom(self) -> Tensor:
        """The mean's divisor (1 for a sum)."""
        return self.ws[common.WS_LOSS_DIV.value]

    def dt_slot(self, per_row: bool) -> tuple[int, int]:
        """``(offset, count)`` of dL/dT in the workspace: per row, or the sum."""
        if per_row:
            return self.layout.rows + 2 * self.layout.n_rows, self.layout.n_rows
        return common.WS_DT.value, 1


def _ce_launch(x: Tensor, target: Tensor, t: Tensor | None, t_value: float,
               weight: Tensor | None, ignore_index: int, eps: float, *, grad_out: Tensor | None,
               grad_scale: Tensor | None, compute_dt: bool, reduce: str | None,
               defer: bool = False, cfg: LaunchConfig | None = None) -> CEResult:
    """Launch the cross-entropy kernels over ``x (N, C)``; ``reduce``: ``None`` (per-row
    outputs only), ``"sum"`` or ``"mean"`` (with the gradient scaled by the prep kernel's
    factor; ``grad_scale`` is then ignored)."""
    n_rows, n_cols = x.shape
    probs = target.dim() == 2
    q = _unit_col_stride(_prob_target(target, x.dtype)) if probs else None
    grad = grad_out is not None
    cfg = cfg or config_for(x, 1, *(a for a in (q, grad_out) if a is not None))
    flags = {"PROB": probs, "HAS_WEIGHT": weight is not None, "SMOOTH": eps > 0,
             "COMPUTE_GRAD": grad, "COMPUTE_DT": compute_dt, "REDUCE": reduce is not None}
    slices = cfg.path == "slices"
    items = n_rows * cfg.n_slices if slices else 0
    # The workspace is allocated before the programs are known (the cooperative grid depends
    # on the compiled kernel): size the partials for the largest grid of either path.
    programs = items if slices else cdiv(n_rows, cfg.block_n)
    layout = Layout(n_rows, programs if reduce is not None else 0, items)
    ws = torch.empty(layout.size, dtype=torch.float32, device=x.device)
    w = weight.float().contiguous() if weight is not None else ws
    y = ws if probs else target.contiguous()
    t_arg, stride_t = (ws, 0) if t_value > 0 else (t.contiguous(), _stride_of(t))
    if reduce is not None:
        scale, scale_off, stride_scale = ws, common.WS_GRAD_SCALE.value, 0
    elif grad:
        scale = grad_scale.float().contiguous()
        scale_off, stride_scale = 0, _stride_of(scale)
    else:
        scale, scale_off, stride_scale = ws, 0, 0
    g = grad_out if grad else x
    q_arg = q if probs else ws
    head = (x, x.stride(0), t_arg, stride_t, float(t_value), y, q_arg,
            q.stride(0) if probs else 0, w, g, g.stride(0), scale, scale_off, stride_scale, ws,
            layout.part)
    tail = (ignore_index, float(eps))
    phases = 0
    kernel_kw = {}
    if slices:
        kernel = ce_kernels.ce_slices_kernel
        args = (*head, layout.slices, layout.sync, n_rows, n_cols, cfg.n_slices, items, *tail)
        kernel_kw = {**flags, "VEC": cfg.vec, "BLOCK_C": cfg.block_c, "BLOCK_S": cfg.block_s,
                     "num_warps": cfg.num_warps}
        resident = resident_programs(kernel, args, {**kernel_kw, "PHASE": 0}, x.device)
        phases = slices_phases(cfg.n_slices, resident)
    if reduce is not None or phases == 1:
        mean = reduce == "mean"
        chunks = cdiv(n_rows, PREP_BLOCK) if mean and not probs else 0
        ce_kernels.ce_prep_kernel[(1,)](
            y, w, ws, layout.sync, n_rows if phases == 1 else 0, n_rows, n_cols, ignore_index,
            chunks, int(mean), int(defer), HAS_WEIGHT=weight is not None, BLOCK=PREP_BLOCK,
            num_warps=4)
    if not slices:
        ce_kernels.ce_rows_kernel[(programs,)](
            *head, n_rows, n_cols, *tail, **flags, VEC=cfg.vec, BLOCK_N=cfg.block_n,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    elif phases == 1:
        kernel[(min(resident, items),)](*args, **kernel_kw, PHASE=0)
    else:  # the statistics phase neither writes the gradient nor reduces
        stats_kw = {**kernel_kw, "COMPUTE_GRAD": False, "REDUCE": False}
        kernel[(items,)](*args, **stats_kw, PHASE=1)
        kernel[(items,)](*args, **kernel_kw, PHASE=2)
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
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`tempfast.ops.torch_impl.ce_rows`."""
    aliased = grad_out is not None and grad_out.data_ptr() == logits.data_ptr()
    x = logits if aliased else _unit_col_stride(logits)
    res = _ce_launch(x, target, t, 0.0, weight, ignore_index, label_smoothing,
                     grad_out=grad_out, grad_scale=grad_scale, compute_dt=compute_dt,
                     reduce=None)
    return res.row(0), res.row(1), res.row(2) if compute_dt else res.ws[:0]


def ce_reduced(logits: Tensor, target: Tensor, t: Tensor | None, t_value: float,
               weight: Tensor | None, ignore_index: int, label_smoothing: float,
               reduction: str, grad_out: Tensor | None, compute_dt: bool,
               defer: bool) -> CEResult:
    """A mean or sum cross-entropy in two launches, nothing else on the device: the loss at
    ``ws[WS_LOSS]``, with ``compute_dt`` dL/dT at ``ws[WS_DT]`` (summed) and per row (scaled
    by ``ws[WS_ROW_FACTOR]``), and, with ``grad_out``, the gradient for an upstream gradient of
    1 (without the mean's factor when ``defer``). ``t_value > 0``: the temperature by value."""
    aliased = grad_out is not None and grad_out.data_ptr() == logits.data_ptr()
    x = logits if aliased else _unit_col_stride(logits)
    return _ce_launch(x, target, t, t_value, weight, ignore_index, label_smoothing,
                      grad_out=grad_out, grad_scale=None, compute_dt=compute_dt,
                      reduce=reduction, defer=defer)


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
    _apply(buf, g, res.ws, dt_off, n_dt, defer, dt)
    return dt if t_grad else None


def _apply(buf: Tensor | None, g: Tensor, ws: Tensor, dt_off: int, n_dt: int,
           defer: bool, dt_out: Tensor | None = None) -> Tensor:
    n_rows, n_cols = buf.shape if buf is not None else (0, 0)
    buf = buf if buf is not None else ws
    block_n, block_c, warps, programs = apply_config(max(n_rows, 1), max(n_cols, 1),
                                                     _num_sms(ws.device))
    if dt_out is None:
        dt_out = torch.empty(n_dt, dtype=torch.float32, device=ws.device)
    col_tiles = cdiv(n_cols, block_c)
    tiles = cdiv(n_rows, block_n) * col_tiles
    apply_kernels.grad_apply_kernel[(programs,)](
        buf, buf.stride(0) if buf.dim() == 2 else 0, g, ws, dt_off,
        dt_out, n_dt, n_rows, n_cols, col_tiles, tiles, cdiv(tiles, programs),
        cdiv(n_dt, programs * 1024), int(defer),
        VEC=vector_width(n_cols, buf.element_size(), *buf.stride()[:1]) if n_rows else 1,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_DT=1024, num_warps=warps)
    return dt_out


def rescale_(buf: Tensor, g: Tensor) -> None:
    """See :func:`tempfast.ops.torch_impl.rescale_`: ``buf *= g`` for a scalar ``g``, on the
    device (skipped there when ``g == 1``). Per-row ``g`` is applied with one torch op."""
    if g.numel() != 1:
        buf.copy_(buf.float() * g.float().unsqueeze(1))
        return
    ws = torch.zeros(common.WS_HEADER.value, dtype=torch.float32, device=buf.device)
    _apply(buf, g.float().reshape(1), ws, 0, 0, False)


def _slices_workspace(n_rows: int, cfg: LaunchConfig, extra: int, device) -> tuple[Tensor, int]:
    """A zeroed workspace for a softmax slices launch: header, ``SOFTMAX_PARTIALS`` per item,
    ``extra`` slots, one int32 counter per row; returns it and the counters' offset."""
    items = n_rows * cfg.n_slices
    sync_off = common.WS_HEADER.value + common.SOFTMAX_PARTIALS.value * items + extra
    return torch.zeros(sync_off + n_rows, dtype=torch.float32, device=device), sync_off


def _t_args(t: Tensor | None, t_value: float, fallback: Tensor) -> tuple:
    if t_value > 0:
        return fallback, 0, float(t_value)
    return t.contiguous(), _stride_of(t), 0.0


def softmax_forward(x: Tensor, t: Tensor | None, log: bool, t_value: float = 0.0) -> Tensor:
    """See :func:`tempfast.ops.torch_impl.softmax_forward`."""
    x = _unit_col_stride(x)
    n_rows, n_cols = x.shape
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    cfg = config_for(x, 1, y)
    if cfg.path == "rows":
        softmax_kernels.softmax_rows_kernel[(cdiv(n_rows, cfg.block_n),)](
            x, x.stride(0), *_t_args(t, t_value, x), y, y.stride(0), n_rows, n_cols, LOG=log,
            VEC=cfg.vec, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
        return y
    ws, sync_off = _slices_workspace(n_rows, cfg, 0, x.device)
    items = n_rows * cfg.n_slices
    args = (x, x.stride(0), *_t_args(t, t_value, ws), y, y.stride(0), ws, sync_off, n_rows,
            n_cols, cfg.n_slices, items)
    kw = {"LOG": log, "VEC": cfg.vec, "BLOCK_C": cfg.block_c, "BLOCK_S": cfg.block_s,
          "num_warps": cfg.num_warps}
    _launch_slices(softmax_kernels.softmax_slices_kernel, args, kw, cfg, items, x.device)
    return y


def _launch_slices(kernel, args: tuple, kw: dict, cfg: LaunchConfig, items: int,
                   device: torch.device) -> None:
    """The cooperative one-read launch when it is deadlock-free, else the two phases."""
    resident = resident_programs(kernel, args, {**kw, "PHASE": 0}, device)
    if slices_phases(cfg.n_slices, resident) == 1:
        kernel[(min(resident, items),)](*args, **kw, PHASE=0)
    else:
        kernel[(items,)](*args, **kw, PHASE=1)
        kernel[(items,)](*args, **kw, PHASE=2)


def softmax_backward(y: Tensor, dy: Tensor, t: Tensor | None, log: bool, x: Tensor | None,
                     t_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """See :func:`tempfast.ops.torch_impl.softmax_backward`."""
    y = _unit_col_stride(y)
    dy = _unit_col_stride(dy)
    n_rows, n_cols = y.shape
    compute_dt = x is not None
    x = _unit_col_stride(x) if compute_dt else y
    dx = torch.empty((n_rows, n_cols), dtype=y.dtype, device=y.device)
    cfg = config_for(y, 3 if compute_dt else 2, dy, x, dx)
    if cfg.path == "rows":
        dt = torch.empty(n_rows if compute_dt else 0, dtype=torch.float32, device=y.device)
        softmax_kernels.softmax_bwd_rows_kernel[(cdiv(n_rows, cfg.block_n),)](
            y, y.stride(0), dy, dy.stride(0), x, x.stride(0), *_t_args(t, t_value, dt), dx,
            dx.stride(0), dt, n_rows, n_cols, LOG=log, COMPUTE_DT=compute_dt, VEC=cfg.vec,
            BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
        return dx, dt
    items = n_rows * cfg.n_slices
    ws, sync_off = _slices_workspace(n_rows, cfg, items, y.device)
    dt_off = sync_off - items
    args = (y, y.stride(0), dy, dy.stride(0), x, x.stride(0), *_t_args(t, t_value, ws), dx,
            dx.stride(0), ws, dt_off, sync_off, n_rows, n_cols, cfg.n_slices, items)
    kw = {"LOG": log, "COMPUTE_DT": compute_dt, "VEC": cfg.vec, "BLOCK_C": cfg.block_c,
          "BLOCK_S": cfg.block_s, "num_warps": cfg.num_warps}
    _launch_slices(softmax_kernels.softmax_bwd_slices_kernel, args, kw, cfg, items, y.device)
    if not compute_dt:
        return dx, ws[:0]
    return dx, ws[dt_off:sync_off].view(n_rows, cfg.n_slices).sum(1)

"""The Triton path: launchers for the kernels in :mod:`tempfast.kernels`.

Same functions and contracts as :mod:`tempfast.ops.torch_impl`. Launchers never read tensor
values on the host (no synchronisation); the path and block sizes come from the heuristics in
:mod:`tempfast.kernels.heuristics`. Inputs need unit stride along the class dimension (other
layouts are copied once); the row stride is free.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..kernels import cross_entropy as ce_kernels
from ..kernels import rescale as rescale_kernels
from ..kernels import softmax as softmax_kernels
from ..kernels.heuristics import LaunchConfig, cdiv, elementwise_config, next_pow2, row_config


@functools.lru_cache(maxsize=16)
def _num_sms(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


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


def config_for(x: Tensor, n_inputs: int = 1) -> LaunchConfig:
    n_rows, n_cols = x.shape
    return row_config(n_rows, n_cols, x.element_size(), _num_sms(x.device), n_inputs)


def _launch_ce(cfg: LaunchConfig, x: Tensor, t: Tensor, y: Tensor, q: Tensor, w: Tensor,
               loss: Tensor, lse: Tensor, dt: Tensor, g: Tensor, scale: Tensor, *,
               ignore_index: int, eps: float, flags: dict) -> None:
    n_rows, n_cols = x.shape
    common = (x, x.stride(0), t, _stride_of(t))
    outs = (loss, lse, dt, g, g.stride(0) if g.dim() == 2 else 0, scale, _stride_of(scale))
    if cfg.path == "single":
        ce_kernels.ce_single_pass_kernel[(cdiv(n_rows, cfg.block_n),)](
            *common, y, q, q.stride(0) if q.dim() == 2 else 0, w, *outs,
            n_rows, n_cols, ignore_index, eps, **flags,
            BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    elif cfg.path == "stream":
        ce_kernels.ce_stream_kernel[(n_rows,)](
            *common, y, q, q.stride(0) if q.dim() == 2 else 0, w, *outs,
            n_rows, n_cols, cdiv(n_cols, cfg.block_c), ignore_index, eps, **flags,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    else:
        part = torch.empty((n_rows, cfg.splits, ce_kernels.N_PARTIALS.value),
                           dtype=torch.float32, device=x.device)
        q_stride = q.stride(0) if q.dim() == 2 else 0
        stats_flags = {k: v for k, v in flags.items() if k != "COMPUTE_GRAD"}
        ce_kernels.ce_split_stats_kernel[(n_rows, cfg.splits)](
            *common, y, q, q_stride, w, part, n_cols, cfg.chunks_per_split, ignore_index, eps,
            **stats_flags, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
        ce_kernels.ce_split_finish_kernel[(n_rows, cfg.splits)](
            *common, y, q, q_stride, w, part, *outs, n_cols, cfg.chunks_per_split,
            ignore_index, eps, **flags, BLOCK_C=cfg.block_c,
            BLOCK_S=next_pow2(cfg.splits), num_warps=cfg.num_warps)


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
    if grad_out is not None and grad_out.data_ptr() == logits.data_ptr():
        x = logits
    else:
        x = _unit_col_stride(logits)
    n_rows = x.shape[0]
    device = x.device
    probs = target.dim() == 2
    q = _unit_col_stride(_prob_target(target, x.dtype)) if probs else x.new_empty(0)
    y = x.new_empty(0, dtype=torch.int64) if probs else target.contiguous()
    w = weight.float().contiguous() if weight is not None else x.new_empty(0, dtype=torch.float32)
    f32 = {"dtype": torch.float32, "device": device}
    loss = torch.empty(n_rows, **f32)
    lse = torch.empty(n_rows, **f32)
    dt = torch.empty(n_rows if compute_dt else 0, **f32)
    compute_grad = grad_scale is not None
    g = grad_out if compute_grad else x.new_empty(0)
    scale = grad_scale.float().contiguous() if compute_grad else torch.empty(0, **f32)
    flags = {"PROB": probs, "HAS_WEIGHT": weight is not None, "SMOOTH": label_smoothing > 0,
             "COMPUTE_GRAD": compute_grad, "COMPUTE_DT": compute_dt}
    _launch_ce(config_for(x), x, t.contiguous(), y, q, w, loss, lse, dt, g, scale,
               ignore_index=ignore_index, eps=float(label_smoothing), flags=flags)
    return loss, lse, dt


def softmax_forward(x: Tensor, t: Tensor, log: bool) -> Tensor:
    """See :func:`tempfast.ops.torch_impl.softmax_forward`."""
    x = _unit_col_stride(x)
    n_rows, n_cols = x.shape
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    cfg = config_for(x)
    args = (x, x.stride(0), t.contiguous(), _stride_of(t), y, y.stride(0))
    if cfg.path == "single":
        softmax_kernels.softmax_single_pass_kernel[(cdiv(n_rows, cfg.block_n),)](
            *args, n_rows, n_cols, LOG=log, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps)
    elif cfg.path == "stream":
        softmax_kernels.softmax_stream_kernel[(n_rows,)](
            *args, n_cols, cdiv(n_cols, cfg.block_c), LOG=log, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps)
    else:
        part = torch.empty((n_rows, cfg.splits, 2), dtype=torch.float32, device=x.device)
        softmax_kernels.softmax_split_stats_kernel[(n_rows, cfg.splits)](
            x, x.stride(0), args[2], args[3], part, n_cols, cfg.chunks_per_split,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
        softmax_kernels.softmax_split_finish_kernel[(n_rows, cfg.splits)](
            *args, part, n_cols, cfg.chunks_per_split, LOG=log, BLOCK_C=cfg.block_c,
            BLOCK_S=next_pow2(cfg.splits), num_warps=cfg.num_warps)
    return y


def softmax_backward(y: Tensor, dy: Tensor, t: Tensor, log: bool,
                     x: Tensor | None) -> tuple[Tensor, Tensor]:
    """See :func:`tempfast.ops.torch_impl.softmax_backward`."""
    y = _unit_col_stride(y)
    dy = _unit_col_stride(dy)
    n_rows, n_cols = y.shape
    compute_dt = x is not None
    x = _unit_col_stride(x) if compute_dt else y
    dx = torch.empty((n_rows, n_cols), dtype=y.dtype, device=y.device)
    dt = torch.empty(n_rows if compute_dt else 0, dtype=torch.float32, device=y.device)
    cfg = config_for(y, n_inputs=3 if compute_dt else 2)
    args = (y, y.stride(0), dy, dy.stride(0), x, x.stride(0), t.contiguous(), _stride_of(t),
            dx, dx.stride(0), dt)
    if cfg.path == "single":
        softmax_kernels.softmax_bwd_single_pass_kernel[(cdiv(n_rows, cfg.block_n),)](
            *args, n_rows, n_cols, LOG=log, COMPUTE_DT=compute_dt, BLOCK_N=cfg.block_n,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    elif cfg.path == "stream":
        softmax_kernels.softmax_bwd_stream_kernel[(n_rows,)](
            *args, n_cols, cdiv(n_cols, cfg.block_c), LOG=log, COMPUTE_DT=compute_dt,
            BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    else:
        part = torch.empty((n_rows, cfg.splits), dtype=torch.float32, device=y.device)
        dt_parts = torch.empty((n_rows, cfg.splits) if compute_dt else 0, dtype=torch.float32,
                               device=y.device)
        softmax_kernels.softmax_bwd_split_stats_kernel[(n_rows, cfg.splits)](
            *args[:4], part, n_cols, cfg.chunks_per_split, LOG=log, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps)
        softmax_kernels.softmax_bwd_split_finish_kernel[(n_rows, cfg.splits)](
            *args[:10], dt_parts, part, n_cols, cfg.chunks_per_split, LOG=log,
            COMPUTE_DT=compute_dt, BLOCK_C=cfg.block_c, BLOCK_S=next_pow2(cfg.splits),
            num_warps=cfg.num_warps)
        if compute_dt:
            dt = dt_parts.sum(1)
    return dx, dt


def rescale_(buf: Tensor, g: Tensor) -> None:
    """See :func:`tempfast.ops.torch_impl.rescale_`; the ``g == 1`` test runs on the device."""
    n_rows, n_cols = buf.shape
    block_n, block_c, warps = elementwise_config(n_rows, n_cols)
    g = g.float().contiguous()
    grid = (cdiv(n_rows, block_n), cdiv(n_cols, block_c))
    rescale_kernels.rescale_rows_kernel[grid](
        buf, buf.stride(0), g, _stride_of(g), n_rows, n_cols,
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)

"""The upstream gradient applied to a gradient written in the forward pass, on both paths.

``buf[i, :] *= g[i]`` for ``buf (N, C)`` and ``g`` of shape ``(1,)`` or ``(N,)``: the backward
pass of every op that writes its gradient in the forward pass (cross-entropy, distillation,
the linear head). A scalar ``g`` equal to 1 moves nothing (tested on the device by the kernel,
on the host for host tensors). Triton source: ``kernels/rescale.py`` (``grad_apply_kernel``,
which also writes ``g * dL/dT`` from a cross-entropy workspace: :func:`apply_kernel`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunked import chunk_rows, compute_dtype, for_chunks, rows_of
from .dispatch import runs_triton
from .launch import quiet_interpreter


def rescale_(buf: Tensor, g: Tensor) -> None:
    """``buf *= g`` row-wise, in place, computed in fp32 (fp64 for fp64 buffers)."""
    if runs_triton(buf):
        _rescale_triton(buf, g)
        return
    if g.numel() == 1 and g.device.type == "cpu" and float(g) == 1.0:
        return
    n_rows, n_cols = buf.shape
    step = chunk_rows(n_cols)
    cdt = compute_dtype(buf.dtype)

    def chunk(r0: int, r1: int, worker: int) -> None:
        buf[r0:r1] = buf[r0:r1].to(cdt) * rows_of(g, r0, r1, cdt)

    for_chunks(n_rows, step, chunk)


def _rescale_triton(buf: Tensor, g: Tensor) -> None:
    """A scalar ``g`` on the device (skipped there when it is 1); a per-row ``g`` with one
    torch op."""
    if g.numel() != 1:
        buf.copy_(buf.float() * g.float().unsqueeze(1))
        return
    from ..kernels import common

    ws = torch.zeros(common.WS_HEADER.value, dtype=torch.float32, device=buf.device)
    apply_kernel(buf, g.float().reshape(1), ws, 0, 0, False)


@quiet_interpreter
def apply_kernel(buf: Tensor | None, g: Tensor, ws: Tensor, dt_off: int, n_dt: int,
                 defer: bool, dt_out: Tensor | None = None) -> Tensor:
    """One launch of ``grad_apply_kernel``: ``dt_out = g * ws[dt_off:dt_off + n_dt]`` and
    ``buf *= g`` (times ``ws[WS_ROW_FACTOR]`` when ``defer``), the latter skipped on the device
    when that factor is 1. Returns ``dt_out``."""
    from ..kernels import rescale as kernels
    from ..kernels.heuristics import cdiv, vector_width
    from .launch import num_sms

    n_rows, n_cols = buf.shape if buf is not None else (0, 0)
    buf = buf if buf is not None else ws
    block_n, block_c, warps, programs = kernels.apply_config(max(n_rows, 1), max(n_cols, 1),
                                                             num_sms(ws.device))
    if dt_out is None:
        dt_out = torch.empty(n_dt, dtype=torch.float32, device=ws.device)
    col_tiles = cdiv(n_cols, block_c)
    tiles = cdiv(n_rows, block_n) * col_tiles
    kernels.grad_apply_kernel[(programs,)](
        buf, buf.stride(0) if buf.dim() == 2 else 0, g, ws, dt_off,
        dt_out, n_dt, n_rows, n_cols, col_tiles, tiles, cdiv(tiles, programs),
        cdiv(n_dt, programs * 1024), int(defer),
        VEC=vector_width(n_cols, buf.element_size(), *buf.stride()[:1]) if n_rows else 1,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_DT=1024, num_warps=warps)
    return dt_out

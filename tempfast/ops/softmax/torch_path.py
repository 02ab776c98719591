"""The PyTorch path of the softmax: the row-wise contract of ``triton_path.py`` for CPU tensors,
chunked (:mod:`tempfast.ops.chunked`), and the ``aten`` route of small calls.

Shapes: ``x (N, C)`` along dim 1; ``t`` the temperature, ``(1,)`` or ``(N,)`` (or ``None``
and ``t_value`` by value); per-row outputs ``(N,)`` in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import check_temperature_values
from ..chunked import (
    LN2,
    LOG2E,
    chunk_rows,
    compute_dtype,
    conversion_buffer,
    for_chunks,
    in_compute_dtype,
    inverse_temperature,
    rows_of,
    temperature_tensor,
    worker_count,
)


def softmax_forward(x: Tensor, t: Tensor | None, log: bool, t_value: float = 0.0) -> Tensor:
    """``y = softmax(x / t)`` or ``log_softmax(x / t)`` along dim 1, in base 2:
    ``e = 2^(x k - m)`` with ``k = log2(e) / t``, ``y = e / sum(e)`` or
    ``(x k - m - log2 sum(e)) ln 2``."""
    n_rows, n_cols = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    step = chunk_rows(n_cols)
    cdt = compute_dtype(x.dtype)
    t = temperature_tensor(t, t_value, cdt, x.device)
    direct = y.dtype == cdt  # build the result in the output itself (no final copy)
    workers = range(worker_count(n_rows, step))  # buffers per chunk worker
    works = [None if direct and not log else torch.empty(min(step, n_rows), n_cols, dtype=cdt,
                                                         device=x.device) for _ in workers]
    x_bufs = [conversion_buffer(x, step, cdt) for _ in workers]

    def chunk(r0: int, r1: int, worker: int) -> None:
        work, x_buf = works[worker], x_bufs[worker]
        z = in_compute_dtype(x[r0:r1], x_buf)
        k = inverse_temperature(rows_of(t, r0, r1, cdt)) * LOG2E
        m = z.amax(1, keepdim=True) * k
        m.masked_fill_(m == float("-inf"), 0.0)
        out = y[r0:r1] if direct else work[: r1 - r0]
        torch.mul(z, k, out=out).sub_(m)
        if log:
            s = torch.exp2(out, out=work[: r1 - r0] if direct else None).sum(1, keepdim=True)
            out.sub_(s.log2_()).mul_(LN2)
        else:
            out.exp2_()
            out.div_(out.sum(1, keepdim=True))
        if not direct:
            y[r0:r1] = out

    for_chunks(n_rows, step, chunk)
    return y


def softmax_backward(y: Tensor, dy: Tensor, t: Tensor | None, log: bool, x: Tensor | None,
                     t_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Gradients of ``softmax(x / t)`` (or log_softmax) given its output ``y`` and ``dy``.

    softmax:      dx = y * (dy - sum(dy * y)) / t
    log_softmax:  dx = (dy - exp(y) * sum(dy)) / t
    and, when ``x`` is given, the per-row ``dL/dt = -sum(dx * x) / t``. The bracket is
    PyTorch's fused softmax backward, applied chunk by chunk.
    """
    n_rows, n_cols = y.shape
    cdt = compute_dtype(y.dtype)
    t = temperature_tensor(t, t_value, cdt, y.device)
    dx = torch.empty_like(y, memory_format=torch.contiguous_format)
    dt_row = torch.empty(n_rows if x is not None else 0, dtype=cdt, device=y.device)
    step = chunk_rows(n_cols)
    backward = torch.ops.aten._log_softmax_backward_data if log \
        else torch.ops.aten._softmax_backward_data
    out_name = "out" if log else "grad_input"  # the two ops name their out= argument apart
    bufs = [(conversion_buffer(y, step, cdt), conversion_buffer(dy, step, cdt),
             conversion_buffer(x, step, cdt) if x is not None else None,
             conversion_buffer(dx, step, cdt))  # g: dx itself when it has the compute dtype
            for _ in range(worker_count(n_rows, step))]

    def chunk(r0: int, r1: int, worker: int) -> None:
        y_buf, dy_buf, x_buf, g_buf = bufs[worker]
        inv_t = inverse_temperature(rows_of(t, r0, r1, cdt))
        g = dx[r0:r1] if g_buf is None else g_buf[: r1 - r0]
        backward.out(in_compute_dtype(dy[r0:r1], dy_buf), in_compute_dtype(y[r0:r1], y_buf),
                     1, cdt, **{out_name: g})
        g.mul_(inv_t)
        if g_buf is not None:
            dx[r0:r1] = g
        if x is not None:  # nansum: a masked class (x = -inf, dx = 0) gives 0 * inf = NaN
            gx = torch.nansum(g * in_compute_dtype(x[r0:r1], x_buf), 1)
            dt_row[r0:r1] = -gx * inv_t[:, 0]

    for_chunks(n_rows, step, chunk)
    return dx, dt_row


def small_softmax(x: Tensor, temperature: float | Tensor, log: bool) -> Tensor:
    """The ``aten`` route: ``softmax(x / T)`` (or ``log_softmax``) over dim 1 of a small CPU
    ``x (N, C)`` with stock aten ops, in fp32 (fp64 stays fp64), stored in ``x``'s dtype; ``T``
    needs no gradient. Twice differentiable, as eager PyTorch."""
    z = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if isinstance(temperature, Tensor):
        check_temperature_values(temperature.detach())
        if temperature.numel() > 1:
            temperature = temperature.to(z.dtype).unsqueeze(1)
    y = torch.log_softmax(z / temperature, 1) if log else torch.softmax(z / temperature, 1)
    return y if y.dtype == x.dtype else y.to(x.dtype)

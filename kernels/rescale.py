"""In-place row rescale of a gradient buffer: ``buf[i, :] *= g[i]``.

The backward pass of a fused cross-entropy multiplies the stored gradient by the incoming
gradient ``g``. When ``g == 1`` (plain ``loss.backward()``) the multiplication is a no-op; the
kernel tests ``g`` on the device and masks off every load and store of such rows, so the common
case costs one small launch and no memory traffic, without a host synchronisation.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rescale_rows_kernel(buf_ptr, stride_buf, g_ptr, stride_g, n_rows, n_cols,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid ``(cdiv(N, BLOCK_N), cdiv(C, BLOCK_C))``; ``g`` fp32 with row stride 0 or 1."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < n_rows
    g = tl.load(g_ptr + rows * stride_g, mask=row_mask, other=1.0)
    mask = (row_mask & (g != 1.0))[:, None] & (cols < n_cols)[None, :]
    offs = rows[:, None] * stride_buf + cols[None, :]
    x = tl.load(buf_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(buf_ptr + offs, (x * g[:, None]).to(buf_ptr.dtype.element_ty), mask=mask)

"""Helpers of the PyTorch paths (``torch_path.py`` of each op): rows in chunks.

Rows are processed in chunks of about ``CHUNK_ELEMENTS`` values, computed in fp32 (fp64 for
fp64 inputs) and written back in the input dtype, so temporaries stay bounded by the chunk and
never reach ``N x C``. A per-row tensor (temperature, upstream gradient) is ``(1,)`` (one value
for every row) or ``(N,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import accumulation_dtype

CHUNK_ELEMENTS = 1 << 20
MAX_CHUNK_ROWS = 1 << 15
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

compute_dtype = accumulation_dtype  # the chunks compute in the ops' accumulation dtype


def row_chunks(n_rows: int, n_cols: int) -> tuple[range, int]:
    """Chunk starts and the chunk height (rows) that keep a chunk near CHUNK_ELEMENTS values
    (and its per-row temporaries small: at most MAX_CHUNK_ROWS rows)."""
    step = max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // max(n_cols, 1)))
    return range(0, n_rows, step), step


def conversion_buffer(x: Tensor, step: int, cdt: torch.dtype) -> Tensor | None:
    """One chunk-sized buffer, reused by every chunk, for ``x`` converted to the compute dtype
    (``None`` when ``x`` already has it): fresh per-chunk allocations of megabytes cost page
    faults."""
    if x.dtype == cdt:
        return None
    return torch.empty(min(step, x.shape[0]), x.shape[1], dtype=cdt, device=x.device)


def in_compute_dtype(chunk: Tensor, buf: Tensor | None) -> Tensor:
    """``chunk`` converted into ``buf`` (or as it is when there is no buffer)."""
    if buf is None:
        return chunk
    return buf[: chunk.shape[0]].copy_(chunk)


def inverse_temperature(t: Tensor) -> Tensor:
    """``1 / t``, NaN where ``t`` is not finite and positive (values on a GPU are not checked
    on the host; this mirrors the kernels' NaN rows)."""
    return torch.where(torch.isfinite(t) & (t > 0), 1.0 / t, float("nan"))


def rows_of(t: Tensor, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Rows ``start:stop`` of a per-row ``(N,)`` or broadcast ``(1,)`` tensor, as a column."""
    part = t if t.numel() == 1 else t[start:stop]
    return part.to(dtype).reshape(-1, 1)


def temperature_tensor(t: Tensor | None, t_value: float, cdt: torch.dtype,
                       device: torch.device) -> Tensor:
    """The temperature as a ``(1,)`` tensor when it came by value (``t`` is None)."""
    if t is None:
        return torch.full((1,), t_value, dtype=cdt, device=device)
    return t

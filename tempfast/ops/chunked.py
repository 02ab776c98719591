"""Helpers of the PyTorch paths (``torch_path.py`` of each op): rows in chunks.

Rows are processed in chunks of about ``CHUNK_ELEMENTS`` values, computed in fp32 (fp64 for
fp64 inputs) and written back in the input dtype, so temporaries stay bounded by the chunk and
never reach ``N x C``. A per-row tensor (temperature, upstream gradient) is ``(1,)`` (one value
for every row) or ``(N,)``.

Threads (:func:`for_chunks`): with ``torch.get_num_threads() = k > 1`` and more than one chunk,
the chunks are shared out to ``k`` workers (the calling thread and ``k - 1`` threads started for
the call), each running its chunks' ops on one thread. A chunk's ops are many and small; run
with torch's intra-op threads, each would end in a barrier that waits for every thread, and on
shared cores (a data-loader worker, another job) a descheduled thread stalls each of them
(``python -m bench.under_load``: 1.46x the one-thread time at C = 32000 fp32 beside another
process, before the workers). Workers meet once, at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import accumulation_dtype

CHUNK_ELEMENTS = 1 << 20
MAX_CHUNK_ROWS = 1 << 17
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

compute_dtype = accumulation_dtype  # the chunks compute in the ops' accumulation dtype


def chunk_rows(n_cols: int) -> int:
    """The chunk height (rows) that keeps a chunk near CHUNK_ELEMENTS values (and its per-row
    temporaries small: at most MAX_CHUNK_ROWS rows); :func:`for_chunks` walks the chunks."""
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // max(n_cols, 1)))


def for_chunks(n_rows: int, step: int, body: Callable[[int, int, int], None]) -> None:
    """``body(r0, r1, worker)`` for every chunk ``[r0, r1)`` of ``step`` rows: on one thread
    when torch has one or there is one chunk, else by ``min(threads, chunks)`` workers numbered
    from 0 (the caller is worker 0), each taking the next chunk not yet taken (a worker the
    scheduler holds back takes fewer) and running its ops on one thread; per-worker buffers
    are indexed by ``worker``. Chunks must write disjoint rows. A worker's exception is raised
    in the caller once every worker has stopped (the others take no new chunk)."""
    starts = range(0, n_rows, step)
    workers = worker_count(n_rows, step)
    if workers <= 1:
        for r0 in starts:
            body(r0, min(r0 + step, n_rows), 0)
        return
    pending = iter(starts)
    lock = threading.Lock()
    errors: list[BaseException] = []
    # the caller's thread-local modes, which new threads do not inherit
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast_on, autocast_dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def take() -> int | None:
        with lock:
            return None if errors else next(pending, None)

    def work(worker: int) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # this thread's intra-op threads only (OpenMP's per thread)
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                    torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_on):
                while (r0 := take()) is not None:
                    body(r0, min(r0 + step, n_rows), worker)
        except BaseException as exc:  # re-raised by the caller
            with lock:
                errors.append(exc)
        finally:
            torch.set_num_threads(threads)

    started = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(1, workers)]
    for t in started:
        t.start()
    work(0)
    for t in started:
        t.join()
    if errors:
        raise errors[0]


def worker_count(n_rows: int, step: int) -> int:
    """How many workers :func:`for_chunks` uses (the per-worker buffers to allocate)."""
    return max(1, min(torch.get_num_threads(), -(-n_rows // max(step, 1))))


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


def capped(x: Tensor, softcap: float) -> tuple[Tensor, Tensor | float]:
    """``(a, da/dx)``: ``softcap tanh(x / softcap)`` and ``1 - tanh^2``, or ``(x, 1)``."""
    if not softcap:
        return x, 1.0
    th = torch.tanh(x / softcap)
    return softcap * th, 1.0 - th * th


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

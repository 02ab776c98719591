"""The PyTorch path of the token statistics: the contract of ``triton_path.py`` for CPU tensors
(and float64), chunked (:mod:`tempfast.ops.chunked`), in fp32 (fp64 for fp64 inputs). The math
is in ``kernels/token_logprobs.py``.

Shapes: ``x (N, V)``; ``target (N,)`` int64; ``temperature`` ``(1,)`` or ``(N,)`` (or ``None``
with ``t_value`` a number); ``softcap`` 0 for none. Outputs ``(N,)`` in the accumulation
dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..._checks import accumulation_dtype
from ..chunked import (
    capped,
    chunk_rows,
    for_chunks,
    inverse_temperature,
    rows_of,
    temperature_tensor,
)


def _targets(y: Tensor, ignore_index: int, n_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid, bad, safe)`` columns: rows not ignored, indices out of range, the index
    clamped into ``[0, V)``."""
    y = y.reshape(-1, 1)
    valid = y != ignore_index
    bad = valid & ((y < 0) | (y >= n_cols))
    return valid, bad, torch.where(valid & ~bad, y, 0)


def _log_probs(x: Tensor, inv_t: Tensor, softcap: float, lse: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor | float]:
    """``(lp, lse, slope)`` of a chunk: ``log softmax(a / T)``, its log-sum-exp (given, or
    computed) and ``da/dx``."""
    a, slope = capped(x, softcap)
    a = a * inv_t
    if lse is None:
        lse = torch.logsumexp(a, 1, keepdim=True)
    return a - lse, lse, slope


def _plogp(p: Tensor, lp: Tensor) -> Tensor:
    """``p lp`` with the terms of ``p = 0`` (``lp = -inf``) dropped."""
    return torch.where(p > 0, p * lp, 0.0)


def token_forward(x: Tensor, target: Tensor, t: Tensor | None, t_value: float, softcap: float,
                  ignore_index: int, entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, H, lse)`` per row (``H`` empty without ``entropy``); 0 for ignored rows, NaN
    for an index out of range."""
    n_rows, n_cols = x.shape
    cdt = accumulation_dtype(x.dtype)
    temperature = temperature_tensor(t, t_value, cdt, x.device)
    logp, lse = (torch.empty(n_rows, dtype=cdt, device=x.device) for _ in range(2))
    h = torch.empty(n_rows if entropy else 0, dtype=cdt, device=x.device)
    log_v = math.log(max(n_cols, 1))

    def chunk(r0: int, r1: int, worker: int) -> None:
        valid, bad, safe = _targets(target[r0:r1], ignore_index, n_cols)
        inv_t = inverse_temperature(rows_of(temperature, r0, r1, cdt))
        lp, row_lse, _ = _log_probs(x[r0:r1].to(cdt), inv_t, softcap)
        picked = torch.where(bad, float("nan"), lp.gather(1, safe).clamp(max=0.0))
        logp[r0:r1] = torch.where(valid, picked, 0.0).reshape(-1)
        lse[r0:r1] = torch.where(valid, row_lse, 0.0).reshape(-1)
        if entropy:
            raw = -_plogp(lp.exp(), lp).sum(1, keepdim=True)
            ent = torch.where(bad, float("nan"), raw.clamp(0.0, log_v))
            h[r0:r1] = torch.where(valid, ent, 0.0).reshape(-1)

    for_chunks(n_rows, chunk_rows(n_cols), chunk)
    return logp, h, lse


def token_backward(x: Tensor, target: Tensor, t: Tensor | None, t_value: float,
                   softcap: float, ignore_index: int, h: Tensor, lse: Tensor,
                   g_lp: Tensor | None, g_h: Tensor | None, g_lse: Tensor | None,
                   compute_dt: bool) -> tuple[Tensor, Tensor]:
    """``(dL/dx, S)``: the gradient in ``x``'s dtype (0 for ignored rows) and, with
    ``compute_dt``, the sums ``S (N, 2)`` = ``(sum p lp, sum p (lp + H)^2)`` of dL/dT (else
    empty). ``g_*``: upstream gradients ``(N,)``, ``None`` for none (``g_h`` needs ``h``)."""
    n_rows, n_cols = x.shape
    cdt = accumulation_dtype(x.dtype)
    temperature = temperature_tensor(t, t_value, cdt, x.device)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    sums = torch.zeros((n_rows, 2) if compute_dt else (0, 2), dtype=cdt, device=x.device)

    def col(g: Tensor | None, r0: int, r1: int, valid: Tensor) -> Tensor | float:
        return 0.0 if g is None else torch.where(valid, g[r0:r1].to(cdt).reshape(-1, 1), 0.0)

    def chunk(r0: int, r1: int, worker: int) -> None:
        valid, bad, safe = _targets(target[r0:r1], ignore_index, n_cols)
        inv_t = inverse_temperature(rows_of(temperature, r0, r1, cdt))
        inv_t = torch.where(bad, float("nan"), inv_t)
        row_lse = lse[r0:r1].to(cdt).reshape(-1, 1)
        lp, _, slope = _log_probs(x[r0:r1].to(cdt), inv_t, softcap, row_lse)
        p = torch.where(valid, lp.exp(), 0.0)
        lp = torch.where(p > 0, lp, 0.0)
        glp = col(g_lp, r0, r1, valid)
        coef = col(g_lse, r0, r1, valid) - glp
        if g_h is not None:
            q = lp + h[r0:r1].to(cdt).reshape(-1, 1)
            coef = coef - col(g_h, r0, r1, valid) * q
            if compute_dt:
                sums[r0:r1, 1] = (p * q * q).sum(1)
        ga = p * coef
        if g_lp is not None:
            ga = ga.scatter_add(1, safe, torch.where(valid, glp, 0.0))
        gz = torch.where(valid, ga * slope * inv_t, 0.0)
        gx[r0:r1] = gz.to(x.dtype)
        if compute_dt:
            sums[r0:r1, 0] = (p * lp).sum(1)

    for_chunks(n_rows, chunk_rows(n_cols), chunk)
    return gx, sums

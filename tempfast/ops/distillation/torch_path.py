"""The PyTorch path of the distillation loss: the row-wise contract of ``triton_path.py`` for
CPU tensors, chunked (:mod:`tempfast.ops.chunked`), in fp32 (fp64 for fp64 inputs). The math
is in :mod:`.op`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import accumulation_dtype
from ..chunked import chunk_rows, for_chunks, inverse_temperature, rows_of


def _wsum(p: Tensor, x: Tensor) -> Tensor:
    """``sum_j p_j x_j`` per row, terms with ``p_j = 0`` dropped (``x`` may be infinite)."""
    return torch.where(p > 0, p * x, 0.0).sum(1, keepdim=True)


def distill_rows(student: Tensor, teacher: Tensor, temperature: Tensor, target: Tensor | None,
                 ignore_index: int, kd_scale: float, ce_scale: Tensor | None, teacher_grad: bool,
                 compute_dt: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per row: ``(kd_rows, ce_rows, grad_s, grad_t, dt_rows)``.

    ``kd_rows = T^2 KL`` and ``dt_rows = d kd_row / dT`` (unscaled, fp32 or fp64);
    ``ce_rows`` the hard-label cross-entropy (0 for ignored rows; empty without target);
    ``grad_s = kd_scale T (p_s - p_t) + ce_scale (softmax(s) - onehot(y))`` and, with
    ``teacher_grad``, ``grad_t = kd_scale T p_t (log p_t - log p_s - KL)``, in the inputs'
    dtype (empty when not asked for). ``temperature``: ``(1,)`` or ``(N,)``.
    """
    n_rows, n_cols = student.shape
    cdt = accumulation_dtype(student.dtype)
    dev = student.device
    kd = torch.empty(n_rows, dtype=cdt, device=dev)
    ce = torch.empty(n_rows if target is not None else 0, dtype=cdt, device=dev)
    grad_s = torch.empty((n_rows, n_cols), dtype=student.dtype, device=dev)
    grad_t = torch.empty((n_rows, n_cols) if teacher_grad else 0, dtype=teacher.dtype,
                         device=dev)
    dt = torch.empty(n_rows if compute_dt else 0, dtype=cdt, device=dev)
    ce_scale = ce_scale.to(cdt) if ce_scale is not None else None
    step = chunk_rows(n_cols)

    def chunk(r0: int, r1: int, worker: int) -> None:
        temp = rows_of(temperature, r0, r1, cdt)
        inv = inverse_temperature(temp)
        s = student[r0:r1].to(cdt)
        a = teacher[r0:r1].to(cdt) * inv
        b = s * inv
        log_pt = torch.log_softmax(a, 1)
        log_ps = torch.log_softmax(b, 1)
        pt, ps = log_pt.exp(), log_ps.exp()
        delta = log_pt - log_ps
        kl = _wsum(pt, delta).clamp_min(0.0)
        kd[r0:r1] = (temp * temp * kl).reshape(-1)
        gs = (temp * kd_scale) * (ps - pt)
        if target is not None:
            y = target[r0:r1]
            valid = (y != ignore_index).unsqueeze(1)
            safe = torch.where(valid, y.unsqueeze(1), 0)
            log_p1 = torch.log_softmax(s, 1)
            ce[r0:r1] = torch.where(valid, -log_p1.gather(1, safe), 0.0).reshape(-1)
            g1 = log_p1.exp().scatter_add_(1, safe, torch.full_like(log_p1[:, :1], -1.0))
            gs += g1 * torch.where(valid, ce_scale, 0.0)
        grad_s[r0:r1] = gs
        if teacher_grad:
            grad_t[r0:r1] = (temp * kd_scale) * torch.where(pt > 0, pt * (delta - kl), 0.0)
        if compute_dt:
            r = a - b
            cov = _wsum(pt, (a - _wsum(pt, a)) * (r - _wsum(pt, r)))
            dt[r0:r1] = (2.0 * temp * kl + temp * (_wsum(pt, b) - _wsum(ps, b) - cov)).reshape(-1)

    for_chunks(n_rows, step, chunk)
    return kd, ce, grad_s, grad_t, dt

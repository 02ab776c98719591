"""The PyTorch path of the cross-entropy: the row-wise contract of ``triton_path.py`` for CPU
tensors, chunked (:mod:`tempfast.ops.chunked`), and the ``aten`` route of small calls.

Shapes: ``logits (N, C)``; ``target`` ``(N,)`` int64 class indices or ``(N, C)``
probabilities; ``t`` the temperature, ``(1,)`` or ``(N,)``; ``weight`` ``(C,)`` or None;
per-row outputs ``(N,)`` in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..chunked import (
    LN2,
    LOG2E,
    chunk_rows,
    compute_dtype,
    for_chunks,
    inverse_temperature,
    rows_of,
    temperature_tensor,
    worker_count,
)
from ..rescale import rescale_


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
    """Per-row temperature cross-entropy; optionally the scaled gradient, written to ``grad_out``.

    With ``c`` the target weights of a row (``eps`` the label smoothing; class indices:
    ``c_j = (1-eps) w_y [j=y] + (eps/C) w_j``; probabilities ``q``: ``c_j = w_j ((1-eps) q_j +
    eps/C)``), ``s = sum(c)``, ``lse = logsumexp(z / t)`` and ``p = softmax(z / t)``:

        loss   = s * lse - sum(c * z) / t  =  ln2 (s log2 S + sum(c * (m - u)))
        grad   = grad_scale / t * (s * p - c)             (ignored rows: 0)
        dL/dt  = (sum(c * z) - s * sum(p * z)) / t**2

    with ``u = z log2(e) / t``, ``m = max u`` and ``S = sum 2^(u - m)``. The loss is computed in
    the second form (every term >= 0: never negative, full precision on confident rows; see
    :mod:`tempfast.kernels.cross_entropy`). With ``softcap`` (0: none) ``z`` is
    ``softcap tanh(z / softcap)`` throughout and the gradient takes its slope; ``z_loss``
    (times ``z_scale``, a one-value tensor, when given) adds ``zl lse^2`` to each counted row
    and ``2 zl lse`` to ``s`` in the gradient and dL/dT.

    Returns ``(loss_rows, lse, dt_rows)``, each ``(N,)`` (``dt_rows`` empty unless asked).
    """
    n_rows, n_cols = logits.shape
    probs = target.dim() == 2
    device = logits.device
    cdt = compute_dtype(logits.dtype)
    loss = torch.empty(n_rows, dtype=cdt, device=device)
    lse = torch.empty(n_rows, dtype=cdt, device=device)
    dt_row = torch.empty(n_rows if compute_dt else 0, dtype=cdt, device=device)
    w = weight.to(cdt) if weight is not None else None
    total_weight = w.sum() if w is not None else float(n_cols)
    step = chunk_rows(n_cols)
    # The exponentials are computed in a work buffer: the gradient buffer itself when it has
    # the compute dtype and does not alias the logits (no final copy), else one reused buffer.
    direct = (grad_out is not None and grad_out.dtype == cdt
              and grad_out.data_ptr() != logits.data_ptr())
    works = [None if direct else torch.empty(min(step, n_rows), n_cols, dtype=cdt,
                                             device=device)
             for _ in range(worker_count(n_rows, step))]

    zl = z_loss * z_scale.to(cdt) if z_scale is not None else z_loss

    def chunk(r0: int, r1: int, worker: int) -> None:
        work = works[worker]
        z = logits[r0:r1]  # in its own dtype: every use below computes in cdt
        slope = None
        if softcap:
            th = torch.tanh(z.to(cdt) / softcap)
            z, slope = softcap * th, 1.0 - th * th
        inv_t = inverse_temperature(rows_of(t, r0, r1, cdt))
        k = inv_t * LOG2E  # base 2: exp2 is several times faster than exp on CPUs
        e = grad_out[r0:r1] if direct else work[: r1 - r0]
        if z.dtype != cdt:
            z_c = e.copy_(z)  # convert once, into the work buffer
            m = z_c.amax(1, keepdim=True) * k  # max of z / t in log2 units (t > 0)
            e.mul_(k)
        else:
            m = z.amax(1, keepdim=True) * k
            torch.mul(z, k, out=e)
        m.masked_fill_(m == float("-inf"), 0.0)  # a row of -inf logits: keep exp() at 0
        e.sub_(m)  # u - m <= 0: the gaps of the loss's sum(c (m - u)), exact in the compute dtype
        if probs:
            c = target[r0:r1].to(cdt)
            if label_smoothing > 0:
                c = c * (1.0 - label_smoothing) + label_smoothing / n_cols
            if w is not None:
                c = c * w
            c_sum, cz = c.sum(1), (c * z.to(cdt)).sum(1)
            gap = -(c * e).sum(1)
            valid = None
        else:
            y = target[r0:r1]
            valid = y != ignore_index
            in_range = (y >= 0) & (y < n_cols)  # checked on the host for CPU tensors
            y_safe = torch.where(valid & in_range, y, 0).unsqueeze(1)
            w_y = w[y_safe[:, 0]] if w is not None else torch.ones(r1 - r0, dtype=cdt,
                                                                     device=device)
            w_y = torch.where(valid, torch.where(in_range, w_y, float("nan")), 0.0)
            z_y = torch.where(valid, z.gather(1, y_safe)[:, 0].to(cdt), 0.0)
            c_sum, cz = (1.0 - label_smoothing) * w_y, (1.0 - label_smoothing) * w_y * z_y
            gap = c_sum * (-e.gather(1, y_safe)[:, 0])
            if label_smoothing > 0:
                z_w = z.to(cdt) @ w if w is not None else z.sum(1, dtype=cdt)
                e_w = e @ w if w is not None else e.sum(1)
                smooth_w = valid.to(cdt) * (label_smoothing / n_cols)
                c_sum = c_sum + smooth_w * total_weight
                cz = cz + torch.where(valid, smooth_w * z_w, 0.0)
                gap = gap - torch.where(valid, smooth_w * e_w, 0.0)
        e.exp2_()
        s = e.sum(1, keepdim=True)
        log2_s = s.log2()[:, 0]
        row_lse = (m[:, 0] + log2_s) * LN2
        row_loss = (c_sum * log2_s + gap) * LN2
        if z_loss:
            z_lse = row_lse if valid is None else torch.where(valid, row_lse, 0.0)
            row_loss = row_loss + zl * z_lse * z_lse
            c_sum = c_sum + 2.0 * zl * z_lse
        loss[r0:r1] = row_loss if valid is None else torch.where(valid, row_loss, 0.0)
        lse[r0:r1] = row_lse
        if compute_dt:  # sum(p z) = sum(e z) / s; nansum: masked classes (0 * -inf) add 0
            pz = torch.nansum(e * z.to(cdt), 1) / s[:, 0]
            row_dt = (cz - c_sum * pz) * inv_t[:, 0] ** 2
            dt_row[r0:r1] = row_dt if valid is None else torch.where(valid, row_dt, 0.0)
        if grad_scale is None:
            return
        row_scale = rows_of(grad_scale, r0, r1, cdt) * inv_t
        if valid is not None:
            row_scale = torch.where(valid.unsqueeze(1), row_scale, 0.0)
        factor = c_sum.unsqueeze(1) * row_scale / s  # g = cs * p * scale, p = e / s
        if valid is not None:  # ignored rows: exactly 0 (s may be 0 for a row of -inf)
            factor = torch.where(valid.unsqueeze(1), factor, 0.0)
        g = e.mul_(factor)
        if probs:
            g.addcmul_(c, row_scale, value=-1.0)
        else:
            g.scatter_add_(1, y_safe,
                           -(1.0 - label_smoothing) * w_y.unsqueeze(1) * row_scale)
            if label_smoothing > 0 and w is not None:
                g.addcmul_(row_scale, w.unsqueeze(0), value=-label_smoothing / n_cols)
            elif label_smoothing > 0:
                g.sub_(row_scale * (label_smoothing / n_cols))
        if slope is not None:
            g.mul_(slope)
        if valid is not None and (device.type != "cpu" or not bool(valid.all())):
            g.masked_fill_(~valid.unsqueeze(1), 0.0)  # exactly 0, even from +inf logits
        if not direct:
            grad_out[r0:r1] = g

    for_chunks(n_rows, step, chunk)
    return loss, lse, dt_row


# Where a chunk's summed loss and dL/dT lie in its workspace row (:func:`chunk_workspaces`).
CHUNK_SUMS_AT = 0


def chunk_workspaces(logits: Tensor, n_chunks: int, softcap: float = 0.0) -> tuple[None, Tensor]:
    """The triton path's contract: one row per chunk holding its summed loss and dL/dT."""
    return None, torch.zeros(n_chunks, 2, dtype=compute_dtype(logits.dtype),
                             device=logits.device)


def ce_chunk_sums(logits: Tensor, target: Tensor, t: Tensor, ignore_index: int,
                  label_smoothing: float, compute_dt: bool, ws: Tensor, cfg: None,
                  softcap: float = 0.0, z_loss: float = 0.0) -> None:
    """One chunk of a chunked sum: the gradient of the rows' summed loss written over
    ``logits``; the summed loss and (``compute_dt``) dL/dT into ``ws[0]``, ``ws[1]``."""
    one = torch.ones(1, dtype=ws.dtype, device=ws.device)
    loss, _lse, dt = ce_rows(logits, target, t, None, ignore_index, label_smoothing, one,
                             logits, compute_dt, softcap, z_loss)
    ws[0] = loss.sum()
    if compute_dt:
        ws[1] = dt.sum()


def mean_divisor(target: Tensor, weight: Tensor | None, ignore_index: int, num_classes: int,
                 dtype: torch.dtype) -> Tensor:
    """The divisor of ``reduction="mean"``, as torch defines it (0-dim): class indices: the
    sum of ``weight[y]`` over the rows that are not ignored (their count without weights);
    probabilities ``(N, C)``: the number of rows."""
    if target.dim() == 2:
        return torch.full((), float(target.shape[0]), dtype=dtype, device=target.device)
    valid = target != ignore_index
    if weight is None:
        return valid.sum().to(dtype)
    safe = torch.where(valid, target, 0).clamp_(0, num_classes - 1)
    return (weight.to(dtype)[safe] * valid).sum()


def z_loss_scale(target: Tensor, weight: Tensor | None, ignore_index: int, divisor: Tensor,
                 reduction: str) -> Tensor | None:
    """The z-loss's factor under the loss's reduction (``None``: 1): a weighted mean divides
    the rows' losses by their weights' sum, the z-loss by the rows counted, so each row's
    z-term carries ``divisor / rows counted`` (0-dim)."""
    if reduction != "mean" or weight is None or target.dim() == 2:
        return None
    counted = (target != ignore_index).sum().to(divisor.dtype)
    return torch.where(counted == 0, 0.0, divisor / counted)


@dataclass
class Reduced:
    """What a reduced (mean / sum) forward leaves for its backward pass: the loss, per-row
    dL/dT for an upstream gradient of 1 (the mean's factor in), the divisor and
    ``row_factor = d loss / d loss_row``."""

    loss: Tensor
    dt: Tensor
    divisor: Tensor
    row_factor: Tensor
    lse: Tensor

    def dt_rows(self) -> Tensor:
        return self.dt

    def dt_total(self) -> Tensor:
        return self.dt.sum()


def ce_reduced(logits: Tensor, target: Tensor, t: Tensor | None, t_value: float,
               weight: Tensor | None, ignore_index: int, label_smoothing: float,
               reduction: str, grad_out: Tensor | None, compute_dt: bool,
               defer: bool, softcap: float = 0.0, z_loss: float = 0.0) -> Reduced:
    """A mean or sum cross-entropy (see :func:`.triton_path.ce_reduced`): the gradient for an
    upstream gradient of 1 goes to ``grad_out`` (without the mean's factor when ``defer``)."""
    cdt = compute_dtype(logits.dtype)
    t = temperature_tensor(t, t_value, cdt, logits.device)
    n_cols = logits.shape[1]
    if reduction == "mean":
        divisor = mean_divisor(target, weight, ignore_index, n_cols, cdt)
        row_factor = torch.where(divisor == 0, 0.0, 1.0 / divisor)
    else:
        divisor = torch.ones((), dtype=cdt, device=logits.device)
        row_factor = divisor
    scale = None
    if grad_out is not None:
        scale = (divisor.new_ones(()) if defer else row_factor).reshape(1)
    z_scale = z_loss_scale(target, weight, ignore_index, divisor, reduction) if z_loss else None
    loss_rows, lse, dt_rows = ce_rows(logits, target, t, weight, ignore_index, label_smoothing,
                                      scale, grad_out, compute_dt, softcap, z_loss, z_scale)
    return Reduced(loss_rows.sum() / divisor, dt_rows * row_factor, divisor, row_factor, lse)


def apply_upstream_(buf: Tensor | None, g: Tensor, res: Reduced, t_grad: str | None,
                    defer: bool, t_shape: torch.Size | None = None) -> Tensor | None:
    """The backward of :func:`ce_reduced`: ``buf *= g`` (times the mean's factor when it was
    deferred; skipped when that is exactly 1, tested only for host tensors; through ``.data``,
    so that the buffer's version counter does not move) and dL/dT for the upstream gradient
    ``g`` (``t_grad``: ``"rows"``, ``"scalar"`` or ``None``), shaped ``t_shape``."""
    if buf is not None and buf.numel():
        factor = g.to(res.row_factor.dtype) * res.row_factor if defer else g
        rescale_(buf.data, factor.reshape(1))
    if t_grad is None:
        return None
    dt = res.dt if t_grad == "rows" else res.dt.sum()
    dt = dt * g.to(dt.dtype)
    return dt.reshape(t_shape) if t_shape is not None and dt.shape != t_shape else dt


def small_cross_entropy(logits: Tensor, target: Tensor, temperature: float | Tensor,
                        weight: Tensor | None, ignore_index: int, reduction: str,
                        label_smoothing: float) -> Tensor:
    """The ``aten`` route: ``F.cross_entropy(z / T, ...)`` composed of stock aten ops, for small
    CPU inputs whose temperature needs no gradient: the cheapest correct route (torch's
    log-softmax takes ``(z - max) - log s``, so the loss is never negative and confident rows
    keep their precision). ``z`` is the logits in fp32 (fp64 stays fp64); the gradient comes
    back in the logits' dtype."""
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if target.dtype.is_floating_point and target.dtype != z.dtype:
        target = target.to(z.dtype)
    if isinstance(temperature, Tensor) and temperature.numel() > 1:
        temperature = temperature.to(z.dtype).unsqueeze(1)
    return torch._C._nn.cross_entropy_loss(
        z / temperature, target, weight if weight is None else weight.to(z.dtype),
        REDUCTION_CODES[reduction], ignore_index, label_smoothing)


# aten cross_entropy_loss's reduction argument (at::Reduction)
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}

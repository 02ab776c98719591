"""Plain-PyTorch oracles for every tempfast op.

Each function is the textbook definition, written with stock PyTorch ops and differentiated by
autograd; the tests and the benchmarks compare the fused ops against these. They compute in the
dtype they are given: pass float64 tensors for a high-precision oracle.

Temperature ``T`` is a number, a 0-dim tensor, or one value per row; it divides the logits
before the softmax: ``softmax(x / T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_row(temperature: float | Tensor, x: Tensor, dim: int) -> float | Tensor:
    """Reshape a per-row temperature so that it broadcasts against ``x`` along ``dim``."""
    if not isinstance(temperature, Tensor) or temperature.numel() == 1:
        return temperature if not isinstance(temperature, Tensor) else temperature.reshape(())
    rows_shape = x.shape[:dim] + x.shape[dim + 1:]
    return temperature.reshape(rows_shape).unsqueeze(dim)


def softmax(x: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """``torch.softmax(x / T, dim)``."""
    dim = dim % x.dim()
    return torch.softmax(x / _per_row(temperature, x, dim), dim)


def log_softmax(x: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """``torch.log_softmax(x / T, dim)``."""
    dim = dim % x.dim()
    return torch.log_softmax(x / _per_row(temperature, x, dim), dim)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    class_dim: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``F.cross_entropy(a / T, target, ...) + z_loss * lse(a / T)^2`` with ``a = softcap *
    tanh(logits / softcap)`` (or the logits), classes at ``class_dim`` (``None``: torch's
    layout, dim 1 of ``(N, C, d1, ...)``, dim 0 of ``(C,)``; ``-1``: class-last).

    target: the logits' shape without the class dimension (class indices) or the logits' shape
    (probabilities); the loss has the target-index shape for ``reduction="none"``. The z-term
    counts the rows that are not ignored, unweighted: summed, or averaged over those rows.
    """
    cdim = (0 if logits.dim() == 1 else 1) if class_dim is None else class_dim % logits.dim()
    probs = target.shape == logits.shape and target.dtype.is_floating_point
    logits = logits.movedim(cdim, -1)
    if probs:
        target = target.movedim(cdim, -1)
    num_classes = logits.shape[-1]
    rows_shape = logits.shape[:-1]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    scaled = logits / _per_row(temperature, logits, logits.dim() - 1)
    flat_target = target.reshape(-1, num_classes) if probs else target.reshape(-1)
    loss = F.cross_entropy(
        scaled.reshape(-1, num_classes),
        flat_target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    counted = torch.ones(flat_target.shape[0], dtype=torch.bool, device=logits.device) if probs \
        else flat_target != ignore_index
    z_rows = torch.where(counted, torch.logsumexp(scaled.reshape(-1, num_classes), -1) ** 2, 0.0)
    z_rows = z_loss * z_rows
    if reduction == "none":
        z_term = z_rows.reshape(rows_shape)
        loss = loss.reshape(rows_shape)
    else:
        z_term = z_rows.sum() if reduction == "sum" else z_rows.sum() / counted.sum()
    loss = loss + z_term
    return (loss, z_term) if return_z_loss else loss


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Tensor:
    """``F.cross_entropy((hidden @ weight.T + bias) / T, target, ...)``: hidden ``(*, H)``,
    weight ``(C, H)``, bias ``(C,)``, target ``(*)`` (``softcap``, ``z_loss``: as in
    :func:`cross_entropy`)."""
    logits = F.linear(hidden, weight, bias)
    return cross_entropy(
        logits,
        target,
        temperature,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        class_dim=-1,
        softcap=softcap,
        z_loss=z_loss,
    )


def contrastive_loss(a: Tensor, b: Tensor, temperature: float | Tensor = 0.07, *,
                     symmetric: bool = True, reduction: str = "mean") -> Tensor:
    """``CE(a @ b.T / T, arange(B))`` (averaged with its transpose when ``symmetric``), the
    ``B x B`` similarities made whole."""
    s = a @ b.T / temperature
    y = torch.arange(a.shape[0], device=a.device)
    rows = F.cross_entropy(s, y, reduction="none")
    if symmetric:
        rows = (rows + F.cross_entropy(s.T, y, reduction="none")) * 0.5
    return {"mean": rows.mean, "sum": rows.sum}.get(reduction, lambda: rows)()


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float | Tensor = 0.5, *,
                 reduction: str = "mean") -> Tensor:
    """SimCLR's NT-Xent with the whole ``2B x 2B`` similarities, the diagonal masked."""
    z = torch.cat([z1, z2])
    n = z.shape[0]
    s = (z @ z.T / temperature).masked_fill(torch.eye(n, dtype=torch.bool, device=z.device),
                                            float("-inf"))
    rows = F.cross_entropy(s, (torch.arange(n, device=z.device) + n // 2) % n,
                           reduction="none")
    return {"mean": rows.mean, "sum": rows.sum}.get(reduction, lambda: rows)()


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    target: Tensor | None = None,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
    teacher_log_probs: bool = False,
) -> Tensor:
    """Hinton's distillation loss, classes last (``(*, C)``):
    ``KD = F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True) * T**2`` with
    ``reduction`` ``"batchmean"`` (sum / rows), ``"mean"`` (sum / elements), ``"sum"`` or
    ``"none"`` (per row, shape ``(*,)``); ``T`` a number or one value per row (``(*,)``),
    its ``T**2`` applied per row. With ``target`` (class indices ``(*,)``):
    ``alpha * KD + (1 - alpha) * CE(s, target)``, the cross-entropy at ``T = 1`` reduced as
    ``F.cross_entropy`` does (``"batchmean"`` and ``"mean"``: over the rows not ignored).
    ``teacher_log_probs``: the teacher is ``log softmax(t / T)`` already (not divided again)."""
    num_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, num_classes)
    t = teacher_logits.reshape(-1, num_classes)
    rows_shape = student_logits.shape[:-1]
    temp = temperature
    if isinstance(temp, Tensor) and temp.numel() != 1:
        temp = temp.reshape(-1, 1)
    elif isinstance(temp, Tensor):
        temp = temp.reshape(())
    log_ps = torch.log_softmax(s / temp, -1)
    log_pt = torch.log_softmax(t if teacher_log_probs else t / temp, -1)
    pointwise = F.kl_div(log_ps, log_pt, log_target=True, reduction="none") * temp**2
    rows = pointwise.sum(-1)
    if reduction == "none":
        kd = rows
    elif reduction == "sum":
        kd = rows.sum()
    elif reduction == "batchmean":
        kd = rows.sum() / s.shape[0]
    else:
        kd = rows.sum() / s.numel()
    if target is None:
        return kd.reshape(rows_shape) if reduction == "none" else kd
    ce_reduction = "mean" if reduction in ("batchmean", "mean") else reduction
    ce = F.cross_entropy(s, target.reshape(-1), ignore_index=ignore_index,
                         reduction=ce_reduction)
    loss = alpha * kd + (1.0 - alpha) * ce
    return loss.reshape(rows_shape) if reduction == "none" else loss


distillation_loss_reference = distillation_loss  # its earlier name, kept for existing imports


def token_logprobs(logits: Tensor, target: Tensor, temperature: float | Tensor = 1.0, *,
                   softcap: float | None = None, ignore_index: int = -100,
                   return_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``log softmax(c(z) / T)[target]`` (and the entropy ``-sum p log p``) over the last
    dimension, ``c(z) = softcap * tanh(z / softcap)``; 0 at ignored positions."""
    a = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    log_p = torch.log_softmax(a / _per_row(temperature, a, a.dim() - 1), -1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    logp = torch.where(valid, log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1), 0.0)
    if not return_entropy:
        return logp
    p = log_p.exp()
    entropy = -(p * torch.where(p > 0, log_p, 0.0)).sum(-1)  # (no 0 * inf, nor in backward)
    return logp, torch.where(valid, entropy, 0.0)


def linear_token_logprobs(hidden: Tensor, weight: Tensor, target: Tensor,
                          bias: Tensor | None = None, temperature: float | Tensor = 1.0, *,
                          softcap: float | None = None, ignore_index: int = -100,
                          return_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`token_logprobs` of ``F.linear(hidden, weight, bias)``."""
    return token_logprobs(F.linear(hidden, weight, bias), target, temperature, softcap=softcap,
                          ignore_index=ignore_index, return_entropy=return_entropy)

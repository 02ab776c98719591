"""The math of the class-parallel cross-entropy: the classes of the logits split across the
ranks of a ``torch.distributed`` process group (tensor / vocabulary parallelism, a
face-recognition head with millions of identities).

Rank ``r`` holds the logits of classes ``[start_r, start_r + C_r)``: ranges in rank order, any
widths (``C_r >= 0``), ``C = sum C_r``. Every rank holds the same rows, the same class-index
targets (global indices) or its own slice of probability targets, the same temperature.

Per row, with ``u = z / T`` (``z`` soft-capped first when asked), ``c_j`` the target's
coefficients (one-hot, smoothed, weighted as in torch; ``cs = sum_j c_j``) and
``M = max_j u_j`` over all ranks::

    s = sum_j exp(u_j - M)            A = sum_j exp(u_j - M) (M - u_j)
    D = sum_j c_j (M - u_j) >= 0      loss = cs ln s + D  (>= 0: s >= 1)
    dL/dz_j = (cs p_j - c_j) / T      dL/dT = (cs A / s - D) / T,   p_j = exp(u_j - M) / s

With a z-loss ``zl lse^2`` (``lse = M + ln s``) the loss gains it, the gradient takes
``cs + 2 zl lse`` for ``cs`` and dL/dT gains ``2 zl lse (A / s - M) / T``; a soft cap multiplies
the gradient by its slope.

Each rank computes its classes' share of ``s, A, cs, D``; the forward pass makes **one
all-reduce of the per-row max and one of the stacked per-row sums** ``(4, N)``; the gradient is
computed in the same pass (no communication in the backward pass) and no logits are gathered.
Nothing waits on the device: no host synchronisation on CUDA tensors.

The widths of the ranks are exchanged once per (process group, local width) and cached
(:func:`shard_layout`): every rank of the group must make its first call with a given width
together, as for any collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class ShardLayout:
    """Where a rank's classes lie: ``[start, start + widths[rank])`` of ``num_classes``."""

    start: int
    num_classes: int
    widths: tuple[int, ...]
    rank: int

    @property
    def local(self) -> int:
        """This rank's number of classes."""
        return self.widths[self.rank]


_LAYOUTS: dict[tuple[int, int], tuple[object, ShardLayout]] = {}


def rank_counts(group: dist.ProcessGroup, count: int, device: torch.device) -> tuple[int, ...]:
    """Every rank's ``count`` in rank order, from one all-gather (on ``device`` for NCCL, the
    CPU otherwise); the counts reach the host."""
    where = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    mine = torch.tensor([count], dtype=torch.int64, device=where)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    return tuple(int(c.item()) for c in gathered)


def shard_layout(group: dist.ProcessGroup, local_classes: int, device: torch.device,
                 start: int | None = None) -> ShardLayout:
    """The class ranges of ``group``'s ranks, from one all-gather of their widths (on the
    first call with this group and width; cached after it).

    Raises:
        ValueError: ``start`` differs from the sum of the widths of the ranks before this one
            (ranges lie in rank order), or the ranks hold no class at all.
    """
    key = (id(group), local_classes)
    cached = _LAYOUTS.get(key)
    if cached is None or cached[0] is not group:
        widths = rank_counts(group, local_classes, device)  # once per group and width
        rank = dist.get_rank(group)
        layout = ShardLayout(sum(widths[:rank]), sum(widths), widths, rank)
        if layout.num_classes == 0:
            raise ValueError("logits: no rank of the process group holds a class")
        _LAYOUTS[key] = (group, layout)
        cached = _LAYOUTS[key]
    layout = cached[1]
    if start is not None and start != layout.start:
        raise ValueError(f"start: rank {layout.rank} was given {start}, but the ranks before it "
                         f"hold {layout.start} classes (widths {list(layout.widths)}); class "
                         "ranges lie in rank order")
    return layout


def _guarded(coef: Tensor, diff: Tensor) -> Tensor:
    """``coef * diff`` with ``0 * inf = 0`` (a class of zero weight at a -inf logit)."""
    return torch.where(coef != 0, coef * diff, torch.zeros((), dtype=diff.dtype,
                                                            device=diff.device))


@dataclass
class Shard:
    """One call's local view: logits ``u = z / T`` of this rank's classes, in fp32 / fp64."""

    u: Tensor          # (R, C_r)
    t: Tensor          # (R, 1) or (1, 1)
    layout: ShardLayout
    probs: bool
    target: Tensor     # (R,) global class indices, or (R, C_r) probabilities
    weight: Tensor | None
    ignore_index: int
    label_smoothing: float
    slope: Tensor | float = 1.0  # d a / d z of a soft-capped shard (``(R, C_r)``), else 1
    z_coef: Tensor | float = 0.0  # the z-loss's coefficient, one value or per row

    def coefficients(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor]:
        """``(dense, a_y, y_local, here, counted)``: the target's coefficients on this rank's
        classes as a dense part ``(R, C_r)`` (smoothing or probabilities; may be 0-size) plus,
        for class indices, ``a_y`` at column ``y_local`` where ``here``."""
        lo, width, num = self.layout.start, self.layout.local, self.layout.num_classes
        acc = self.u.dtype
        w_local = (self.weight[lo:lo + width].to(acc) if self.weight is not None else
                   torch.ones(width, dtype=acc, device=self.u.device))
        if self.probs:
            q = self.target.to(acc)
            dense = w_local * ((1.0 - self.label_smoothing) * q + self.label_smoothing / num)
            counted = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
            return dense, None, None, None, counted
        y = self.target
        counted = y != self.ignore_index
        in_range = counted & (y >= 0) & (y < num)
        w_y = (self.weight.to(acc)[y.clamp(0, num - 1)] if self.weight is not None else
               torch.ones(y.shape, dtype=acc, device=y.device))
        local = y - lo
        here = in_range & (local >= 0) & (local < width)
        zero = torch.zeros((), dtype=acc, device=y.device)
        a_y = torch.where(here, (1.0 - self.label_smoothing) * w_y, zero)
        smooth = (self.label_smoothing / num) * counted.to(acc)
        dense = smooth[:, None] * w_local[None, :]
        return dense, a_y, local.clamp(0, max(width - 1, 0)), here, counted


def _local_max(u: Tensor) -> Tensor:
    if u.shape[1] == 0:
        return torch.full((u.shape[0],), float("-inf"), dtype=u.dtype, device=u.device)
    return u.amax(dim=1)


def forward(shard: Shard, group: dist.ProcessGroup, want_grad: bool):
    """Loss rows, dL/dT rows, (``want_grad``) the logits' gradient ``(cs p - c) / T`` (times
    the cap's slope), the rows counted and their log-sum-exps, of one shard, after the two
    all-reduces; with ``z_coef`` the z-loss ``z lse^2`` is in the loss, its gradient and
    dL/dT."""
    u = shard.u
    m = _local_max(u)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    diff = m[:, None] - u                                   # >= 0
    e = torch.exp(-diff)
    dense, a_y, y_local, _here, counted = shard.coefficients()
    stats = torch.stack([
        e.sum(dim=1),
        _guarded(e, diff).sum(dim=1),
        dense.sum(dim=1),
        _guarded(dense, diff).sum(dim=1),
    ])
    if a_y is not None and u.shape[1]:
        u_y = u.gather(1, y_local[:, None]).squeeze(1)
        stats[2] += a_y
        stats[3] += _guarded(a_y, m - u_y)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    s, big_a, cs, d = stats
    t_rows = shard.t[:, 0]
    loss = cs * torch.log(s) + d
    dt = (cs * big_a / s - d) / t_rows
    lse = m + torch.log(s)
    if not isinstance(shard.z_coef, float) or shard.z_coef:
        # z lse^2: its gradient 2 z lse p / T joins cs p; d lse / dT = (A / s - M) / T
        z_lse = torch.where(counted, lse, torch.zeros((), dtype=lse.dtype, device=lse.device))
        zl = shard.z_coef * counted.to(lse.dtype)
        loss = loss + zl * z_lse * z_lse
        dt = dt + 2.0 * zl * z_lse * (big_a / s - m) / t_rows
        cs = cs + 2.0 * zl * z_lse
    grad = None
    if want_grad:
        grad = (cs / s)[:, None] * e - dense
        if a_y is not None and u.shape[1]:
            grad.scatter_add_(1, y_local[:, None], -a_y[:, None])
        grad = grad * (shard.slope / shard.t)
    return loss, dt, grad, counted, lse


def bad_rows(shard: Shard, counted: Tensor) -> Tensor:
    """Rows that get NaN (CUDA; host tensors raise before): a temperature that is not finite
    and positive, or a class index outside ``[0, C)`` that is not ignored."""
    t = shard.t[:, 0]
    bad = ~(torch.isfinite(t) & (t > 0))
    bad = bad.expand(counted.shape[0]) if bad.shape[0] == 1 else bad
    if not shard.probs:
        y, num = shard.target, shard.layout.num_classes
        bad = bad | (counted & ((y < 0) | (y >= num)))
    return bad

"""Square: a gradient-free random search in the L-infinity ball (Andriushchenko et al. 2020),
tempfast's own.

It needs no gradient, so no gradient masking can stop it. Each example starts from vertical
stripes of ``+-eps`` (one random sign per column and channel) and proposes, ``queries - 1``
times, to set a square window of side ``s`` to ``+-eps`` (one random sign per channel),
keeping the proposal when it lowers the margin ``z_y - max_{j != y} z_j``; it stops as soon as
the margin is negative. The window's area is a fraction ``p`` of the image that halves on the
schedule of the paper (at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
queries, rescaled to the budget), from ``p_init = 0.8`` (AutoAttack's L-infinity setting).

Unlike torchattacks 3.5.1, which draws a window's corner from ``[0, side - s - 1]`` so the last
row and column are never inside a window again after the stripes (15 of 64 pixels of an 8x8
digit), every corner in ``[0, side - s]`` is drawn, each example its own. Each example keeps
its best point; restarts attack only the examples still classified correctly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import SettingError
from . import checks
from .base import eval_mode, restart_on_survivors, seeded
from .losses import margin_loss

SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 queries: p halves


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """The window's area as a fraction of the image at ``query`` of ``queries``."""
    at = int(query / queries * 10_000)
    halvings = sum(at > point for point in SCHEDULE)
    return p_init / 2 ** halvings


class Square:
    """``attack(x, y) -> x_adv`` with at most ``queries`` model queries per example and restart
    (see the module docstring). ``seed`` seeds every random choice; the caller's RNG is left as
    it was."""

    def __init__(self, model: nn.Module, eps: float, queries: int = 1000, restarts: int = 1,
                 seed: int = 0, p_init: float = 0.8) -> None:
        checks.eps(eps)
        checks.at_least(restarts, "restarts", 1)
        checks.at_least(queries, "queries", 1)
        if not 0.0 < p_init <= 1.0:
            raise SettingError("p_init", f"must lie in (0, 1], got {p_init}")
        self.model, self.seed = model, int(seed)
        self.eps, self.queries, self.restarts, self.p_init = (float(eps), int(queries),
                                                              int(restarts), float(p_init))

    @torch.no_grad()
    def _margin(self, x: Tensor, y: Tensor) -> Tensor:
        return -margin_loss(self.model(x).float(), y)  # z_y - max_{j != y} z_j

    def _window(self, n: int, c: int, h: int, w: int, side: int, device) -> Tensor:
        """``(n, 1, h, w)`` masks of one ``side x side`` window per example, corners anywhere
        in ``[0, h - side] x [0, w - side]``."""
        top = torch.randint(0, h - side + 1, (n, 1, 1, 1), device=device)
        left = torch.randint(0, w - side + 1, (n, 1, 1, 1), device=device)
        rows = torch.arange(h, device=device).view(1, 1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, 1, w)
        return ((rows >= top) & (rows < top + side)) & ((cols >= left) & (cols < left + side))

    def _propose(self, x: Tensor, best: Tensor, side: int) -> Tensor:
        """``best`` with one random ``side x side`` window per example set to ``x +- eps`` (a
        random sign per channel), clamped to [0, 1]."""
        n, c, h, w = x.shape
        mask = self._window(n, c, h, w, side, x.device)
        signs = torch.randint(0, 2, (n, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1
        return torch.where(mask, (x + self.eps * signs).clamp(0.0, 1.0), best)

    @torch.no_grad()
    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        signs = torch.randint(0, 2, (n, c, 1, w), device=x.device).to(x.dtype) * 2 - 1
        best = (x + eps * signs).clamp(0.0, 1.0)
        margin = self._margin(best, y)
        for query in range(1, self.queries):
            active = (margin > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            xa, best_a = x[active], best[active]
            p = window_fraction(self.p_init, query, self.queries)
            side = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            candidate = self._propose(xa, best_a, side)
            for _ in range(10):  # redraw the proposals that would leave the point as it is
                same = ((candidate - best_a).abs() < 1e-7).flatten(1).all(1).nonzero()
                if same.numel() == 0:
                    break
                same = same.squeeze(1)
                candidate[same] = self._propose(xa[same], best_a[same], side)
            new_margin = self._margin(candidate, y[active])
            better = new_margin < margin[active]
            best[active[better]] = candidate[better]
            margin[active[better]] = new_margin[better]
        return best

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with seeded(self.seed, x.device), eval_mode(self.model):
            return restart_on_survivors(self.model, self._one_run, x, y, self.restarts)

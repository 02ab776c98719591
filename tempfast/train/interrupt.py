"""Ctrl-C during training: the first SIGINT asks the loop to stop at the next step boundary
(a recovery checkpoint is written); under DDP every rank agrees before stopping."""

from __future__ import annotations

import signal
import threading

import torch

from . import distributed as D

CHECK_EVERY = 16  # steps between DDP agreements on a pending Ctrl-C (one all-reduce each)


class RunInterruptedError(Exception):
    """Ctrl-C stopped the run; ``path`` is the checkpoint to ``--resume`` from ("" when
    no epoch had finished and no step had run)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class CtrlC:
    """First SIGINT: ask the loop to stop at the next step boundary. Second (single process
    only): abort at once. Installed only in the main thread, restored on exit."""

    def __init__(self, ctx: D.Context) -> None:
        self.requested = False
        self.ctx = ctx
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.ctx.distributed:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def stop(self, step: int = 0) -> bool:
        """Whether to stop after ``step`` (0: at an epoch boundary). Under DDP the ranks agree,
        every :data:`CHECK_EVERY` steps and at epoch boundaries, all at the same steps."""
        if not self.ctx.distributed:
            return self.requested
        if step % CHECK_EVERY:
            return False
        flag = torch.tensor([float(self.requested)], device=self.ctx.device)
        return bool(D.all_reduce_max(self.ctx, flag).item())

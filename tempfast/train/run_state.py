"""A run's state in and out of checkpoints: what is saved, how it is restored, and how far
the run has come (:class:`Progress`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import UsageError
from . import distributed as D
from .builder import Parts, model_config
from .checkpoint import FORMAT, rng_state, set_rng_state, weights_mismatch
from .config import TrainConfig
from .data import DataBundle
from .run_folder import RunFolder


@dataclass
class Progress:
    """How far a run has come: ``epoch`` finished epochs, the next ``step`` inside the next
    epoch with its ``partial`` sums per rank (after a Ctrl-C), the best evaluated epoch, and
    the training and wall seconds behind it (summed over resumed invocations)."""

    best: dict
    epoch: int = 0
    step: int = 0
    partial: list[list[float]] | None = None
    train_time: float = 0.0
    wall_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def fresh(cls, cfg: TrainConfig) -> Progress:
        metric = "test_robust_acc" if cfg.adv == "pgd" else "test_acc"
        return cls(best={"metric": metric, "value": None, "epoch": None})

    def wall_time(self) -> float:
        """Seconds of wall time behind the current state: this invocation's, plus, for a
        resumed run, the earlier invocations' up to the checkpoint it continued from."""
        return self.wall_before + time.perf_counter() - self.started


class Checkpointer:
    """Saves and restores one run's state (see :mod:`tempfast.train.checkpoint` for the
    checkpoint's entries). Writes happen on rank 0; a failed write fails every rank."""

    def __init__(self, cfg: TrainConfig, ctx: D.Context, folder: RunFolder, parts: Parts,
                 bundle: DataBundle) -> None:
        self.cfg, self.ctx, self.folder, self.parts, self.bundle = cfg, ctx, folder, parts, bundle

    def state(self, progress: Progress, step: int = 0,
              partial: list[list[float]] | None = None) -> dict:
        """The checkpoint of ``progress`` (``step``, ``partial``: inside an epoch). Every rank
        calls it: it gathers every rank's RNG state."""
        p = self.parts
        return {
            "format": FORMAT, "model": p.classifier.state_dict(),
            "model_config": model_config(self.cfg, self.bundle),
            "criterion": p.loss_fn.state_dict(),
            "temperature": float(p.loss_fn.temperature.detach()),
            "optimizer": p.optimizer.state_dict(), "scheduler": p.scheduler.state_dict(),
            "scaler": p.scaler.state_dict() if p.scaler is not None else None,
            "rng": D.all_gather(self.ctx, rng_state()), "epoch": progress.epoch, "step": step,
            "partial": partial, "best": progress.best, "train_time_s": progress.train_time,
            "wall_time_s": progress.wall_time(), "config": self.cfg.as_dict(),
            "data": self.bundle.meta(),
        }

    def save(self, names: tuple[str, ...], state: dict, row: dict | None = None,
             remove: tuple[str, ...] = ()) -> str:
        """On rank 0: append ``row`` to the metrics, write ``state`` as each of ``names`` and
        remove ``remove``; a write that fails raises :class:`~tempfast.errors.OutputError` on
        every rank. Returns the path of the first checkpoint."""
        def write() -> None:
            if row is not None:
                self.folder.add_row(row)
            for name in names:
                self.folder.save(name, state)
            for name in remove:
                self.folder.remove(name)

        D.run_on_main(self.ctx, write)
        return str(self.folder.file(names[0]))

    def restore(self, ckpt: dict, path: str) -> Progress:
        """Load ``ckpt`` (read from ``path``) into the parts and this rank's RNG; return the
        progress it holds.

        Raises:
            UsageError: the checkpoint does not fit this run (model, optimiser, world size) or
                has finished more epochs than ``--epochs`` asks for.
        """
        p = self.parts
        mismatch = weights_mismatch(p.classifier, ckpt["model"])
        if mismatch is not None:
            raise UsageError(f"checkpoint {path} does not fit this run's model: {mismatch}")
        try:
            p.classifier.load_state_dict(ckpt["model"])
            p.loss_fn.load_state_dict(ckpt["criterion"])
            p.optimizer.load_state_dict(ckpt["optimizer"])
            p.scheduler.load_state_dict(ckpt["scheduler"])
            if p.scaler is not None and ckpt["scaler"] is not None:
                p.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UsageError(f"checkpoint {path} does not fit this run: "
                             f"{str(exc).splitlines()[0]}") from None
        rngs, partial = ckpt["rng"], ckpt["partial"]
        if partial is not None and len(partial) != self.ctx.world_size:
            raise UsageError(f"checkpoint {path} stopped inside an epoch of a run with "
                             f"{len(partial)} processes; resume it with as many")
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        epoch = int(ckpt["epoch"])
        if epoch > self.cfg.epochs:
            raise UsageError(f"{self.cfg.output} has finished {epoch} epochs; --epochs "
                             f"{self.cfg.epochs} cannot shorten it")
        train_time = float(ckpt["train_time_s"])
        # A checkpoint from before wall times were stored: its training time, a lower bound.
        return Progress(best=dict(ckpt["best"]), epoch=epoch, step=int(ckpt["step"]),
                        partial=partial, train_time=train_time,
                        wall_before=float(ckpt.get("wall_time_s", train_time)))

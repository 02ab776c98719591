"""The epoch loop of a run and :func:`run`, the whole ``tempfast train`` command: data, the
parts (:mod:`tempfast.train.builder`), the loop with per-epoch test evaluation, checkpoints
(:mod:`tempfast.train.run_state`), ``--resume``, Ctrl-C recovery, DDP, and the final
robustness evaluation of :func:`tempfast.robust.evaluation.evaluate`."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..functional import cross_entropy
from . import distributed as D
from .builder import Parts, build
from .checkpoint import RESUME_KEYS, load_checkpoint
from .config import TrainConfig
from .data import DataBundle, load_data
from .interrupt import CtrlC, RunInterruptedError
from .progress import Reporter
from .run_folder import RunFolder
from .run_state import Checkpointer, Progress
from .step import TrainingAttack, train_step


@torch.no_grad()
def _clean_sums(model: nn.Module, bundle: DataBundle, ctx: D.Context, batch_size: int,
                temperature: Tensor) -> Tensor:
    sums = torch.zeros(3, device=ctx.device, dtype=torch.float64)
    for x, y in bundle.test_batches(batch_size, ctx.device, rank=ctx.rank,
                                    world_size=ctx.world_size):
        logits = model(x)
        sums[0] += cross_entropy(logits, y, temperature, reduction="sum")
        sums[1] += (logits.argmax(-1) == y).sum()
        sums[2] += y.numel()
    return D.all_reduce_sum(ctx, sums)


def _robust_sums(attack: TrainingAttack, model: nn.Module, bundle: DataBundle, ctx: D.Context,
                 batch_size: int, limit: int) -> Tensor:
    sums = torch.zeros(2, device=ctx.device, dtype=torch.float64)
    for x, y in bundle.test_batches(batch_size, ctx.device, limit, rank=ctx.rank,
                                    world_size=ctx.world_size):
        x_adv = attack(x, y)
        with torch.no_grad():
            sums[0] += (model(x_adv).argmax(-1) == y).sum()
        sums[1] += y.numel()
    return D.all_reduce_sum(ctx, sums)


def evaluate_epoch(model: nn.Module, attack: TrainingAttack | None, bundle: DataBundle,
                   ctx: D.Context, cfg: TrainConfig, temperature: Tensor) -> dict:
    """Test loss (CE at T) and accuracy on the whole test set; under --adv pgd also the
    accuracy under the training attack on the first ``eval_adv_examples`` test images."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = _clean_sums(model, bundle, ctx, cfg.batch_size,
                                           temperature).tolist()
    out = {"test_loss": loss_sum / count, "test_acc": correct / count, "test_robust_acc": None}
    if attack is not None and cfg.eval_adv_examples > 0:
        robust, n = _robust_sums(attack, model, bundle, ctx, cfg.batch_size,
                                 cfg.eval_adv_examples).tolist()
        out["test_robust_acc"] = robust / n
    model.train(was_training)
    return out


# a quick evaluation's settings -> the TrainConfig field whose explicit value wins over it
EVAL_FLAGS = {"attacks": "eval_attacks", "n_examples": "eval_examples",
              "corruptions": "eval_corruptions", "perturbations": "eval_perturbations"}


def explicit_eval_settings(cfg: TrainConfig) -> frozenset[str]:
    """The final evaluation's settings given explicitly in an unresolved ``cfg``: the
    ``eval_*`` fields that are not None, ``--no-corruptions`` and ``--eval-perturbations``."""
    given = {k for k in ("eval_attacks", "eval_examples", "eval_steps")
             if getattr(cfg, k) is not None}
    if not cfg.eval_corruptions:
        given.add("eval_corruptions")
    if cfg.eval_perturbations:
        given.add("eval_perturbations")
    return frozenset(given)


class Trainer:
    """One run: its folder, data and parts, and the epoch loop over them (see :func:`run`)."""

    def __init__(self, cfg: TrainConfig, ctx: D.Context, reporter: Reporter,
                 explicit_eval: frozenset[str] = frozenset()) -> None:
        started = time.perf_counter()
        self.cfg, self.ctx, self.reporter = cfg, ctx, reporter
        self.explicit_eval = explicit_eval  # the --eval-* settings the user gave
        self.eval_preset = cfg.eval_preset
        # inputs before outputs: a missing data set is reported before a full --output
        self.bundle = load_data(cfg.data, cfg.data_dir, cfg.download, cfg.data_seed,
                                num_classes=cfg.num_classes, img_size=cfg.img_size,
                                workers=cfg.workers, train_subset=cfg.train_subset)
        self.folder = RunFolder(cfg.output)
        self.resume_from = D.run_on_main(ctx, self.folder.check, cfg.as_dict(), cfg.resume,
                                         cfg.overwrite)
        ckpt = load_checkpoint(self.resume_from, RESUME_KEYS) if self.resume_from else None
        steps = self.bundle.steps_per_epoch(cfg.batch_size, ctx.world_size)
        if steps == 0:
            raise UsageError(f"{self.bundle.n_train} training images cannot be shared by "
                             f"{ctx.world_size} processes")
        self.parts: Parts = build(cfg, self.bundle, ctx, steps)
        self.checkpointer = Checkpointer(cfg, ctx, self.folder, self.parts, self.bundle)
        self.progress = (self.checkpointer.restore(ckpt, self.resume_from) if ckpt is not None
                         else Progress.fresh(cfg))
        self.progress.started = started
        self.resumed = ckpt is not None
        self.parts.wire(cfg, ctx)

    def train_epoch(self, ctrl_c: CtrlC) -> dict:
        """Run the next epoch (from ``progress.step``); return its train metrics."""
        cfg, ctx, parts, progress = self.cfg, self.ctx, self.parts, self.progress
        plan = self.bundle.epoch_plan(progress.epoch, cfg.seed, cfg.batch_size, ctx.rank,
                                      ctx.world_size)
        sums = torch.zeros(3, device=ctx.device, dtype=torch.float64)
        if progress.partial is not None:
            sums += torch.tensor(progress.partial[ctx.rank], device=ctx.device,
                                 dtype=torch.float64)
        self.reporter.epoch_start(progress.epoch, cfg.epochs, plan.steps, progress.step)
        parts.trained.train()
        t0 = time.perf_counter()
        step = progress.step
        for x, y in self.bundle.train_batches(plan, ctx.device, progress.step):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if parts.attack is not None:  # crafting sees rank 0's batch-norm statistics
                D.broadcast_buffers(ctx, parts.classifier)
            factor = parts.loss_fn.temperature.detach() if cfg.loss_factor else None
            loss, correct = train_step(parts.trained, parts.optimizer, parts.loss_fn, x, y,
                                       attack=parts.attack, scaler=parts.scaler,
                                       amp_dtype=parts.amp_dtype, loss_factor=factor)
            parts.scheduler.step()
            sums[0] += loss.double() * y.numel()
            sums[1] += correct
            sums[2] += y.numel()
            step += 1
            self.reporter.step(step, sums)
            if step < plan.steps and ctrl_c.stop(step):
                progress.train_time += time.perf_counter() - t0
                partial = D.all_gather(ctx, sums.tolist())
                state = self.checkpointer.state(progress, step, partial)
                raise RunInterruptedError(self.checkpointer.save(("recovery.pt",), state))
        loss_sum, correct, count = D.all_reduce_sum(ctx, sums).tolist()
        elapsed = time.perf_counter() - t0
        progress.train_time += elapsed
        done = (plan.steps - progress.step) * plan.batch_size * ctx.world_size
        progress.step, progress.partial = 0, None
        return {"train_loss": loss_sum / count, "train_acc": correct / count,
                "train_images": int(count), "epoch_time_s": elapsed,
                "images_per_s": done / max(elapsed, 1e-9)}

    def finish_epoch(self, train_metrics: dict) -> None:
        """Evaluate the epoch just trained (when due), keep the best, checkpoint, report."""
        cfg, parts, progress = self.cfg, self.parts, self.progress
        progress.epoch += 1
        due = progress.epoch == cfg.epochs or (cfg.eval_every and
                                               progress.epoch % cfg.eval_every == 0)
        temperature = parts.loss_fn.temperature.detach()
        D.broadcast_buffers(self.ctx, parts.classifier)  # every rank evaluates the saved model
        test = (evaluate_epoch(parts.classifier, parts.attack, self.bundle, self.ctx, cfg,
                               temperature)
                if due else {"test_loss": None, "test_acc": None, "test_robust_acc": None})
        row = {"epoch": progress.epoch, "lr": parts.optimizer.param_groups[0]["lr"],
               **{k: train_metrics[k] for k in ("train_loss", "train_acc", "train_images")},
               **test,
               "temperature": float(temperature),
               **{k: train_metrics[k] for k in ("epoch_time_s", "images_per_s")}}
        best = progress.best
        value = row[best["metric"]]
        improved = value is not None and (best["value"] is None or value > best["value"])
        if improved:
            progress.best = {"metric": best["metric"], "value": value, "epoch": progress.epoch}
        self.checkpointer.save(("last.pt", "best.pt") if improved else ("last.pt",),
                               self.checkpointer.state(progress), row, remove=("recovery.pt",))
        self.reporter.epoch_end(row)

    def final_evaluation(self) -> dict | None:
        """The robustness evaluation of the trained classifier at the end of the run (None
        for ``--eval none`` / ``--no-final-eval``), announced with its preset, its work and an
        estimate of its time at the training's rate; its progress carries an ETA."""
        settings = self.eval_settings()
        if settings is None:
            return None
        from ..robust.evaluation import duration, evaluate, planned_passes

        classifier = self.parts.classifier
        n = min(settings.n_examples or self.bundle.n_test, self.bundle.n_test)
        passes = sum(planned_passes(settings, n, self.bundle.n_test).values())
        rate = self.train_passes() / max(self.progress.train_time, 1e-9)
        attacks = ", ".join(settings.resolved().attacks) or "no attacks"
        self.reporter.status(
            f"final evaluation ({self.eval_preset}): {n} test images, {attacks}; about "
            f"{passes:,.0f} forward + backward image passes, ~{duration(passes / rate)} at "
            f"the training's rate")
        classifier.eval()
        return evaluate(classifier, self.bundle, settings, progress=self.reporter.status)

    def train_passes(self) -> float:
        """Forward + backward image passes of the whole training (PGD training: 1 + steps
        per image)."""
        cfg = self.cfg
        per_image = 1 + (cfg.steps if cfg.adv == "pgd" else 0)
        return cfg.epochs * self.bundle.n_train * per_image

    def eval_settings(self):
        """The final evaluation's :class:`~tempfast.robust.evaluation.EvalSettings` (None:
        none), with the preset resolved: ``auto`` is full when the full evaluation costs at
        most the training's passes, else quick. Flags the user gave (``explicit_eval``) win
        over a preset's values."""
        from ..robust.evaluation import (
            QUICK_SETTINGS,
            SHORT_SETTINGS,
            EvalSettings,
            planned_passes,
        )

        cfg = self.cfg
        if not cfg.final_eval or cfg.eval_preset == "none":
            self.eval_preset = "none"
            return None
        full = EvalSettings(
            eps=cfg.eps, steps=cfg.eval_steps,
            train_temperature=float(self.parts.loss_fn.temperature.detach()),
            attacks=cfg.eval_attacks, restarts=cfg.eval_restarts, n_examples=cfg.eval_examples,
            corruptions=cfg.eval_corruptions, seed=cfg.seed,
            square_queries=cfg.eval_square_queries or SHORT_SETTINGS["square_queries"],
            severities=SHORT_SETTINGS["severities"], perturbations=cfg.eval_perturbations,
            shift_examples=cfg.eval_shift_examples)
        preset = cfg.eval_preset
        if preset == "auto":
            n = min(cfg.eval_examples or self.bundle.n_test, self.bundle.n_test)
            cost = sum(planned_passes(full, n, self.bundle.n_test).values())
            preset = "full" if cost <= self.train_passes() else "quick"
            self.eval_preset = f"auto: {preset}, the full one would cost " \
                               f"{cost / max(self.train_passes(), 1):.1f}x the training's passes"
        else:
            self.eval_preset = preset
        if preset == "full":
            return full
        quick = {k: v for k, v in QUICK_SETTINGS.items()
                 if EVAL_FLAGS.get(k) not in self.explicit_eval}
        if "n_examples" in quick:
            quick["n_examples"] = min(QUICK_SETTINGS["n_examples"], cfg.eval_examples)
        return dataclasses.replace(full, **quick)

    def summary(self, result: dict | None, eval_time: float) -> dict:
        """What summary.json holds: the run's settings, last epoch, best epoch, final
        evaluation and times."""
        cfg, progress = self.cfg, self.progress
        last = self.folder.rows[-1] if self.folder.rows else {}
        out = {
            "output": str(self.folder.path), "data": cfg.data, "model": cfg.model,
            "adv": cfg.adv, "epochs": progress.epoch, "temperature": cfg.temp,
            "learn_temp": cfg.learn_temp, "temp_compensation": cfg.temp_compensation,
            "final_temperature": float(self.parts.loss_fn.temperature.detach()),
            "clean_acc": last.get("test_acc"), "clean_n": self.bundle.n_test if last else None,
            "robust_acc": None, "extra_robust_acc": None, "worst_case_acc": None,
            "corruption_acc": None, "perturbation_acc": None, "masking": None,
            "calibration": None,
            "best": progress.best,
            "last_epoch": last, "train_time_s": progress.train_time, "eval_time_s": eval_time,
            "eval_preset": self.eval_preset,
            "wall_time_s": progress.wall_time(), "eval": result,
        }
        if result is not None:
            out.update({k: result.get(k) for k in ("clean_acc", "robust_acc", "worst_case_acc",
                                                   "extra_robust_acc", "corruption_acc",
                                                   "perturbation_acc",
                                                   "masking", "calibration")})
            out["clean_n"] = result["n_examples"]
        return out

    def header(self) -> dict:
        """What the reporter shows when the run starts."""
        cfg, ctx = self.cfg, self.ctx
        return {"output": cfg.output, "data": cfg.data, "n_train": self.bundle.n_train,
                "n_test": self.bundle.n_test, "model": cfg.model, "temperature": cfg.temp,
                "learn_temp": cfg.learn_temp, "temp_compensation": cfg.temp_compensation,
                "adv": cfg.adv, "device": str(ctx.device),
                "world_size": ctx.world_size, "epochs": cfg.epochs,
                "resumed_from": self.resume_from, "note": self.folder.note}


def run(cfg: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train as ``cfg`` says and return the summary (also written to summary.json).

    Raises:
        SettingError: a setting out of range (nothing was written).
        UsageError: a bad device, backend (``TEMPFAST_BACKEND``), data, checkpoint or output
            folder (nothing was written).
        OutputError: a write failed mid-run (the last good checkpoint is intact).
        RunInterruptedError: Ctrl-C; the recovery checkpoint was written.
    """
    explicit_eval = explicit_eval_settings(cfg)
    cfg = cfg.resolved()
    reporter = reporter or Reporter()
    threads = torch.get_num_threads()
    ctx = D.setup(cfg.device)
    torch.set_num_threads(cfg.threads or threads)
    trainer = None
    try:
        trainer = Trainer(cfg, ctx, reporter, explicit_eval)
        D.run_on_main(ctx, trainer.folder.start, cfg.as_dict(),
                      trainer.progress.epoch if trainer.resumed else None)
        reporter.start(trainer.header())
        with CtrlC(ctx) as ctrl_c:
            while trainer.progress.epoch < cfg.epochs and not ctrl_c.stop():
                trainer.finish_epoch(trainer.train_epoch(ctrl_c))
            if ctrl_c.stop():
                last = trainer.folder.file("last.pt")
                raise RunInterruptedError(str(last) if last.exists() else "")
        t_eval = time.perf_counter()
        result = trainer.final_evaluation() if ctx.is_main else None
        summary = trainer.summary(result, time.perf_counter() - t_eval)
        D.run_on_main(ctx, trainer.folder.write_summary, summary)
        reporter.summary(summary)
        return summary
    finally:
        reporter.close()
        del trainer  # DDP's reducer goes before the process group it uses
        D.teardown(ctx)
        torch.set_num_threads(threads)

"""Standard and PGD adversarial training with a temperature-scaled cross-entropy.

The loss is ``tempfast.nn.TemperatureCrossEntropyLoss``: ``CE(z / T, y)``, whose logit gradient
is ``(softmax(z / T) - onehot(y)) / T``; with ``learn_temp`` T is a trained parameter. Under
``adv="pgd"`` each batch is replaced by PGD adversarial examples (Madry et al. 2018: random
start in the L-inf eps-ball, ``steps`` signed steps of ``alpha``, projection, clamp to [0, 1],
batch-norm frozen while crafting) whose loss is CE at the training T (``attack_loss="train"``)
or on raw logits (``"raw"``, T = 1).

:func:`run` is the whole run (the ``tempfast train`` command): data, model, optimiser, the
epoch loop with per-epoch test evaluation, checkpoints, ``--resume``, Ctrl-C recovery, DDP under
torchrun, and the final robustness evaluation of :func:`tempfast.eval.evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed as D
from .attacks import PGD
from .checkpoint import (
    FORMAT,
    RESUME_KEYS,
    load_checkpoint,
    rng_state,
    set_rng_state,
    weights_mismatch,
)
from .data import DATASETS, DataBundle, load_data
from .errors import UsageError
from .functional import cross_entropy
from .models import FeatureNet, build_model, check_model_name
from .nn import LinearTemperatureCrossEntropy, TemperatureCrossEntropyLoss, parameter_groups
from .progress import Reporter
from .run_folder import RunFolder

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per data set: model, epochs, batch size, SGD learning rate, PGD eps / alpha / steps, final
# evaluation size, CPU threads (None: torch's default). Digits use one thread: its tiny ops gain
# little from a second one, and lose several-fold when the cores are shared with other jobs.
DATA_DEFAULTS = {
    "digits": dict(model="small_cnn", epochs=20, batch_size=64, lr=0.05,
                   eps=0.1, alpha=0.025, steps=7, eval_examples=360, threads=1),
    "cifar10": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                    eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "cifar100": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                     eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "imagefolder": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                        eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "synthetic": dict(model="small_cnn", epochs=10, batch_size=256, lr=0.05,
                      eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
}
OPT_DEFAULTS = {"sgd": dict(wd=5e-4), "adamw": dict(lr=1e-3, wd=0.05)}
EPOCH_CHECK_EVERY = 16  # steps between DDP agreements on a pending Ctrl-C


@dataclass
class TrainConfig:
    """Every setting of a run; ``None`` means the per-data-set / per-optimiser default
    (:data:`DATA_DEFAULTS`, :data:`OPT_DEFAULTS`), filled in by :meth:`resolved`."""

    data: str = "digits"
    data_dir: str | None = None
    download: bool = False
    data_seed: int = 0
    num_classes: int | None = None
    img_size: int | None = None
    workers: int | None = None
    model: str | None = None
    temp: float = 1.0
    learn_temp: bool = False
    fused_head: bool = False
    adv: str = "none"
    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    attack_loss: str = "train"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    opt: str = "sgd"
    sched: str = "cosine"
    wd: float | None = None
    warmup_epochs: int = 0
    seed: int = 0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    threads: int | None = None
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    eval_every: int = 1
    eval_adv_examples: int = 512
    final_eval: bool = True
    eval_examples: int | None = None
    eval_steps: int | None = None
    eval_restarts: int = 1
    eval_attacks: list[str] | None = None
    eval_corruptions: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in and the settings checked.

        Raises:
            UsageError: an unknown data set, model, optimiser, ...; eps < 0; steps < 1;
                temperature <= 0; any other value out of range.
        """
        if self.data not in DATASETS:
            raise UsageError(f"unknown data set {self.data!r}; expected one of "
                             f"{', '.join(DATASETS)}")
        for name, value, choices in (("--opt", self.opt, OPT_DEFAULTS),
                                     ("--sched", self.sched, ("cosine", "step", "none")),
                                     ("--adv", self.adv, ("none", "pgd")),
                                     ("--attack-loss", self.attack_loss, ("train", "raw")),
                                     ("--amp", self.amp, AMP_DTYPES),
                                     ("--device", self.device, ("auto", "cpu", "cuda"))):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        base = DATA_DEFAULTS[self.data] | OPT_DEFAULTS[self.opt]
        cfg = dataclasses.replace(self, **{
            k: base.get(k) for k in ("model", "eps", "alpha", "steps", "epochs", "batch_size",
                                     "lr", "wd", "eval_examples", "threads")
            if getattr(self, k) is None
        })
        if cfg.eval_steps is None:
            cfg.eval_steps = max(cfg.steps, 10)
        if cfg.output is None:
            learned = "-learned" if cfg.learn_temp else ""
            cfg.output = (f"output/train/{cfg.data}-{cfg.model}-T{cfg.temp:g}{learned}-"
                          f"{cfg.adv}-seed{cfg.seed}")
        cfg.check()
        return cfg

    def check(self) -> None:
        if not (math.isfinite(self.temp) and self.temp > 0):
            raise UsageError(f"--temp must be finite and > 0, got {self.temp}")
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1):
            raise UsageError(f"--eps must lie in [0, 1] (pixels are in [0, 1]), got {self.eps}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"--alpha must be > 0, got {self.alpha}")
        for name, value, low in (("--steps", self.steps, 1), ("--epochs", self.epochs, 1),
                                 ("--batch-size", self.batch_size, 1),
                                 ("--eval-every", self.eval_every, 0),
                                 ("--warmup-epochs", self.warmup_epochs, 0),
                                 ("--eval-examples", self.eval_examples, 1),
                                 ("--eval-adv-examples", self.eval_adv_examples, 0),
                                 ("--eval-steps", self.eval_steps, 1),
                                 ("--eval-restarts", self.eval_restarts, 1),
                                 ("--workers", 0 if self.workers is None else self.workers, 0),
                                 ("--threads", 1 if self.threads is None else self.threads, 1)):
            if value < low:
                raise UsageError(f"{name} must be >= {low}, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.wd) and self.wd >= 0):
            raise UsageError(f"--wd must be >= 0, got {self.wd}")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        check_model_name(self.model)
        if self.eval_attacks is not None:
            from .eval import parse_attacks

            parse_attacks(self.eval_attacks)

    def as_dict(self) -> dict:
        """Plain JSON/YAML-able dict (what config.yaml and checkpoints hold)."""
        return dataclasses.asdict(self)


class RunInterruptedError(Exception):
    """Ctrl-C stopped the run; ``path`` is the checkpoint to ``--resume`` from ("" when
    no epoch had finished and no step had run)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
               x: Tensor, y: Tensor, *, attack=None, scaler: torch.amp.GradScaler | None = None,
               amp_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """One optimiser step on the batch ``x`` (B, C, H, W) in [0, 1], labels ``y`` (B,).

    ``attack(x, y) -> x_adv`` (e.g. :class:`tempfast.attacks.PGD`), when given, replaces the
    batch first (under bf16 autocast it runs in bf16; under fp16 in fp32, whose input
    gradients do not underflow). The forward runs under ``autocast(amp_dtype)`` when given;
    ``scaler`` (fp16) scales the loss. ``model`` must be in train mode. With a fused head
    (``criterion`` a :class:`~tempfast.nn.LinearTemperatureCrossEntropy`), ``model`` returns
    features, the criterion holds the classifier, and predictions come from its ``predict``.

    Returns:
        ``(loss, correct)``: the detached mean loss and the number of correct predictions, as
        device tensors (no host synchronisation).
    """
    device_type = x.device.type
    if attack is not None:
        with torch.autocast(device_type, dtype=torch.bfloat16,
                            enabled=amp_dtype == torch.bfloat16):
            x = attack(x, y)
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
        logits = model(x)
    loss = criterion(logits, y)
    # Predictions of the weights the loss was computed with (before the step).
    if isinstance(criterion, LinearTemperatureCrossEntropy):
        prediction = criterion.predict(logits.detach())
    else:
        prediction = logits.detach().argmax(-1)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), (prediction == y).sum()


class TrainingAttack:
    """PGD with CE at the loss module's current temperature (``attack_loss="train"``, follows
    a learned T) or at T = 1 (``"raw"``)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, criterion: nn.Module) -> None:
        self.criterion = criterion if cfg.attack_loss == "train" and cfg.learn_temp else None
        temperature = cfg.temp if cfg.attack_loss == "train" else 1.0
        self.pgd = PGD(model, cfg.eps, cfg.alpha, cfg.steps, loss="ce", temperature=temperature)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.criterion is not None:
            self.pgd.temperature = self.criterion.temperature.detach()
        return self.pgd(x, y)


class WithCriterion(nn.Module):
    """``net(x)`` as forward, with the loss module registered beside the network.

    Wrapped in DistributedDataParallel, every parameter of ``criterion`` (a learned
    ``log_temperature``) then has its gradient averaged over the ranks like the network's, in
    the same backward pass, although the loss is computed outside this forward; without it each
    rank would step its own temperature. Shared parameters (a fused head that is also the
    model's head) are synchronised once.
    """

    def __init__(self, net: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.criterion = criterion

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_optimizer(cfg: TrainConfig, model: nn.Module,
                    criterion: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW over :func:`tempfast.nn.parameter_groups` of the
    model and the loss: weight decay applies to weight matrices and kernels only, never to
    biases, normalisation parameters or the learned temperature. (A fused head's classifier
    belongs to the model and is counted once; the criterion adds only the temperature.)"""
    groups = parameter_groups(model, criterion, weight_decay=cfg.wd)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total: int, warmup: int, sched: str) -> float:
    """Learning-rate multiplier at optimiser step ``step`` of ``total``: linear warm-up over
    ``warmup`` steps, then cosine to 0, x0.1 at 50% and 75% (``step``), or constant."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if sched == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if sched == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule (:func:`lr_factor`) over ``cfg.epochs * steps_per_epoch`` steps."""
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.sched))


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


class _CtrlC:
    """First SIGINT: ask the loop to stop at the next step boundary. Second (single process
    only): abort at once. Installed only in the main thread."""

    def __init__(self, distributed: bool) -> None:
        self.requested = False
        self.distributed = distributed
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.distributed:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Run:
    """The state of one training run (see :func:`run`)."""

    def __init__(self, cfg: TrainConfig, ctx: D.Context, reporter: Reporter) -> None:
        self.cfg, self.ctx, self.reporter = cfg, ctx, reporter
        self.t0 = time.perf_counter()
        self.folder = RunFolder(cfg.output)
        self.resume_from = D.run_on_main(ctx, self.folder.check, cfg.as_dict(), cfg.resume,
                                         cfg.overwrite)
        self.ckpt = load_checkpoint(self.resume_from, RESUME_KEYS) if self.resume_from else None
        self.bundle = load_data(cfg.data, cfg.data_dir, cfg.download, cfg.data_seed,
                                num_classes=cfg.num_classes, img_size=cfg.img_size,
                                workers=cfg.workers)
        self.steps = self.bundle.steps_per_epoch(cfg.batch_size, ctx.world_size)
        if self.steps == 0:
            raise UsageError(f"{self.bundle.n_train} training images cannot be shared by "
                             f"{ctx.world_size} processes")
        _seed_all(cfg.seed)
        b = self.bundle
        self.model_config = {"name": cfg.model, "num_classes": b.num_classes,
                             "in_chans": b.in_chans, "img_size": b.img_size,
                             "mean": list(b.mean), "std": list(b.std)}
        self.model = build_model(cfg.model, b.num_classes, b.in_chans, b.img_size, b.mean,
                                 b.std).to(ctx.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.fused_head:
            head = self.model.head
            self.criterion = LinearTemperatureCrossEntropy(
                head.in_features, head.out_features, cfg.temp, learnable=cfg.learn_temp)
            self.criterion.linear = head  # shared with the model: one set of weights
        else:
            self.criterion = TemperatureCrossEntropyLoss(cfg.temp, learnable=cfg.learn_temp)
        self.criterion.to(ctx.device)
        self.optimizer = build_optimizer(cfg, self.model, self.criterion)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps)
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.scaler = torch.amp.GradScaler(ctx.device.type) if cfg.amp == "fp16" else None
        if ctx.rank:
            _seed_all(cfg.seed + ctx.rank)
        self.epoch, self.start_step, self.partial = 0, 0, None
        self.best = {"metric": "test_robust_acc" if cfg.adv == "pgd" else "test_acc",
                     "value": None, "epoch": None}
        self.train_time, self.wall_before = 0.0, 0.0
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.net = self.model
        if cfg.compile:
            self.net = torch.compile(self.model)
        self.train_net = self.net
        if cfg.fused_head:
            features = FeatureNet(self.model)
            self.train_net = torch.compile(features) if cfg.compile else features
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.train_net = nn.parallel.DistributedDataParallel(
                WithCriterion(self.train_net, self.criterion), device_ids=ids)
        self.attack = TrainingAttack(self.net, cfg, self.criterion) if cfg.adv == "pgd" else None

    def _restore(self, ckpt: dict) -> None:
        mismatch = weights_mismatch(self.model, ckpt["model"])
        if mismatch is not None:
            raise UsageError(f"checkpoint {self.resume_from} does not fit this run's model: "
                             f"{mismatch}")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.criterion.load_state_dict(ckpt["criterion"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt["scaler"] is not None:
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UsageError(f"checkpoint {self.resume_from} does not fit this run: "
                             f"{str(exc).splitlines()[0]}") from None
        rngs, partial = ckpt["rng"], ckpt["partial"]
        if partial is not None and len(partial) != self.ctx.world_size:
            raise UsageError(f"checkpoint {self.resume_from} stopped inside an epoch of a run "
                             f"with {len(partial)} processes; resume it with as many")
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        self.epoch, self.start_step = int(ckpt["epoch"]), int(ckpt["step"])
        if self.epoch > self.cfg.epochs:
            raise UsageError(f"{self.cfg.output} has finished {self.epoch} epochs; --epochs "
                             f"{self.cfg.epochs} cannot shorten it")
        self.partial = partial
        self.best, self.train_time = dict(ckpt["best"]), float(ckpt["train_time_s"])
        # A checkpoint from before wall times were stored: its training time, a lower bound.
        self.wall_before = float(ckpt.get("wall_time_s", self.train_time))

    def wall_time(self) -> float:
        """Seconds of wall time behind the current state: this invocation's, plus, for a
        resumed run, the earlier invocations' up to the checkpoint it continued from."""
        return self.wall_before + time.perf_counter() - self.t0

    def _state(self, step: int, partial: list[list[float]] | None) -> dict:
        rngs = D.all_gather(self.ctx, rng_state())
        return {
            "format": FORMAT, "model": self.model.state_dict(),
            "model_config": self.model_config, "criterion": self.criterion.state_dict(),
            "temperature": float(self.criterion.temperature.detach()),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs, "epoch": self.epoch, "step": step, "partial": partial,
            "best": self.best, "train_time_s": self.train_time,
            "wall_time_s": self.wall_time(), "config": self.cfg.as_dict(),
            "data": self.bundle.meta(),
        }

    def _save(self, names: tuple[str, ...], state: dict, row: dict | None = None,
              remove: tuple[str, ...] = ()) -> str:
        """On rank 0: append ``row`` to the metrics, write ``state`` as each of ``names`` and
        remove ``remove``; a write that fails raises :class:`OutputError` on every rank.
        Returns the path of the first checkpoint."""
        def write() -> None:
            if row is not None:
                self.folder.add_row(row)
            for name in names:
                self.folder.save(name, state)
            for name in remove:
                self.folder.remove(name)

        D.run_on_main(self.ctx, write)
        return str(self.folder.file(names[0]))

    def stop_requested(self, ctrl_c: _CtrlC, step: int = 0) -> bool:
        """Whether Ctrl-C was pressed; under DDP every rank agrees (checked every
        ``EPOCH_CHECK_EVERY`` steps, all ranks at the same steps)."""
        if not self.ctx.distributed:
            return ctrl_c.requested
        if step % EPOCH_CHECK_EVERY:
            return False
        flag = torch.tensor([float(ctrl_c.requested)], device=self.ctx.device)
        return bool(D.all_reduce_max(self.ctx, flag).item())

    def train_epoch(self, ctrl_c: _CtrlC) -> dict:
        """Run epoch ``self.epoch`` (from ``self.start_step``); return its train metrics."""
        cfg, ctx = self.cfg, self.ctx
        plan = self.bundle.epoch_plan(self.epoch, cfg.seed, cfg.batch_size, ctx.rank,
                                      ctx.world_size)
        sums = torch.zeros(3, device=ctx.device, dtype=torch.float64)
        if self.partial is not None:
            sums += torch.tensor(self.partial[ctx.rank], device=ctx.device, dtype=torch.float64)
        self.reporter.epoch_start(self.epoch, cfg.epochs, plan.steps, self.start_step)
        self.train_net.train()
        t0 = time.perf_counter()
        step = self.start_step
        for x, y in self.bundle.train_batches(plan, ctx.device, self.start_step):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.attack is not None:  # crafting sees rank 0's batch-norm statistics
                D.broadcast_buffers(ctx, self.model)
            loss, correct = train_step(self.train_net, self.optimizer, self.criterion, x, y,
                                       attack=self.attack, scaler=self.scaler,
                                       amp_dtype=self.amp_dtype)
            self.scheduler.step()
            sums[0] += loss.double() * y.numel()
            sums[1] += correct
            sums[2] += y.numel()
            step += 1
            self.reporter.step(step, sums)
            if step < plan.steps and self.stop_requested(ctrl_c, step):
                self.train_time += time.perf_counter() - t0
                partial = D.all_gather(ctx, sums.tolist())
                raise RunInterruptedError(self._save(("recovery.pt",), self._state(step, partial)))
        loss_sum, correct, count = D.all_reduce_sum(ctx, sums).tolist()
        elapsed = time.perf_counter() - t0
        self.train_time += elapsed
        done = (plan.steps - self.start_step) * plan.batch_size * ctx.world_size
        self.start_step, self.partial = 0, None
        return {"train_loss": loss_sum / count, "train_acc": correct / count,
                "train_images": int(count), "epoch_time_s": elapsed,
                "images_per_s": done / max(elapsed, 1e-9)}

    def finish_epoch(self, train_metrics: dict) -> None:
        cfg = self.cfg
        self.epoch += 1
        evaluate = self.epoch == cfg.epochs or (cfg.eval_every and
                                                self.epoch % cfg.eval_every == 0)
        temperature = self.criterion.temperature.detach()
        D.broadcast_buffers(self.ctx, self.model)  # every rank evaluates the model it saves
        test = (evaluate_epoch(self.model, self.attack, self.bundle, self.ctx, cfg, temperature)
                if evaluate else {"test_loss": None, "test_acc": None, "test_robust_acc": None})
        row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
               **{k: train_metrics[k] for k in ("train_loss", "train_acc", "train_images")},
               **test,
               "temperature": float(temperature),
               **{k: train_metrics[k] for k in ("epoch_time_s", "images_per_s")}}
        value = row[self.best["metric"]]
        improved = value is not None and (self.best["value"] is None or value > self.best["value"])
        if improved:
            self.best = {"metric": self.best["metric"], "value": value, "epoch": self.epoch}
        state = self._state(0, None)
        self._save(("last.pt", "best.pt") if improved else ("last.pt",), state, row,
                   remove=("recovery.pt",))
        self.reporter.epoch_end(row)

    def final_evaluation(self) -> dict | None:
        if not self.cfg.final_eval:
            return None
        from .eval import SHORT_SETTINGS, evaluate

        self.reporter.status("final robustness evaluation ...")
        self.model.eval()
        return evaluate(self.model, self.bundle,
                        train_temperature=float(self.criterion.temperature.detach()),
                        attacks=self.cfg.eval_attacks, eps=self.cfg.eps, alpha=None,
                        steps=self.cfg.eval_steps, restarts=self.cfg.eval_restarts,
                        n_examples=self.cfg.eval_examples,
                        corruptions=self.cfg.eval_corruptions, seed=self.cfg.seed,
                        progress=self.reporter.status,
                        square_queries=SHORT_SETTINGS["square_queries"],
                        severities=SHORT_SETTINGS["severities"])

    def summary(self, result: dict | None, eval_time: float) -> dict:
        last = self.folder.rows[-1] if self.folder.rows else {}
        out = {
            "output": str(self.folder.path), "data": self.cfg.data, "model": self.cfg.model,
            "adv": self.cfg.adv, "epochs": self.epoch, "temperature": self.cfg.temp,
            "learn_temp": self.cfg.learn_temp,
            "final_temperature": float(self.criterion.temperature.detach()),
            "clean_acc": last.get("test_acc"), "robust_acc": None, "worst_case_acc": None,
            "corruption_acc": None, "masking": None, "best": self.best,
            "last_epoch": last, "train_time_s": self.train_time, "eval_time_s": eval_time,
            "wall_time_s": self.wall_time(), "eval": result,
        }
        if result is not None:
            out.update({k: result.get(k) for k in ("clean_acc", "robust_acc", "worst_case_acc",
                                                   "corruption_acc", "masking")})
        return out


def run(cfg: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train as ``cfg`` says and return the summary (also written to summary.json).

    Raises:
        UsageError: bad settings, device, backend (``TEMPFAST_BACKEND``), data, checkpoint or
            output folder (nothing was written).
        RunInterruptedError: Ctrl-C; the recovery checkpoint was written.
    """
    cfg = cfg.resolved()
    reporter = reporter or Reporter()
    threads = torch.get_num_threads()
    ctx = D.setup(cfg.device)
    torch.set_num_threads(cfg.threads or threads)
    try:
        r = _Run(cfg, ctx, reporter)
        D.run_on_main(ctx, r.folder.start, cfg.as_dict(),
                      r.epoch if r.ckpt is not None else None)
        reporter.start({"output": cfg.output, "data": cfg.data, "n_train": r.bundle.n_train,
                        "n_test": r.bundle.n_test, "model": cfg.model, "temperature": cfg.temp,
                        "learn_temp": cfg.learn_temp, "adv": cfg.adv, "device": str(ctx.device),
                        "world_size": ctx.world_size, "epochs": cfg.epochs,
                        "resumed_from": r.resume_from, "note": r.folder.note})
        with _CtrlC(ctx.distributed) as ctrl_c:
            while r.epoch < cfg.epochs and not r.stop_requested(ctrl_c):
                r.finish_epoch(r.train_epoch(ctrl_c))
            if r.stop_requested(ctrl_c):
                last = r.folder.file("last.pt")
                raise RunInterruptedError(str(last) if last.exists() else "")
        t_eval = time.perf_counter()
        result = r.final_evaluation() if ctx.is_main else None
        summary = r.summary(result, time.perf_counter() - t_eval)
        D.run_on_main(ctx, r.folder.write_summary, summary)
        reporter.summary(summary)
        return summary
    finally:
        reporter.close()
        D.teardown(ctx)
        torch.set_num_threads(threads)

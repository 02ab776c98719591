"""The optimiser and the per-step learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import parameter_groups
from .config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module,
                    criterion: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW over :func:`tempfast.nn.parameter_groups` of the
    model and the loss: weight decay applies to weight matrices and kernels only, never to
    biases, normalisation parameters or the learned temperature. (A fused head's classifier
    belongs to the model and is counted once; the criterion adds only the temperature.) The
    learning rate and weight decay are ``cfg.optimiser_settings()`` (``--temp-compensation
    lr`` scales them)."""
    lr, wd = cfg.optimiser_settings()
    groups = parameter_groups(model, criterion, weight_decay=wd)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


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

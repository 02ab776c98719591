"""What a run trains, built from its configuration and data: the classifier, the loss that
holds T, the optimiser, the schedule, the gradient scaler and the training attack, and the
networks by role."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..nn import LinearTemperatureCrossEntropy, TemperatureCrossEntropyLoss
from . import distributed as D
from .config import AMP_DTYPES, TrainConfig
from .data import DataBundle
from .models import Classifier, FeatureNet, build_model
from .optim import build_optimizer, build_scheduler
from .step import TrainingAttack, WithCriterion


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_config(cfg: TrainConfig, bundle: DataBundle) -> dict:
    """What :func:`~tempfast.train.models.build_model` needs to rebuild the classifier (kept in
    every checkpoint)."""
    return {"name": cfg.model, "num_classes": bundle.num_classes, "in_chans": bundle.in_chans,
            "img_size": bundle.img_size, "mean": list(bundle.mean), "std": list(bundle.std),
            "patch_size": cfg.patch_size}


@dataclass
class Parts:
    """The trained objects of a run, by role.

    * ``classifier``: the model ([0, 1] images -> logits): what is saved, evaluated and
      attacked;
    * ``loss_fn``: the temperature cross-entropy (with ``--fused-head`` the classifier's head
      fused with it, sharing the head's weights); it holds T;
    * ``trained``: what a training step calls (the classifier, or its features with a fused
      head), compiled and wrapped in DDP when asked; ``None`` until :meth:`wire`;
    * ``attack``: the PGD that crafts training batches on the (compiled) classifier, or None.
    """

    classifier: Classifier
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    trained: nn.Module | None = None
    attack: TrainingAttack | None = None

    def wire(self, cfg: TrainConfig, ctx: D.Context) -> None:
        """Build the networks a step runs: after any restore (DDP copies rank 0's weights to
        every rank when it wraps them)."""
        attacked = torch.compile(self.classifier) if cfg.compile else self.classifier
        trained = attacked
        if cfg.fused_head:
            features = FeatureNet(self.classifier)
            trained = torch.compile(features) if cfg.compile else features
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(WithCriterion(trained, self.loss_fn),
                                                          device_ids=ids)
        self.trained = trained
        self.attack = TrainingAttack(attacked, cfg, self.loss_fn) if cfg.adv == "pgd" else None


def build(cfg: TrainConfig, bundle: DataBundle, ctx: D.Context, steps_per_epoch: int) -> Parts:
    """Seeded from ``cfg.seed`` (the same initial weights on every rank), then each rank's
    generator is reseeded with ``seed + rank`` for what it draws alone (PGD starts)."""
    seed_all(cfg.seed)
    classifier = build_model(cfg.model, bundle.num_classes, bundle.in_chans, bundle.img_size,
                             bundle.mean, bundle.std, cfg.patch_size).to(ctx.device)
    if cfg.channels_last:
        classifier.to(memory_format=torch.channels_last)
    if cfg.fused_head:
        head = classifier.head
        loss_fn = LinearTemperatureCrossEntropy(head.in_features, head.out_features, cfg.temp,
                                                learnable=cfg.learn_temp)
        loss_fn.linear = head  # shared with the classifier: one set of weights
    else:
        loss_fn = TemperatureCrossEntropyLoss(cfg.temp, learnable=cfg.learn_temp)
    loss_fn.to(ctx.device)
    optimizer = build_optimizer(cfg, classifier, loss_fn)
    parts = Parts(classifier, loss_fn, optimizer,
                  build_scheduler(cfg, optimizer, steps_per_epoch),
                  torch.amp.GradScaler(ctx.device.type) if cfg.amp == "fp16" else None,
                  AMP_DTYPES[cfg.amp])
    if ctx.rank:
        seed_all(cfg.seed + ctx.rank)
    return parts

"""One training step, the attack that crafts its batch, and the wrapper that lets DDP average
the loss module's parameters.

The loss is ``tempfast.nn.TemperatureCrossEntropyLoss``: ``CE(z / T, y)``, whose logit
gradient is ``(softmax(z / T) - onehot(y)) / T``; with a learned T it is a trained parameter.
Under ``adv="pgd"`` each batch is replaced by PGD adversarial examples (Madry et al. 2018:
random start in the L-inf eps-ball, ``steps`` signed steps of ``alpha``, projection, clamp to
[0, 1], batch-norm frozen while crafting) whose loss is CE at the training T
(``attack_loss="train"``) or on raw logits (``"raw"``, T = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn import LinearTemperatureCrossEntropy
from ..robust.attacks import PGD
from .config import TrainConfig


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
               x: Tensor, y: Tensor, *, attack=None, scaler: torch.amp.GradScaler | None = None,
               amp_dtype: torch.dtype | None = None,
               loss_factor: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One optimiser step on the batch ``x`` (B, C, H, W) in [0, 1], labels ``y`` (B,).

    ``attack(x, y) -> x_adv`` (e.g. :class:`tempfast.robust.attacks.PGD`), when given,
    replaces the batch first (under bf16 autocast it runs in bf16; under fp16 in fp32, whose
    input gradients do not underflow). The forward runs under ``autocast(amp_dtype)`` when
    given; ``scaler`` (fp16) scales the loss. ``loss_factor`` (the temperature, under
    ``--temp-compensation loss``) multiplies the loss before ``backward``; the reported loss is
    the plain one. ``model`` must be in train mode. With a fused head
    (``criterion`` a :class:`~tempfast.nn.LinearTemperatureCrossEntropy`), ``model`` returns
    features, the criterion holds the classifier, and predictions come from its ``predict``.

    Returns:
        ``(loss, correct)``: the detached mean loss and the number of correct predictions of
        the weights the loss was computed with, as device tensors (no host synchronisation).
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
    objective = loss if loss_factor is None else loss * loss_factor
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        objective.backward()
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

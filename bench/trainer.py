"""Trainer cases: ``tempfast.train.train_step`` against a minimal hand-written PyTorch loop.

Both run one SGD step (lr 0.01, momentum 0.9) of the same model on the same batch of
``(B, 3, 32, 32)`` images in [0, 1] with 10 classes, loss ``CE(logits / T, y)`` at T = 8:

* ``tempfast_train_step``: ``train_step(model, optimizer, TemperatureCrossEntropyLoss(T), x,
  y, attack=PGD(...))``;
* ``minimal_loop``: ``F.cross_entropy(model(x) / T, y)``, ``zero_grad``, ``backward``,
  ``step``, with a hand-written PGD (random start, signed steps, projection) for ``pgd``.

``pgd``: L-infinity eps 8/255, step 2/255, CE at T = 8, in eval mode. Model and batch: on
CUDA timm ``resnet18`` (stem adapted to 32 px), B = 256, 10 PGD steps; on CPU the small CNN
(``small_cnn``), B = 64, 3 PGD steps. Throughput: images per second = B / step time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempfast.nn import TemperatureCrossEntropyLoss
from tempfast.robust.attacks import PGD
from tempfast.train import train_step
from tempfast.train.models import build_model

from .cases import TEMPERATURE

MODES = ("standard", "pgd")
PROVIDERS = ("tempfast_train_step", "minimal_loop")
EPS, ALPHA = 8 / 255, 2 / 255
SETTINGS = {"cuda": ("resnet18", 256, 10), "cpu": ("small_cnn", 64, 3)}
CLASSES = 10


@dataclass(frozen=True)
class TrainerSpec:
    mode: str
    provider: str
    device: str

    @property
    def id(self) -> str:
        return f"trainer_{self.mode}-{self.device}-{self.provider}"

    @property
    def group_name(self) -> str:
        model, batch, steps = SETTINGS[self.device]
        pgd = f" PGD-{steps}" if self.mode == "pgd" else ""
        return f"trainer_{self.mode} {model} B={batch}{pgd} {self.device}"

    def extra_info(self) -> dict[str, object]:
        model, batch, steps = SETTINGS[self.device]
        return {"op": f"trainer_{self.mode}", "provider": self.provider, "device": self.device,
                "model": model, "images_per_step": batch,
                "pgd_steps": steps if self.mode == "pgd" else 0, "temperature": TEMPERATURE}


def all_specs(device: str) -> list[TrainerSpec]:
    return [TrainerSpec(m, p, device) for m in MODES for p in PROVIDERS]


def minimal_pgd(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Tensor:
    """Hand-written L-infinity PGD with a random start, CE at T, in eval mode."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp_(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv) / TEMPERATURE, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + ALPHA * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp_(0.0, 1.0)
    model.train()
    return x_adv.detach()


def minimal_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                 pgd_steps: int) -> tuple[Tensor, Tensor]:
    """One hand-written training step; returns the detached loss and the correct count."""
    if pgd_steps:
        x = minimal_pgd(model, x, y, pgd_steps)
    logits = model(x)
    loss = F.cross_entropy(logits / TEMPERATURE, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(-1) == y).sum()


class TrainerCase:
    """A model, its optimiser, one batch, and the step of one provider."""

    def __init__(self, spec: TrainerSpec, model: nn.Module, x: Tensor, y: Tensor) -> None:
        self.spec, self.x, self.y = spec, x, y
        self.model = copy.deepcopy(model).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.step = self._step_fn()

    def _step_fn(self) -> Callable[[], tuple[Tensor, Tensor]]:
        steps = SETTINGS[self.spec.device][2] if self.spec.mode == "pgd" else 0
        if self.spec.provider == "minimal_loop":
            return lambda: minimal_step(self.model, self.optimizer, self.x, self.y, steps)
        criterion = TemperatureCrossEntropyLoss(TEMPERATURE).to(self.x.device)
        attack = PGD(self.model, EPS, ALPHA, steps, loss="ce", temperature=TEMPERATURE) \
            if steps else None
        return lambda: train_step(self.model, self.optimizer, criterion, self.x, self.y,
                                  attack=attack)


def make_inputs(device: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """The initial model and one batch, from ``seed``."""
    name, batch, _ = SETTINGS[device]
    torch.manual_seed(seed)
    model = build_model(name, CLASSES, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, CLASSES, (batch,))
    return model.to(device), x.to(device), y.to(device)


def check_same_step(spec: TrainerSpec, model: nn.Module, x: Tensor, y: Tensor) -> None:
    """From the same state and random seed, one step of each provider gives the same loss
    and parameters (rtol 1e-3, atol 1e-5) and correct count. The PGD batches may differ
    where a gradient sign flips between the two loss implementations (or, on CUDA, between
    nondeterministic convolution backwards), so with PGD the counts may differ by 1% of B."""
    results = []
    for provider in PROVIDERS:
        case = TrainerCase(TrainerSpec(spec.mode, provider, spec.device), model, x, y)
        torch.manual_seed(1)
        loss, correct = case.step()
        results.append((loss, correct, [p.detach() for p in case.model.parameters()]))
    (loss_a, correct_a, params_a), (loss_b, correct_b, params_b) = results
    msg = f"{spec.id}: train_step and the minimal loop disagree"
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-3, atol=1e-5, msg=msg)
    slack = len(y) // 100 if spec.mode == "pgd" else 0
    assert abs(int(correct_a) - int(correct_b)) <= slack, \
        f"{msg}: {int(correct_a)} vs {int(correct_b)} correct"
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=msg)

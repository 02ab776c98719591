"""White-box attacks on [0, 1] images under an L-infinity budget.

One attack = one small class, called as ``attack(x, y) -> x_adv`` (torchattacks' manner).
Every attack runs the model in eval mode while crafting (batch-norm statistics frozen) and
restores the previous mode afterwards; ``x_adv`` is detached, within ``eps`` of ``x`` in the
L-infinity norm and inside [0, 1].

The losses (``"ce"`` at a temperature, the CW margin ``"cw"``, ``"dlr"``) are in
:mod:`tempfast.robust.losses`; the settings are checked by :mod:`tempfast.robust.checks`.

The evaluation suite (:data:`ATTACKS`, built by :func:`build_attack`) names each attack:

* ``pgd-ce``: PGD on CE of the raw logits (``T = 1``);
* ``pgd-ce-t``: PGD on CE at the training temperature;
* ``pgd-cw``: PGD on the CW margin;
* ``apgd-dlr`` / ``apgd-ce``: APGD (Croce & Hein 2020, :class:`APGD`) with the DLR / CE loss;
* ``square``: torchattacks' Square attack (Andriushchenko et al. 2020), gradient-free random
  search on the margin; it needs no gradient, so no gradient masking can stop it.

:class:`APGD` and :class:`Square` take a seed and fork the RNG, so the caller's random state
is left as it was (torchattacks seeds the global RNG itself).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from ..errors import SettingError
from . import checks
from .losses import LOSSES, attack_loss

ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-cw", "apgd-dlr", "apgd-ce", "square")
DEFAULT_ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-cw", "apgd-dlr", "square")
GRADIENT_FREE = ("square",)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class PGD:
    """Projected gradient ascent (Madry et al. 2018) in the L-infinity ball.

    Each restart starts at a uniform random point of the eps-ball (or at ``x`` when
    ``random_start=False``), takes ``steps`` signed-gradient steps of size ``alpha``, projects
    onto the ball and clamps to [0, 1]. With several restarts, each restart attacks only the
    examples no earlier restart fooled, so an example keeps the first restart that fools the
    model (else the last one).
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int,
                 loss: str = "ce", temperature: float = 1.0, random_start: bool = True,
                 restarts: int = 1) -> None:
        checks.eps(eps)
        checks.positive(alpha, "alpha")
        checks.at_least(steps, "steps", 1)
        checks.at_least(restarts, "restarts", 1)
        checks.choice(loss, "loss", LOSSES)
        self.model = model
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.loss, self.temperature = loss, temperature
        self.random_start, self.restarts = random_start, int(restarts)

    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        if self.random_start:
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
            x_adv = (x + delta).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = attack_loss(self.loss, self.model(x_adv), y, self.temperature).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + self.alpha * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)
        return x_adv.detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with eval_mode(self.model), torch.enable_grad():
            best = self._one_run(x, y)
            for _ in range(self.restarts - 1):
                with torch.no_grad():
                    left = (self.model(best).argmax(1) == y).nonzero().squeeze(1)
                if left.numel() == 0:
                    break
                best[left] = self._one_run(x[left], y[left])
        return best


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (CPU and ``device``) for the block, then restore the caller's state."""
    cuda = []
    if device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        raise ImportError(
            "APGD and Square need torchattacks: pip install 'tempfast[train]'"
        ) from exc
    return torchattacks


def _apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step: ``ceil(p_j steps)`` with ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(v * steps) for v in p[1:] if v < 1.0})
    return [w for w in points if 0 < w < steps]


class APGD:
    """Auto-PGD in the L-infinity ball (Croce & Hein 2020): ``steps`` steps from a random
    start, step size ``2 eps`` halved at checkpoints when the loss stalls, momentum 0.75, per
    example (``steps + 1`` gradient evaluations per restart).

    At each checkpoint ``w_j`` an example's step is halved, and it restarts from its best
    point, when fewer than ``rho = 0.75`` of the steps since ``w_{j-1}`` raised its loss, or
    when neither its step nor its best loss changed since ``w_{j-1}``. ``loss``: ``"dlr"``,
    ``"ce"`` (at ``temperature``; 1: raw logits) or ``"cw"``. Each restart starts at a random
    point of the ball (seeded by ``seed``) and attacks the examples no earlier restart broke.

    Returns, per example, an iterate that is misclassified when any was (the first one found),
    else the iterate of highest loss: the best iterate, never merely the last.
    """

    RHO = 0.75
    MOMENTUM = 0.75

    def __init__(self, model: nn.Module, eps: float, steps: int, loss: str = "dlr",
                 restarts: int = 1, seed: int = 0, temperature: float = 1.0) -> None:
        checks.eps(eps)
        checks.at_least(steps, "steps", 1)
        checks.at_least(restarts, "restarts", 1)
        checks.choice(loss, "loss", LOSSES)
        self.model, self.seed = model, int(seed)
        self.eps, self.steps, self.loss = float(eps), int(steps), loss
        self.restarts, self.temperature = int(restarts), temperature

    def _loss_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss (N,), input gradient, misclassified (N,))`` at ``x``."""
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        loss = attack_loss(self.loss, logits, y, self.temperature)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad, logits.detach().argmax(1) != y

    def _one_run(self, x: Tensor, y: Tensor) -> Tensor:
        eps, n = self.eps, x.shape[0]
        per_example = (n,) + (1,) * (x.dim() - 1)

        def project(z: Tensor) -> Tensor:
            return torch.min(torch.max(z, x - eps), x + eps).clamp_(0.0, 1.0)

        x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps))
        loss, grad, fooled = self._loss_and_grad(x_adv, y)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        x_found, found = x_adv.clone(), fooled.clone()
        step = torch.full(per_example, 2.0 * eps, dtype=x.dtype, device=x.device)
        x_prev = x_adv.clone()
        rises = torch.zeros(n, device=x.device)
        last = 0
        step_last, best_last = step.clone(), loss_best.clone()
        checkpoints = set(_apgd_checkpoints(self.steps))
        for k in range(self.steps):
            with torch.no_grad():
                z = project(x_adv + step * grad.sign())
                a = 1.0 if k == 0 else self.MOMENTUM
                x_new = project(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev))
                x_prev, x_adv = x_adv, x_new
            new_loss, grad, fooled = self._loss_and_grad(x_adv, y)
            with torch.no_grad():
                fresh = fooled & ~found
                x_found[fresh], found = x_adv[fresh], found | fooled
                rises += (new_loss > loss).float()
                loss = new_loss
                better = loss > loss_best
                x_best[better], grad_best[better] = x_adv[better], grad[better]
                loss_best = torch.where(better, loss, loss_best)
                if k + 1 in checkpoints:
                    stalled = rises <= self.RHO * (k + 1 - last)
                    stuck = (step_last.flatten() == step.flatten()) & (best_last == loss_best)
                    halve = stalled | stuck
                    step_last, best_last = step.clone(), loss_best.clone()
                    step[halve] /= 2.0
                    x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                    rises.zero_()
                    last = k + 1
        return torch.where(found.view(per_example), x_found, x_best).detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.detach()
        with seeded(self.seed, x.device), eval_mode(self.model), torch.enable_grad():
            best = self._one_run(x, y)
            for _ in range(self.restarts - 1):
                with torch.no_grad():
                    left = (self.model(best).argmax(1) == y).nonzero().squeeze(1)
                if left.numel() == 0:
                    break
                best[left] = self._one_run(x[left], y[left])
        return best


class Square:
    """torchattacks' Square attack in the L-infinity ball on the margin loss, gradient-free.

    Each restart makes at most ``queries`` model queries per example.
    """

    def __init__(self, model: nn.Module, eps: float, queries: int = 1000, restarts: int = 1,
                 seed: int = 0) -> None:
        checks.eps(eps)
        checks.at_least(restarts, "restarts", 1)
        checks.at_least(queries, "queries", 1)
        self.model, self.seed = model, int(seed)
        self._attack = _torchattacks().Square(model, norm="Linf", eps=float(eps),
                                              n_queries=int(queries), n_restarts=int(restarts),
                                              loss="margin", seed=int(seed))

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        with seeded(self.seed, x.device), eval_mode(self.model):
            return self._attack(x.detach(), y).detach()


def build_attack(name: str, model: nn.Module, *, eps: float, alpha: float, steps: int,
                 restarts: int = 1, temperature: float = 1.0, seed: int = 0,
                 square_queries: int = 1000) -> Callable[[Tensor, Tensor], Tensor]:
    """The suite's attack ``name`` (one of :data:`ATTACKS`) as a callable ``(x, y) -> x_adv``.

    ``alpha`` is the PGD step; APGD adapts its own. ``temperature`` is used by ``pgd-ce-t`` only.
    The PGD attacks draw their random starts from the global RNG (seed it, e.g. with
    :func:`seeded`); APGD and Square use ``seed``.
    """
    if name == "pgd-ce":
        return PGD(model, eps, alpha, steps, loss="ce", restarts=restarts)
    if name == "pgd-ce-t":
        return PGD(model, eps, alpha, steps, loss="ce", temperature=temperature, restarts=restarts)
    if name == "pgd-cw":
        return PGD(model, eps, alpha, steps, loss="cw", restarts=restarts)
    if name in ("apgd-dlr", "apgd-ce"):
        return APGD(model, eps, steps, loss=name[5:], restarts=restarts, seed=seed)
    if name == "square":
        return Square(model, eps, queries=square_queries, seed=seed)
    raise SettingError("attack", f"must be one of {', '.join(ATTACKS)}, got {name!r}")


def parse_attacks(names: str | Iterable[str] | None, name: str = "attacks") -> list[str]:
    """Attack names from a comma-separated string or a list; ``None``: the default suite.

    ``"none"`` (or ``["none"]``, or an empty list) runs no attack. An unknown name raises
    :class:`~tempfast.errors.SettingError` under ``name`` (the argument that held the list).
    """
    if names is None:
        return list(DEFAULT_ATTACKS)
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    if [n.lower() for n in names] == ["none"]:
        return []
    out = []
    for attack in names:
        if attack not in ATTACKS:
            raise SettingError(name, f"names an unknown attack {attack!r}; expected some of "
                                     f"{', '.join(ATTACKS)} (comma-separated) or none")
        if attack not in out:
            out.append(attack)
    return out

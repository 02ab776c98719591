"""White-box attacks on [0, 1] images under an L-infinity budget.

One attack = one small class, called as ``attack(x, y) -> x_adv`` (torchattacks' manner).
Every attack runs the model in eval mode while crafting (batch-norm statistics frozen) and
restores the previous mode afterwards; ``x_adv`` is detached, within ``eps`` of ``x`` in the
L-infinity norm and inside [0, 1].

Attack losses (maximised), for logits ``z`` and labels ``y``:

* ``"ce"``: ``cross_entropy(z / T, y)`` at temperature ``T`` (``T = 1``: CE on raw logits);
* ``"cw"``: the Carlini-Wagner margin ``max_{j != y} z_j - z_y``. It is invariant to a common
  scale of the logits, so a model whose logits are scaled up by a large factor (the gradient
  masking of high-temperature training and defensive distillation) cannot hide from it.
* ``"dlr"``: the Difference of Logits Ratio of Croce & Hein (2020),
  ``(max_{j != y} z_j - z_y) / (z_(1) - z_(3) + 1e-12)`` with ``z_(k)`` the k-th largest
  logit: the margin divided by a logit spread, invariant to scale and shift. Needs >= 3 classes.

The evaluation suite (:data:`ATTACKS`, built by :func:`build_attack`) names each attack:

* ``pgd-ce``: PGD on CE of the raw logits (``T = 1``);
* ``pgd-ce-t``: PGD on CE at the training temperature;
* ``pgd-cw``: PGD on the CW margin;
* ``apgd-dlr`` / ``apgd-ce``: torchattacks' APGD (Croce & Hein 2020) with the DLR / CE loss;
* ``square``: torchattacks' Square attack (Andriushchenko et al. 2020), gradient-free random
  search on the margin; it needs no gradient, so no gradient masking can stop it.

torchattacks seeds the global RNG itself; :class:`APGD` and :class:`Square` fork the RNG so the
caller's random state is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .functional import cross_entropy

LOSSES = ("ce", "cw", "dlr")
ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-cw", "apgd-dlr", "apgd-ce", "square")
DEFAULT_ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-cw", "apgd-dlr", "square")
GRADIENT_FREE = ("square",)


def margin_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example CW margin ``max_{j != y} z_j - z_y``, shape ``(N,)``.

    The true class is excluded with ``-inf`` (not by zeroing its logit, which is wrong when all
    other logits are negative).
    """
    true_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, target.unsqueeze(1), float("-inf"))
    return others.amax(dim=1) - true_logit


def dlr_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example DLR loss ``(max_{j != y} z_j - z_y) / (z_(1) - z_(3) + 1e-12)``, shape ``(N,)``.

    ``logits``: ``(N, C)`` with ``C >= 3``; ``z_(k)`` is the k-th largest logit of the row.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"dlr loss: needs at least 3 classes, got {logits.shape[1]}")
    top3 = logits.topk(3, dim=1).values
    return margin_loss(logits, target) / (top3[:, 0] - top3[:, 2] + 1e-12)


def attack_loss(name: str, logits: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-example loss ``(N,)`` of attack loss ``name`` (see the module docstring)."""
    if name == "ce":
        return cross_entropy(logits.float(), target, temperature, reduction="none")
    if name == "cw":
        return margin_loss(logits.float(), target)
    if name == "dlr":
        return dlr_loss(logits.float(), target)
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")


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
        if eps < 0:
            raise ValueError(f"eps: must be >= 0, got {eps}")
        if steps < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts: must be >= 1, got {restarts}")
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
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


def _check_budget(eps: float, restarts: int) -> None:
    if eps < 0:
        raise ValueError(f"eps: must be >= 0, got {eps}")
    if restarts < 1:
        raise ValueError(f"restarts: must be >= 1, got {restarts}")


class APGD:
    """torchattacks' APGD in the L-infinity ball, with ``loss`` ``"dlr"`` or ``"ce"`` (raw logits).

    ``steps`` iterations with the adaptive step size, ``restarts`` random restarts (the
    attack itself, not AutoAttack, whose torchattacks version runs too few iterations).
    """

    def __init__(self, model: nn.Module, eps: float, steps: int, loss: str = "dlr",
                 restarts: int = 1, seed: int = 0) -> None:
        _check_budget(eps, restarts)
        if steps < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        if loss not in ("dlr", "ce"):
            raise ValueError(f"loss: expected 'dlr' or 'ce', got {loss!r}")
        self.model, self.seed = model, int(seed)
        self._attack = _torchattacks().APGD(model, norm="Linf", eps=float(eps), steps=int(steps),
                                            n_restarts=int(restarts), seed=int(seed), loss=loss)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        with seeded(self.seed, x.device), eval_mode(self.model):
            return self._attack(x.detach(), y).detach()


class Square:
    """torchattacks' Square attack in the L-infinity ball on the margin loss, gradient-free.

    Each restart makes at most ``queries`` model queries per example.
    """

    def __init__(self, model: nn.Module, eps: float, queries: int = 1000, restarts: int = 1,
                 seed: int = 0) -> None:
        _check_budget(eps, restarts)
        if queries < 1:
            raise ValueError(f"queries: must be >= 1, got {queries}")
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
    raise ValueError(f"attack: expected one of {', '.join(ATTACKS)}, got {name!r}")

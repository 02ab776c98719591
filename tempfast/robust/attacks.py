"""The attack suite: white-box and gradient-free attacks on [0, 1] images under an L-infinity
budget, by name.

One attack = one small class, called as ``attack(x, y) -> x_adv`` (torchattacks' manner):
:class:`~tempfast.robust.pgd.PGD`, :class:`~tempfast.robust.apgd.APGD`,
:class:`~tempfast.robust.square.Square`. Every attack runs the model in eval mode while
crafting (batch-norm statistics frozen) and restores the previous mode afterwards; ``x_adv``
is detached, within ``eps`` of ``x`` in the L-infinity norm and inside [0, 1]. The losses are in
:mod:`tempfast.robust.losses`; the settings are checked by :mod:`tempfast.robust.checks`.

The evaluation suite (:data:`ATTACKS`, built by :func:`build_attack`) names each attack:

* ``pgd-ce``: PGD on CE of the raw logits (``T = 1``);
* ``pgd-ce-t``: PGD on CE at the training temperature;
* ``pgd-ce-adaptive``: PGD on CE at a per-example temperature, the logits' spread: never
  saturated, whatever the model's logit scale (the attack for a model trained at high T);
* ``pgd-cw``: PGD on the CW margin;
* ``apgd-dlr`` / ``apgd-ce``: APGD (Croce & Hein 2020) with the DLR / CE loss;
* ``pgd-targeted``: multi-targeted PGD on ``z_t - z_y`` towards each of the 3 highest other
  classes (:mod:`tempfast.robust.targeted`; not in the default suite);
* ``square``: the Square attack (Andriushchenko et al. 2020), gradient-free random search on
  the margin; no gradient masking can stop it;
* ``ta:<Name>``: torchattacks' attack ``<Name>`` (``ta:PGD``, ``ta:FAB``, ``ta:CW``...) at the
  same budget, with the optional extra (:mod:`tempfast.robust.torchattacks_adapter`).

In the evaluation every PGD keeps each example's best iterate. ``eot`` (expectation over
transformation) and ``bpda`` (straight-through preprocessing) are the evaluation's
escalations for stochastic and shattered gradients (:mod:`tempfast.robust.base`,
:mod:`tempfast.robust.bpda`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

from ..errors import SettingError
from . import torchattacks_adapter as ta
from .apgd import APGD
from .base import eval_mode, seeded
from .pgd import PGD
from .square import Square
from .targeted import MultiTargetedPGD

ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw", "apgd-dlr", "apgd-ce",
           "pgd-targeted", "square")
DEFAULT_ATTACKS = ("pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw", "apgd-dlr", "square")
GRADIENT_FREE = ("square",)
PGD_LOSSES = {"pgd-ce": "ce", "pgd-ce-t": "ce", "pgd-ce-adaptive": "ce_adaptive", "pgd-cw": "cw"}

__all__ = ["APGD", "ATTACKS", "DEFAULT_ATTACKS", "GRADIENT_FREE", "PGD", "Square",
           "build_attack", "eval_mode", "gradient_free", "parse_attacks", "seeded"]


def gradient_free(name: str) -> bool:
    """Whether attack ``name`` uses no gradient of the model (``square``, ``ta:Square``...)."""
    return name in GRADIENT_FREE or ta.is_gradient_free(name)


def build_attack(name: str, model: nn.Module, *, eps: float, alpha: float, steps: int,
                 restarts: int = 1, temperature: float = 1.0, seed: int = 0,
                 square_queries: int = 1000, eot: int = 1,
                 bpda: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """The suite's attack ``name`` (one of :data:`ATTACKS`, or ``ta:<Name>``) as a callable
    ``(x, y) -> x_adv``.

    ``alpha`` is the PGD step; APGD adapts its own. ``temperature`` is used by ``pgd-ce-t``
    only. The PGD attacks keep each example's best iterate and draw their random starts from
    the global RNG (seed it, e.g. with :func:`seeded`); APGD and Square use ``seed``. ``eot``
    and ``bpda`` apply to the gradient attacks.
    """
    if name in PGD_LOSSES:
        t = temperature if name == "pgd-ce-t" else 1.0
        return PGD(model, eps, alpha, steps, loss=PGD_LOSSES[name], temperature=t,
                   restarts=restarts, keep_best=True, eot=eot, bpda=bpda)
    if name in ("apgd-dlr", "apgd-ce"):
        return APGD(model, eps, steps, loss=name[5:], restarts=restarts, seed=seed, eot=eot,
                    bpda=bpda)
    if name == "square":
        return Square(model, eps, queries=square_queries, restarts=restarts, seed=seed)
    if name == "pgd-targeted":
        return MultiTargetedPGD(model, eps, alpha, steps, restarts=restarts, eot=eot, bpda=bpda)
    if ta.is_torchattacks(name):
        return ta.build(name, model, eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                        seed=seed, square_queries=square_queries)
    raise SettingError("attack", f"must be one of {', '.join(ATTACKS)}, got {name!r}")


def parse_attacks(names: str | Iterable[str] | None, name: str = "attacks") -> list[str]:
    """Attack names from a comma-separated string or a list; ``None``: the default suite.

    ``"none"`` (or ``["none"]``, or an empty list) runs no attack. ``ta:<Name>`` names a
    torchattacks attack (checked against the installed package). An unknown name raises
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
        if ta.is_torchattacks(attack):
            ta.attack_class(attack, name)
        elif attack not in ATTACKS:
            raise SettingError(name, f"names an unknown attack {attack!r}; expected some of "
                                     f"{', '.join(ATTACKS)}, ta:<torchattacks attack> "
                                     "(comma-separated) or none")
        if attack not in out:
            out.append(attack)
    return out

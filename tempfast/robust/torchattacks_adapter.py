"""torchattacks' attacks inside tempfast's evaluation: ``ta:<Name>`` in an attack list
(``tempfast eval --attacks pgd-ce,ta:PGD,ta:FAB``) runs ``torchattacks.<Name>`` on the same
images, at the same budget, and counts it in the same per-example worst case.

Needs the optional extra: ``pip install 'tempfast[torchattacks]'`` (torchattacks 3.5.1 pins
``requests~=2.25.1``). The adapter passes each attack the evaluation's settings that its
constructor takes: ``eps``, ``alpha``, ``steps``, ``n_restarts`` (the restarts), ``seed``,
``n_queries`` (Square's queries), ``n_classes`` (the model's, read from one forward pass) and
``norm="Linf"``; everything else keeps torchattacks' default. Its output is projected onto the
evaluation's L-infinity ball and [0, 1], so an attack of another norm (``ta:CW`` is an L2
attack) is judged at the same budget as the others: projected, it is weaker than it would be
in its own norm. EOT and BPDA are tempfast's; torchattacks' attacks run on the model as it is.

Known faults of torchattacks 3.5.1 (why tempfast has its own suite): its Square never proposes
a window on the last row and column, its CW margin is wrong for negative logits, and its
AutoAttack runs 10 iterations per sub-attack. Compare, do not rely on them for a verdict.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import SettingError
from .base import project

PREFIX = "ta:"
GRADIENT_FREE = ("Square", "OnePixel", "Pixle", "SPSA")
"""torchattacks' attacks that use no gradient of the model (SPSA estimates one from queries)."""
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
EXTRA = "pip install 'tempfast[torchattacks]'"


def is_torchattacks(name: str) -> bool:
    """Whether an attack name asks for a torchattacks attack (``ta:<Name>``)."""
    return name.startswith(PREFIX)


def is_gradient_free(name: str) -> bool:
    """Whether ``ta:<Name>`` is one of :data:`GRADIENT_FREE`."""
    return is_torchattacks(name) and name[len(PREFIX):] in GRADIENT_FREE


def _module():
    try:
        return importlib.import_module("torchattacks")
    except ImportError:
        return None


def attack_class(name: str, argument: str = "attacks") -> type:
    """The torchattacks class that ``ta:<Name>`` names.

    Raises:
        SettingError: under ``argument``: torchattacks is not installed, or has no attack of
            that name.
    """
    attack = name[len(PREFIX):]
    if not _NAME.fullmatch(attack):
        raise SettingError(argument, f"names {name!r}: expected ta:<torchattacks class>, e.g. "
                                     "ta:PGD")
    module = _module()
    if module is None:
        raise SettingError(argument, f"names {name!r}, which needs torchattacks: {EXTRA}")
    names = [n for n in getattr(module, "__all__", ()) if n[:1].isupper()]
    cls = getattr(module, attack, None) if attack in names else None
    if not isinstance(cls, type):
        raise SettingError(argument, f"names {name!r}, which torchattacks "
                                     f"{getattr(module, '__version__', '?')} does not have; it "
                                     f"has {', '.join(sorted(set(names)))}")
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "model"]
    if required or not parameters or parameters[0].name != "model":
        needs = ", ".join(required) or "more than a model"
        raise SettingError(argument, f"names {name!r}, which needs {needs}: only attacks built "
                                     "from a model and the evaluation's budget can run here")
    return cls


def build(name: str, model: nn.Module, *, eps: float, alpha: float, steps: int,
          restarts: int, seed: int, square_queries: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``ta:<Name>`` as an attack ``(x, y) -> x_adv`` (see the module docstring); ``x_adv`` is
    detached, within ``eps`` of ``x`` and inside [0, 1]."""
    cls = attack_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    offered = {"eps": eps, "alpha": alpha, "steps": steps, "n_restarts": restarts,
               "seed": seed, "n_queries": square_queries, "norm": "Linf"}
    kwargs = {key: value for key, value in offered.items() if key in parameters}
    built: dict[str, object] = {}

    def attack(x: Tensor, y: Tensor) -> Tensor:
        if "attack" not in built:
            if "n_classes" in parameters:
                with torch.no_grad():
                    kwargs["n_classes"] = int(model(x[:1]).shape[1])
            built["attack"] = cls(model, **kwargs)
        x_adv = built["attack"](x, y)
        return project(x_adv.detach().to(x.dtype), x, eps)

    return attack

"""Attack losses (maximised) for logits ``z`` ``(N, C)`` and labels ``y`` ``(N,)``, each per
example, shape ``(N,)``:

* ``"ce"``: ``cross_entropy(z / T, y)`` at temperature ``T`` (``T = 1``: CE on raw logits);
* ``"ce_adaptive"``: CE at a per-example temperature, the standard deviation of the example's
  logits (detached): ``cross_entropy(z / std(z), y)``. The rescaled logits have unit spread
  whatever the model's logit scale, so the softmax never saturates: the attack a model
  trained at high T (whose logits are about T times larger) or a defensively distilled one
  calls for, and invariant to any common scale of the logits.
* ``"cw"``: the Carlini-Wagner margin ``max_{j != y} z_j - z_y``. It is invariant to a common
  scale of the logits, so a model whose logits are scaled up by a large factor (the gradient
  masking of high-temperature training and defensive distillation) cannot hide from it.
* ``"dlr"``: the Difference of Logits Ratio of Croce & Hein (2020),
  ``(max_{j != y} z_j - z_y) / (z_(1) - z_(3) + 1e-12)`` with ``z_(k)`` the k-th largest
  logit: the margin divided by a logit spread, invariant to scale and shift. With two classes
  there is no third logit, and any scale-invariant function of the one margin is a step
  function with a zero gradient: there DLR is the CW margin.
"""

from __future__ import annotations

from torch import Tensor

from ..functional import cross_entropy

LOSSES = ("ce", "ce_adaptive", "cw", "dlr")


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

    ``logits``: ``(N, C)``; ``z_(k)`` is the k-th largest logit of the row. For ``C = 2`` the
    CW margin (see the module docstring); ``C < 2`` has no other class to reach.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"dlr loss: needs at least 2 classes, got {logits.shape[1]}")
    if logits.shape[1] == 2:
        return margin_loss(logits, target)
    top3 = logits.topk(3, dim=1).values
    return margin_loss(logits, target) / (top3[:, 0] - top3[:, 2] + 1e-12)


def attack_loss(name: str, logits: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-example loss ``(N,)`` of attack loss ``name`` (see the module docstring)."""
    if name == "ce":
        return cross_entropy(logits.float(), target, temperature, reduction="none")
    if name == "ce_adaptive":
        z = logits.float()
        scale = z.detach().std(dim=1, keepdim=True).clamp_min(1e-12)
        return cross_entropy(z / scale, target, 1.0, reduction="none")
    if name == "cw":
        return margin_loss(logits.float(), target)
    if name == "dlr":
        return dlr_loss(logits.float(), target)
    raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")

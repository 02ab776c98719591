"""Logit and gradient measurements of a trained classifier at a loss temperature T.

For logits ``z`` (N, C) of images ``x`` (N, ...) with labels ``y`` (N,), and the loss
``l_i = CE(z_i / T, y_i)`` (:func:`tempfast.cross_entropy`):

* ``logit_norm``: mean over examples of ``||z_i||_2``;
* ``margin``: mean of ``z_iy - max_{j != y} z_ij`` (negative when misclassified);
* ``logit_grad_norm``: mean of ``||dl_i / dz_i||_2``, where ``dl / dz = (softmax(z / T) - y) / T``
  (``formula_error`` is the largest absolute difference between autograd and that formula);
* ``input_grad_norm``: mean of ``||dl_i / dx_i||_2``; ``zero_input_grad``: fraction of examples
  whose input gradient is exactly zero in every pixel (fp32 underflow: gradient masking);
* ``neg_entropy``: mean entropy (nats) of the gradient weights over the negative classes,
  ``q_j = softmax(z / T)_j / sum_{k != y} softmax(z / T)_k`` for ``j != y`` (= the softmax of
  the negative logits at T); ``neg_entropy_norm`` divides it by its maximum ``ln(C - 1)``
  (1: the update is spread evenly over the negative classes, 0: on one class);
* ``p_true``: mean ``softmax(z / T)_y``.

The model runs in eval mode in fp32; every example's loss depends only on its own input, so
the gradient of the summed loss gives per-example gradients.

:func:`eps_curve` is the robust accuracy against budget: at each eps the per-example worst case
of the scale-invariant gradient attacks (PGD on CE at the adaptive temperature and on the CW
margin, APGD-DLR).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

import tempfast

MEASURES = ("logit_norm", "margin", "logit_grad_norm", "formula_error", "input_grad_norm",
            "zero_input_grad", "neg_entropy", "neg_entropy_norm", "p_true")


def _batch_measures(model: nn.Module, x: Tensor, y: Tensor,
                    temperature: float) -> tuple[dict[str, Tensor], int]:
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        logits.retain_grad()
        tempfast.cross_entropy(logits, y, temperature, reduction="sum").backward()
    z = logits.detach().double()
    onehot = torch.nn.functional.one_hot(y, z.shape[1]).bool()
    others = z.masked_fill(onehot, float("-inf"))
    formula = (torch.softmax(z / temperature, 1) - onehot.double()) / temperature
    log_q = torch.log_softmax(others / temperature, 1)
    entropy = -(log_q.exp() * log_q.masked_fill(onehot, 0.0)).sum(1)
    input_grad = x.grad.flatten(1)
    return {
        "logit_norm": z.norm(dim=1),
        "margin": z.gather(1, y[:, None]).squeeze(1) - others.amax(1),
        "logit_grad_norm": logits.grad.double().norm(dim=1),
        "formula_error": (logits.grad.double() - formula).abs().amax(1),
        "input_grad_norm": input_grad.double().norm(dim=1),
        "zero_input_grad": (input_grad.abs().amax(1) == 0).double(),
        "neg_entropy": entropy,
        "p_true": torch.softmax(z / temperature, 1).gather(1, y[:, None]).squeeze(1),
    }, z.shape[1]


def measure(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
            temperature: float) -> dict[str, float]:
    """The :data:`MEASURES` of ``model`` on ``batches`` of ``(x, y)`` at loss temperature T.

    Means over all examples (``formula_error``: the maximum). ``model`` must map [0, 1] images
    to logits ``(N, C)`` with ``C >= 3`` (the negative-class entropy needs two negatives).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    classes = None
    try:
        for x, y in batches:
            out, classes = _batch_measures(model, x, y, temperature)
            for key, value in out.items():
                parts.setdefault(key, []).append(value.detach().cpu())
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError("no examples to measure")
    result = {key: float(torch.cat(v).mean()) for key, v in parts.items()}
    result["formula_error"] = float(torch.cat(parts["formula_error"]).max())
    result["neg_entropy_norm"] = result["neg_entropy"] / math.log(classes - 1)
    return {key: result[key] for key in MEASURES}


CURVE_ATTACKS = ("pgd-ce-adaptive", "pgd-cw", "apgd-dlr")


def eps_curve(model: nn.Module, batches: list[tuple[Tensor, Tensor]], eps_values: Iterable[float],
              *, steps: int = 10, seed: int = 0) -> dict[float, float]:
    """``{eps: worst-case robust accuracy}`` over :data:`CURVE_ATTACKS` on ``batches`` (the
    evaluation's step size ``2.5 eps / steps``; each attack and eps its own seed)."""
    from tempfast.robust.attacks import build_attack, eval_mode, seeded
    from tempfast.robust.evaluation import derive_seed

    out = {}
    with eval_mode(model):
        with torch.no_grad():
            correct = [model(x).argmax(1) == y for x, y in batches]
        for eps in eps_values:
            robust = []
            for b, ((x, y), ok) in enumerate(zip(batches, correct, strict=True)):
                alive = ok.clone()
                for name in CURVE_ATTACKS:
                    idx = alive.nonzero().squeeze(1)
                    if not idx.numel():
                        break
                    attack_seed = derive_seed(seed, "curve", name, eps, b)
                    attack = build_attack(name, model, eps=eps, alpha=2.5 * eps / steps,
                                          steps=steps, seed=attack_seed)
                    with seeded(attack_seed, x.device), torch.no_grad():
                        x_adv = attack(x[idx], y[idx])
                        alive[idx] = model(x_adv).argmax(1) == y[idx]
                robust.append(alive)
            out[float(eps)] = float(torch.cat(robust).float().mean())
    return out

"""Post-hoc temperature calibration (Guo et al. 2017) and calibration metrics, on logits.

A classifier's confidence is its softmax probability ``p = softmax(z / T)``. Temperature
scaling fits the one ``T`` (or one per class) that minimises the negative log-likelihood on
held-out logits, which leaves the predictions (the argmax) unchanged and repairs
over- or under-confidence. Everything here takes logits ``(N, C)`` and labels ``(N,)`` like the
rest of the API; a ``temperature`` argument divides the logits first.

* :func:`fit_temperature`: the NLL-optimal T by L-BFGS on ``log T`` (positive by
  construction), its gradient from the fused cross-entropy's ``dL/dT``; ``per_class=True``
  fits a vector ``T_j`` dividing class ``j``'s logit;
* :func:`expected_calibration_error`: ``sum_b (n_b / N) |acc_b - conf_b|`` over ``n_bins``
  confidence bins of equal width or equal mass;
* :func:`negative_log_likelihood`, :func:`brier_score` (``mean_i sum_j (p_ij - y_ij)^2``);
* :func:`reliability_diagram`: accuracy against confidence per bin, as a PNG (the ``plot``
  extra, matplotlib).

Fit on one split and report on another: a temperature fitted on the examples it is judged on
flatters itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from . import functional

BINNINGS = ("width", "mass")


def _check(logits: Tensor, labels: Tensor) -> None:
    """The inputs, each named in its own error, before any temperature is looked at: a
    floating ``(N, C)`` ``logits`` with only finite values, ``labels`` ``(N,)`` integer class
    indices in ``[0, C)``. (Reads the values: calibration is an offline step.)"""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise ValueError("logits: expected a floating (N, C) tensor, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    if logits.shape[0] == 0:
        raise ValueError("logits: no examples to calibrate on")
    bad = int((~torch.isfinite(logits)).any(dim=1).sum())
    if bad:
        raise ValueError(f"logits: {bad} of {logits.shape[0]} rows hold NaN or infinite "
                         "values")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integer class indices, got {labels.dtype}")
    outside = (labels < 0) | (labels >= logits.shape[1])
    if bool(outside.any()):
        raise ValueError(f"labels: class index {int(labels[outside][0])} is out of range "
                         f"[0, {logits.shape[1]})")


def _scaled(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``logits / T`` in fp32 (``T`` a number, a 0-dim tensor, or one value per class)."""
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    if not bool(torch.all(torch.isfinite(t) & (t > 0))):
        raise ValueError(f"temperature: must be finite and > 0, got {t.tolist()}")
    return logits.float() / t


def fit_temperature(logits: Tensor, labels: Tensor, *, per_class: bool = False,
                    max_iter: int = 100) -> Tensor:
    """The temperature minimising ``NLL(softmax(logits / T), labels)``.

    Args:
        logits: ``(N, C)`` held-out logits (detached; any floating dtype).
        labels: ``(N,)`` class indices.
        per_class: fit one temperature per class (``(C,)``), dividing each class's logit.
        max_iter: L-BFGS iterations (strong-Wolfe line search) on ``log T``.

    Returns:
        a 0-dim fp32 tensor ``T`` (or ``(C,)`` with ``per_class``), on the logits' device.
    """
    _check(logits, labels)
    z = logits.detach().float()
    log_t = torch.zeros(z.shape[1] if per_class else (), device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> Tensor:
        opt.zero_grad()
        if per_class:
            loss = functional.cross_entropy(z / log_t.exp(), labels)
        else:  # the fused kernel's dL/dT, through T = exp(log T)
            loss = functional.cross_entropy(z, labels, log_t.exp())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(nll)
    return log_t.detach().exp()


def negative_log_likelihood(logits: Tensor, labels: Tensor,
                            temperature: float | Tensor = 1.0) -> Tensor:
    """Mean ``-log p_y`` of ``softmax(logits / T)`` (a 0-dim fp32 tensor)."""
    _check(logits, labels)
    return functional.cross_entropy(_scaled(logits, temperature), labels).detach()


def brier_score(logits: Tensor, labels: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Mean over examples of ``sum_j (p_j - [j = y])^2`` (a 0-dim fp32 tensor; 0 is perfect,
    2 the worst)."""
    _check(logits, labels)
    p = functional.softmax(_scaled(logits, temperature)).detach()
    onehot = torch.nn.functional.one_hot(labels.long(), p.shape[1]).to(p.dtype)
    return (p - onehot).pow(2).sum(1).mean()


def calibration_bins(logits: Tensor, labels: Tensor, n_bins: int = 15, *,
                     temperature: float | Tensor = 1.0,
                     binning: str = "width") -> tuple[Tensor, Tensor, Tensor]:
    """``(counts, confidence, accuracy)`` per bin, each ``(n_bins,)``: the number of examples
    whose top probability falls in the bin, their mean top probability and their accuracy (0
    where a bin is empty). ``binning="width"``: bins of equal width on [0, 1]; ``"mass"``:
    bins holding (nearly) equal numbers of examples."""
    _check(logits, labels)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected an int >= 1, got {n_bins!r}")
    if binning not in BINNINGS:
        raise ValueError(f"binning: expected one of {BINNINGS}, got {binning!r}")
    p = functional.softmax(_scaled(logits, temperature)).detach()
    confidence, prediction = p.max(1)
    correct = (prediction == labels).float()
    n = confidence.numel()
    if binning == "width":
        index = (confidence * n_bins).long().clamp_(max=n_bins - 1)
    else:
        rank = torch.empty(n, dtype=torch.long, device=p.device)
        rank[confidence.argsort()] = torch.arange(n, device=p.device)
        index = (rank * n_bins // n).clamp_(max=n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    safe = counts.clamp(min=1)
    return counts, conf_sum / safe, acc_sum / safe


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15, *,
                               temperature: float | Tensor = 1.0,
                               binning: str = "width") -> Tensor:
    """``sum_b (n_b / N) |acc_b - conf_b|`` over ``n_bins`` bins of the top probability of
    ``softmax(logits / T)`` (a 0-dim fp32 tensor in [0, 1]; see :func:`calibration_bins`)."""
    counts, confidence, accuracy = calibration_bins(logits, labels, n_bins,
                                                    temperature=temperature, binning=binning)
    return (counts / counts.sum() * (accuracy - confidence).abs()).sum()


def reliability_diagram(logits: Tensor, labels: Tensor, path: str | Path, n_bins: int = 15, *,
                        temperature: float | Tensor = 1.0, title: str | None = None) -> Path:
    """Write a reliability diagram (accuracy against confidence per equal-width bin, with the
    diagonal of perfect calibration and the ECE in the legend) to ``path`` as PNG.

    Raises:
        ImportError: matplotlib is missing (``pip install 'tempfast[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("reliability_diagram needs matplotlib: pip install "
                          "'tempfast[plot]'") from exc
    counts, confidence, accuracy = calibration_bins(logits, labels, n_bins,
                                                    temperature=temperature)
    ece = float(expected_calibration_error(logits, labels, n_bins, temperature=temperature))
    edges = torch.linspace(0, 1, n_bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).numpy()
    filled = (counts > 0).cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centres[filled], accuracy.cpu().numpy()[filled], width=1 / n_bins,
           edgecolor="black", alpha=0.7, label=f"accuracy (ECE {ece:.3f})")
    ax.plot(confidence.cpu().numpy()[filled], accuracy.cpu().numpy()[filled], "o",
            color="tab:red", markersize=3, label="mean confidence of the bin")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def calibrate(fit_logits: Tensor, fit_labels: Tensor, report_logits: Tensor,
              report_labels: Tensor, *, n_bins: int = 15,
              temperature: float | None = None) -> dict:
    """Fit T on one split (or take ``temperature``, fitted before) and report on the other: a
    JSON-able dict with ``temperature``, ``fit_examples``, ``report_examples`` and, on the
    report split, ``ece_before``, ``ece_after``, ``nll_before``, ``nll_after``,
    ``brier_before``, ``brier_after``, ``accuracy`` (which the temperature does not change)."""
    t = fit_temperature(fit_logits, fit_labels) if temperature is None else torch.tensor(
        float(temperature))
    out = {"temperature": float(t), "fit_examples": int(fit_labels.numel()),
           "report_examples": int(report_labels.numel())}
    for when, temp in (("before", 1.0), ("after", t)):
        out[f"ece_{when}"] = float(expected_calibration_error(report_logits, report_labels,
                                                              n_bins, temperature=temp))
        out[f"nll_{when}"] = float(negative_log_likelihood(report_logits, report_labels, temp))
        out[f"brier_{when}"] = float(brier_score(report_logits, report_labels, temp))
    out["accuracy"] = float((report_logits.argmax(1) == report_labels).float().mean())
    return out

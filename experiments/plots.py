"""PNG plots of the sweep (matplotlib, the optional ``plot`` extra; Agg backend, no display).

Every curve is a mean over seeds against the training temperature on a log2 axis, with error
bars of one standard deviation (:mod:`experiments.claims`); learned-temperature runs are drawn
as separate markers at their mean final T.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .claims import cells, learned

MODE_LABELS = {"none": "standard training", "pgd": "PGD adversarial training"}
MODE_COLOURS = {"none": "tab:blue", "pgd": "tab:red"}


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log2_axis(ax, temps: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(temps)
    ax.set_xticklabels([f"{t:g}" for t in temps])
    ax.set_xlabel("training temperature T")
    ax.grid(alpha=0.3)


def _curve(ax, rows: list[dict], metric: str, adv: str, **style) -> list[float]:
    cs = cells(rows, metric, adv)
    if cs:
        ax.errorbar([c.temp for c in cs], [c.mean for c in cs], yerr=[c.std for c in cs],
                    capsize=3, marker="o", markersize=4, **style)
    return [c.temp for c in cs]


def _learned_points(ax, rows: list[dict], metric: str, adv: str, colour: str) -> None:
    for t0 in sorted({r["temp"] for r in rows if r["adv"] == adv and r["learn_temp"]}):
        y, t = learned(rows, metric, adv, t0), learned(rows, "final_temp", adv, t0)
        if y is not None and t is not None:
            ax.errorbar([t.mean], [y.mean], xerr=[t.std], yerr=[y.std], marker="*",
                        markersize=12, linestyle="none", color=colour, capsize=3,
                        label=f"{MODE_LABELS[adv]}, learned T from {t0:g}")


def _modes(rows: list[dict]) -> list[str]:
    return [m for m in MODE_LABELS if any(r["adv"] == m for r in rows)]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def metric_figure(rows: list[dict], metric: str, ylabel: str, title: str, path: Path,
                  percent: bool = True) -> None:
    """One metric against T, one line per training mode, learned-T runs as stars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    temps: set[float] = set()
    for adv in _modes(rows):
        temps.update(_curve(ax, rows, metric, adv, label=MODE_LABELS[adv],
                            color=MODE_COLOURS[adv]))
        _learned_points(ax, rows, metric, adv, MODE_COLOURS[adv])
    _log2_axis(ax, sorted(temps))
    if percent:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def panels_figure(rows: list[dict], series: list[tuple[str, str]], ylabel: str, title: str,
                  path: Path, percent: bool = True,
                  ylim: tuple[float, float] | None = None) -> None:
    """One panel per training mode; in each, one line per ``(column, label)`` of ``series``
    (``ylim``: fixed y range, e.g. the whole [0, 1] of a fraction)."""
    plt = _pyplot()
    modes = _modes(rows)
    fig, axes = plt.subplots(1, len(modes), figsize=(5.6 * len(modes), 4.2), squeeze=False,
                             sharey=True)
    for ax, adv in zip(axes[0], modes, strict=True):
        temps: set[float] = set()
        for column, label in series:
            bold = column == "worst_case_acc"
            temps.update(_curve(ax, rows, column, adv, label=label,
                                color="black" if bold else None, linewidth=2.5 if bold else 1.2))
        _log2_axis(ax, sorted(temps))
        if percent:
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(MODE_LABELS[adv])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def logits_figure(rows: list[dict], path: Path) -> None:
    """Logit norm, margin and logit-gradient norm at the training T, against T."""
    plt = _pyplot()
    panels = (("logit_norm", "mean logit norm ||z||", True),
              ("margin", "mean margin z_y - max_{j!=y} z_j", False),
              ("logit_grad_norm_at_T", "mean ||dCE(z/T)/dz|| at the training T", True))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (column, label, log) in zip(axes, panels, strict=True):
        temps: set[float] = set()
        for adv in _modes(rows):
            temps.update(_curve(ax, rows, column, adv, label=MODE_LABELS[adv],
                                color=MODE_COLOURS[adv]))
        _log2_axis(ax, sorted(temps))
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("Final models on the test images")
    _save(fig, path)
    plt.close(fig)


def gradient_figure(rows: list[dict], path: Path) -> None:
    """gradients.csv: logit- and input-gradient norms and negative-class entropy against the
    loss temperature, one line per model; a dashed ``1/T`` reference."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    temps = sorted({r["temperature"] for r in rows})
    panels = (("logit_grad_norm", "mean ||dCE(z/T)/dz||", True),
              ("input_grad_norm", "mean ||dCE(z/T)/dx||", True),
              ("neg_entropy_norm", "negative-class weight entropy / ln(C-1)", False))
    for ax, (column, label, log) in zip(axes, panels, strict=True):
        for model in dict.fromkeys(r["model"] for r in rows):
            rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["temperature"])
            ax.plot([r["temperature"] for r in rs], [r[column] for r in rs], marker="o",
                    markersize=4, label=model)
        if column == "logit_grad_norm":
            top = max(r[column] for r in rows if r["temperature"] == temps[-1])
            ax.plot(temps, [top * temps[-1] / t for t in temps], "k--", linewidth=0.8,
                    label="1/T reference")
        _log2_axis(ax, temps)
        ax.set_xlabel("loss temperature T")
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("Gradient of CE(z/T) on fixed trained models")
    _save(fig, path)
    plt.close(fig)


def curve_figure(rows: list[dict], path: Path) -> None:
    """Standard training: worst-case robust accuracy against eps, one line per training T
    (means over seeds of the ``eps_curve`` column)."""
    from .table import parse_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    runs = [r for r in rows if r["adv"] == "none" and not r["learn_temp"] and r["eps_curve"]]
    for t in sorted({r["temp"] for r in runs}):
        curves = [parse_curve(r["eps_curve"]) for r in runs if r["temp"] == t]
        eps = sorted({e for c in curves for e in c})
        ax.plot(eps, [sum(c[e] for c in curves if e in c) / sum(e in c for c in curves)
                      for e in eps], marker="o", markersize=4, label=f"T = {t:g}")
    ax.set_xlabel("eps (L-inf, [0, 1] pixels)")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    ax.set_ylabel("worst-case robust accuracy")
    ax.set_title("Standard training: robustness against the budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)

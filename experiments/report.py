"""Turn a sweep's ``results.csv`` into ``REPORT.md`` and PNG plots.

    python -m experiments.report experiments/results/digits

Every number in the report is read from ``DIR/results.csv`` (and ``DIR/gradients.csv`` when
the gradient analysis ran): tables of mean +- standard deviation over seeds per training mode
and temperature, the paper's claims one by one with a verdict from the rules of
:mod:`experiments.claims`, kept apart by attack family ("PGD with CE on raw logits" versus the
adaptive attacks) with the gradient-masking diagnostics beside them, the learned-temperature
arm, and the gradient mechanism. Plots (matplotlib, the optional ``plot`` extra) go next to
the report; without matplotlib the report is written without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from pathlib import Path

from tempfast.train.checkpoint import atomic_write_text

from . import claims, gradients, plots, table
from .claims import Cell, Verdict, cells, judge_difference, learned, versus_t1
from .rows import COMPENSATION_TAGS

ATTACK_LABELS = {
    "robust_pgd_ce": "PGD, CE on raw logits (T = 1)",
    "robust_pgd_ce_t": "PGD, CE at the training T",
    "robust_pgd_ce_adaptive": "PGD, CE at the adaptive temperature",
    "robust_pgd_cw": "PGD, CW margin",
    "robust_apgd_dlr": "APGD, DLR",
    "robust_apgd_ce": "APGD, CE on raw logits",
    "robust_square": "Square (gradient-free)",
    "worst_case_acc": "worst case (per example, all attacks)",
}
PERTURBATION_LABELS = dict(zip(table.PERTURBATION_COLUMNS,
                               ("rotation", "translation", "scaling", "elastic deformation"),
                               strict=True))
SHORT_LABELS = {
    "test_acc": "clean (test set)", "clean_acc": "clean", "corruption_acc": "corruptions",
    "perturbation_acc": "perturbations",
    "robust_pgd_ce": "pgd-ce",
    "robust_pgd_ce_t": "pgd-ce-t", "robust_pgd_ce_adaptive": "pgd-ce-adaptive",
    "robust_pgd_cw": "pgd-cw", "robust_apgd_dlr": "apgd-dlr",
    "robust_apgd_ce": "apgd-ce", "robust_square": "square", "worst_case_acc": "worst case",
}
METRIC_LABELS = {"test_acc": "clean accuracy (whole test set)", "clean_acc": "clean accuracy",
                 "corruption_acc": "mean corruption accuracy",
                 "perturbation_acc": "mean natural-perturbation accuracy",
                 **{k: f"{v} accuracy" for k, v in PERTURBATION_LABELS.items()},
                 **ATTACK_LABELS}
# Metrics measured on the whole test set (or ``shift_examples`` images) when the run asked for
# it, not on the attacks' ``eval_examples``.
SHIFT_METRICS = ("corruption_acc", "perturbation_acc", *PERTURBATION_LABELS)
ADAPTIVE = ("robust_pgd_ce_t", "robust_pgd_ce_adaptive", "robust_pgd_cw", "robust_apgd_dlr",
            "robust_square")
ARM_LABELS = {"none": "plain CE(z / T) at one learning rate (the paper's setting)",
              "loss": "loss x T: the step size kept at T = 1's, only the direction changes",
              "lr": "learning rate x T, weight decay / T (SGD)"}
PLOTS = {
    "accuracy_vs_T.png": "clean accuracy",
    "corruption_vs_T.png": "mean corruption accuracy",
    "robust_vs_T.png": "robust accuracy per attack",
    "zero_grad_vs_T.png": "fraction of exactly-zero input gradients",
    "logits_vs_T.png": "logit norm, margin and logit-gradient norm",
    "gradients.png": "gradient mechanism on fixed trained models",
}


# What each masking check's reason says, by a phrase it contains (tempfast.robust.masking).
REASON_KINDS = (("had not converged", "attack not converged (more steps or restarts found more)"),
                ("exactly zero", "exactly-zero input gradients"),
                ("CE saturates", "CE far above the scale-invariant attacks"),
                ("with eps", "accuracy rises with eps"),
                ("still", "accuracy still high at a large eps"),
                ("gradient-free square", "Square beats every white-box attack"),
                ("square alone", "examples broken by Square alone"))


def reason_counts(rows: list[dict]) -> dict[str, int]:
    """Runs whose evaluation gave each kind of masking reason (``masking_reasons``)."""
    counts: dict[str, int] = {}
    for r in rows:
        text = r["masking_reasons"] or ""
        for phrase, label in REASON_KINDS:
            if phrase in text:
                counts[label] = counts.get(label, 0) + 1
    return counts


def pct(cell: Cell | None) -> str:
    """``mean ± std`` in percent (``-`` when not measured)."""
    if cell is None:
        return "-"
    return f"{100 * cell.mean:.1f} ± {100 * cell.std:.1f}"


def num(cell: Cell | None) -> str:
    """``mean ± std`` with 3 significant digits."""
    if cell is None:
        return "-"
    return f"{cell.mean:.3g} ± {cell.std:.2g}"


def _cell_at(cs: list[Cell], t: float) -> Cell | None:
    return next((c for c in cs if c.temp == t), None)


def _masking_at(rows: list[dict], adv: str, t: float) -> str:
    rs = [r for r in rows if r["adv"] == adv and not r["learn_temp"] and r["temp"] == t
          and r["masking_kind"] is not None]
    if not rs:
        return "not measured"
    flagged = [r for r in rs if r["masking_kind"] != "none"]
    kinds = sorted({r["masking_kind"] for r in flagged})
    zero = cells([r for r in rs if r["zero_grad_ce"] is not None], "zero_grad_ce", adv)
    out = f"masking flagged in {len(flagged)}/{len(rs)} runs"
    if kinds:
        out += f" ({', '.join('CE only' if k == 'ce' else 'general' for k in kinds)})"
    if zero:
        out += f"; zero raw-CE input gradients on {pct(zero[0])}% of inputs"
    return out


def _verdict_line(v: Verdict, rows: list[dict], adv: str, metric: str) -> str:
    if v.label == "not measured":
        return "**not measured** (needs T = 1 and some T > 1)"
    images = ("" if v.images is None else
              f", {v.images:+.1f} of {_n_images(rows, metric)} test images")
    overall = claims.best_cell(cells(rows, metric, adv))
    elsewhere = ("" if overall.temp in (v.best.temp, 1.0) else
                 f"; the best T of the whole grid is T = {overall.temp:g} ({pct(overall)}%)")
    return (f"**{v.label}**: best T > 1 is T = {v.best.temp:g} with {pct(v.best)}% vs "
            f"{pct(v.base)}% at T = 1 (difference {100 * v.diff:+.2f} points{images}; "
            f"{_test_label(v)}: p = {v.p:.3g}, {v.p_holm:.3g} after Holm's correction over "
            f"{v.comparisons} temperatures; {_test_extras(v)}); at T = {v.best.temp:g}: "
            f"{_masking_at(rows, adv, v.best.temp)}"
            f"{elsewhere}{_well_trained_check(rows, metric, adv, v)}")


def _test_label(v: Verdict) -> str:
    if v.test == "welch":
        return f"Welch t ({v.df:.1f} df)"
    if v.test == "borrowed":
        return f"t, one seed, the other cell's spread ({v.df:.0f} df)"
    return "binomial floor"


def _test_extras(v: Verdict) -> str:
    """The deciding test's minimum detectable effect and the trend test."""
    out = f"detectable {100 * v.mde:.1f} pts"
    if v.trend is not None and math.isfinite(v.trend.se):
        per_doubling = 100 * v.trend.effect * math.log(2)
        out += f"; trend {per_doubling:+.2f} pts per doubling of T, p {v.trend.p:.2g}"
    if v.paired is not None:
        name = {"cluster_bootstrap": "paired (seed, image) bootstrap",
                "mcnemar": "paired McNemar (one seed)"}[v.paired.name]
        out += f"; {name} {100 * v.paired.effect:+.1f} pts, p {v.paired.p:.2g}"
    return out


def statistics_text(v: Verdict) -> str:
    """The deciding test of a verdict, its p-values, its minimum detectable effect (80%
    power at the Holm level) and the trend test: ``Welch t (2.6 df): p 0.054, 0.16 Holm;
    detectable 14 pts; trend +1.2 pts per doubling of T, p 0.3``."""
    if v.label == "not measured":
        return "-"
    return f"{_test_label(v)}: p {v.p:.2g}, {v.p_holm:.2g} Holm; {_test_extras(v)}"


def _n_images(rows: list[dict], metric: str = "clean_acc") -> int | None:
    """Test images behind each run's value of ``metric``: the whole test set for
    ``test_acc``, ``shift_examples`` for corruptions and perturbations where the run recorded
    it (older CSVs did not: they used the evaluation's images), the final evaluation's
    ``n_examples`` for the rest."""
    def images(r: dict) -> int | None:
        if metric == "test_acc":
            return r["n_test"]
        if metric in SHIFT_METRICS and r.get("shift_examples"):
            return r["shift_examples"]
        return r["eval_examples"]

    found = [n for n in map(images, rows) if n]
    return min(found) if found else None


def _versus(rows: list[dict], metric: str, adv: str) -> Verdict:
    """The verdict of ``metric`` in mode ``adv``, inconclusive where its deciding cell or
    T = 1 is under-trained (:func:`experiments.claims.honest`)."""
    v = versus_t1(cells(rows, metric, adv), _n_images(rows, metric))
    if v.best is not None:
        v = dataclasses.replace(v, paired=claims.paired(rows, metric, adv, v.best.temp))
    return claims.honest(v, {c.temp for c in claims.underfit(rows, adv)})


def _verdict_cell(v: Verdict) -> str:
    """A verdict in a table cell: the label, then the deciding cell against T = 1."""
    if v.best is None:
        return v.label
    return f"{v.label}: T = {v.best.temp:g} {pct(v.best)}% vs {pct(v.base)}%"


def _fmt_t(t: float) -> str:
    return f"{t:g}"


def setup_section(rows: list[dict]) -> list[str]:
    def values(key: str) -> str:
        found = sorted({r[key] for r in rows if r[key] is not None}, key=str)
        return ", ".join(str(v) for v in found) or "-"

    temps = sorted({r["temp"] for r in rows if not r["learn_temp"]})
    seeds = sorted({r["seed"] for r in rows})
    learn = sorted({r["temp"] for r in rows if r["learn_temp"]})
    compute = sum(r["process_s"] or r["wall_time_s"] or 0.0 for r in rows)
    flagged = [r for r in rows if r["masking_kind"] not in (None, "none")]
    ce_only = sum(r["masking_kind"] == "ce" for r in flagged)
    commands = sorted({r["sweep_command"] for r in rows if r["sweep_command"]})
    arms = [ARM_LABELS.get(a, a) for a in compensation_arms(rows)]
    return [
        "## Setup (read from the CSV)",
        "",
        f"- data: {values('data')}; model: {values('model')}; training per mode: "
        + "; ".join(_training_budget(rows, m) for m in _modes(rows)),
        f"- arms: {'; '.join(arms)}",
        f"- environment: torch {values('torch_version')}, triton {values('triton_version')}, "
        f"{values('device_kind')}, {values('threads')} thread(s) per run",
        f"- training modes: {', '.join(plots.MODE_LABELS[m] for m in _modes(rows))}",
        f"- fixed temperatures: {', '.join(map(_fmt_t, temps))}; seeds: "
        f"{', '.join(map(str, seeds))} ({len(seeds)} per cell)",
        "- learned-temperature arm: "
        + (f"T learned from T0 = {', '.join(map(_fmt_t, learn))}" if learn else "not run"),
        f"- final evaluation (`tempfast train`'s short suite on the last model): eps "
        f"{values('eps')} (L-inf, [0, 1] pixels), {values('eval_examples')} test images, "
        f"{values('eval_steps')} PGD/APGD steps, {values('eval_restarts')} restart(s), "
        f"Square {values('square_queries')} queries",
        f"- runs: {len(rows)}; summed run time {compute / 60:.1f} min (runs may have run "
        f"side by side){_elapsed(rows)}",
        f"- gradient masking flagged in {len(flagged)} of {len(rows)} runs ({ce_only} CE only, "
        f"{len(flagged) - ce_only} general); runs per reason: "
        + ("; ".join(f"{k}: {v}" for k, v in reason_counts(flagged).items()) or "-")
        + ". A flag escalates the evaluation (more Square queries and restarts), whose attacks "
        "count in the worst case",
        f"- code revision(s): {values('git_rev')}",
        "- sweep command(s): " + ("; ".join(f"`{c}`" for c in commands) or "-"),
        "- each run's exact `tempfast train` command is in the CSV column `command`",
        "",
    ]


def _training_budget(rows: list[dict], adv: str) -> str:
    """``standard training: 6000 images x 3 epochs`` for one training mode (``all images``
    where the runs used the whole training set)."""
    mode = [r for r in rows if r["adv"] == adv]
    subsets = sorted({r["train_subset"] for r in mode if r["train_subset"] is not None})
    epochs = sorted({r["epochs"] for r in mode if r["epochs"] is not None})
    images = ", ".join(f"{n}" for n in subsets) + " images" if subsets else "all images"
    return f"{plots.MODE_LABELS[adv]}: {images} x {', '.join(map(str, epochs)) or '-'} epochs"


def _elapsed(rows: list[dict]) -> str:
    """``; X min from the first run's start to the last run's end`` from ``finished_at`` and
    ``process_s`` (empty when a row lacks them)."""
    import datetime

    spans = []
    for r in rows:
        if not (r["finished_at"] and r["process_s"] is not None):
            return ""
        end = datetime.datetime.fromisoformat(r["finished_at"])
        spans.append((end - datetime.timedelta(seconds=r["process_s"]), end))
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return f"; {(end - start).total_seconds() / 60:.1f} min from the first run's start to the " \
           "last run's end"


def compensation_arms(rows: list[dict]) -> list[str]:
    """The compensation arms of the sweep, the paper's (``none``) first."""
    found = {r["compensation"] or "none" for r in rows}
    return [a for a in ("none", "loss", "lr") if a in found]


def arm_rows(rows: list[dict], arm: str) -> list[dict]:
    """The rows of one arm. A fixed T = 1 is the same run in every arm (the compensation
    multiplies by 1): the sweep runs it once, and every arm compares with it."""
    own = [r for r in rows if (r["compensation"] or "none") == arm]
    shared = [r for r in rows if r["temp"] == 1.0 and not r["learn_temp"]
              and (r["compensation"] or "none") != arm
              and not any(o["temp"] == 1.0 and not o["learn_temp"] and o["adv"] == r["adv"]
                          for o in own)]
    return own + shared


def _modes(rows: list[dict]) -> list[str]:
    return [m for m in plots.MODE_LABELS if any(r["adv"] == m for r in rows)]


def _n_seeds(rows: list[dict]) -> int:
    counts: dict[tuple, int] = {}
    for r in rows:
        key = (r["adv"], r["temp"], r["learn_temp"])
        counts[key] = counts.get(key, 0) + 1
    return min(counts.values())


def claim_sections(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The claim-by-claim text and the rows of the verdict summary table."""
    text: list[str] = []
    summary: list[list[str]] = []

    def summarise(claim: str, adv: str, metric_label: str, family: str, v: Verdict) -> None:
        summary.append([claim, plots.MODE_LABELS[adv], metric_label, family, v.label,
                        "-" if v.best is None else
                        f"T = {v.best.temp:g}: {pct(v.best)} vs {pct(v.base)}",
                        statistics_text(v)])

    def verdict(claim: str, adv: str, metric: str, family: str) -> Verdict:
        v = _versus(rows, metric, adv)
        summarise(claim, adv, METRIC_LABELS[metric], family, v)
        return v

    def attack_table(adv: str) -> list[str]:
        out = ["| attack | family | verdict (best T > 1 vs T = 1) |", "| --- | --- | --- |"]
        for metric in ("robust_pgd_ce", *ADAPTIVE, "worst_case_acc"):
            v = _versus(rows, metric, adv)
            family = "raw-logit CE" if metric == "robust_pgd_ce" else "adaptive"
            out.append(f"| {ATTACK_LABELS[metric]} | {family} | {_verdict_cell(v)} |")
        return out

    def robustness(adv: str, claim: str) -> None:
        raw = verdict(claim, adv, "robust_pgd_ce", "PGD with CE on raw logits")
        adaptive = verdict(claim, adv, "worst_case_acc", "adaptive attacks (worst case)")
        text.extend([
            f"- PGD with CE on raw logits: {_verdict_line(raw, rows, adv, 'robust_pgd_ce')}",
            f"- adaptive attacks (CE at the training T and at the adaptive temperature, CW "
            f"margin, APGD-DLR, Square; the per-example worst case over the whole suite and the "
            f"diagnostics' runs): "
            f"{_verdict_line(adaptive, rows, adv, 'worst_case_acc')}",
        ])
        if raw.best is not None:
            worst = _cell_at(cells(rows, "worst_case_acc", adv), raw.best.temp)
            text.append(f"- at the temperature that looks best under raw-logit PGD (T = "
                        f"{raw.best.temp:g}) the worst case over all attacks is {pct(worst)}%")
        if raw.label == "supported" and adaptive.label != "supported":
            text.append("- reading (rule: raw-logit PGD supports, the adaptive attacks do "
                        "not): the gain seen by PGD on raw-logit CE does not survive adaptive "
                        "attacks; it comes from the attack failing (gradient masking), not "
                        "from robustness.")
        elif raw.label == "supported":
            text.append("- reading: the gain holds against the adaptive attacks as well.")
        text.extend(["", *attack_table(adv), ""])

    clean = claims.clean_metric(rows)
    text += ["## Claims of arXiv 2502.20604, one by one", ""]
    if "none" in _modes(rows):
        text += ["### Claim 1: moderate temperatures give better accuracy than T = 1", ""]
        v = verdict("1", "none", clean, "clean")
        text += [f"- standard training, {METRIC_LABELS[clean]}: "
                 f"{_verdict_line(v, rows, 'none', clean)}", ""]
        shifted = bool(cells(rows, "perturbation_acc", "none"))
        text += ["### Claim 2: elevated temperatures improve robustness to common "
                 "corruptions" + (" and natural perturbations" if shifted else ""), ""]
        v = verdict("2", "none", "corruption_acc", "corruptions")
        text += [f"- standard training, mean accuracy over the corruption suite: "
                 f"{_verdict_line(v, rows, 'none', 'corruption_acc')}", ""]
        if shifted:
            text += perturbation_section(rows, verdict)
        text += ["### Claim 3: elevated temperatures improve robustness to untargeted PGD "
                 "(standard training)", ""]
        robustness("none", "3")
        for e, v, _ in curve_verdicts(rows):
            summarise("3", "none", f"worst case at eps {e:g} (eps curve)",
                      "scale-invariant attacks", v)
    if "pgd" in _modes(rows):
        text += ["### Claim 4: higher temperatures can improve PGD adversarial training", ""]
        v = verdict("4", "pgd", clean, "clean")
        text.append(f"- PGD training, {METRIC_LABELS[clean]}: "
                    f"{_verdict_line(v, rows, 'pgd', clean)}")
        robustness("pgd", "4")
    return text, summary


def perturbation_section(rows: list[dict], verdict) -> list[str]:
    """Claim 2's natural perturbations (rotation, translation, scaling, elastic deformation,
    :mod:`tempfast.robust.perturbations`): the verdict of their mean (a row of the summary,
    through ``verdict``) and one per kind, each by the claims' rule."""
    v = verdict("2", "none", "perturbation_acc", "natural perturbations")
    out = [f"- standard training, mean accuracy over the natural perturbations (every kind "
           f"and strength): {_verdict_line(v, rows, 'none', 'perturbation_acc')}", "",
           "| perturbation | verdict (best T > 1 vs T = 1) | test |", "| --- | --- | --- |"]
    for metric, label in PERTURBATION_LABELS.items():
        if not cells(rows, metric, "none"):
            continue
        k = _versus(rows, metric, "none")
        out.append(f"| {label} (mean over strengths) | {_verdict_cell(k)} | "
                   f"{statistics_text(k)} |")
    return [*out, ""]


def _optimiser(rows: list[dict]) -> str:
    """The optimiser the runs trained with: ``--opt`` in their ``tempfast train`` commands
    (``sgd``, the trainer's default, where absent; ``mixed`` if the runs differ)."""
    names = set()
    for r in rows:
        args = shlex.split(r.get("command") or "")
        names.add(args[args.index("--opt") + 1] if "--opt" in args[:-1] else "sgd")
    return names.pop() if len(names) == 1 else "mixed"


def _underfit_reason(rows: list[dict], weak: list[claims.Cell], best: claims.Cell) -> str:
    """Why the under-trained cells are weak, where the arm says: in the plain arm with SGD the
    1/T gradient scale at one learning rate; AdamW's update does not follow the gradient's
    scale, so there the reason is the T-fold logit growth the models need; a compensated arm
    holds the step size at T = 1's, so the 1/T reason does not apply there."""
    compensated = any((r["compensation"] or "none") != "none" for r in rows
                      if r["temp"] != 1.0 or r["learn_temp"])
    if compensated:
        return (": the step size is held at T = 1's in this arm, so this is not the 1/T "
                "slow-down of the plain arm")
    if not all(c.temp > best.temp for c in weak):
        return ""
    optimiser = _optimiser(rows)
    if optimiser == "adamw":
        return (": AdamW's update does not shrink with the 1/T gradient scale, but at large T "
                "the logits must grow about T-fold with updates of a fixed size, which takes "
                "more steps than the budget gave")
    if optimiser == "sgd":
        return (": with the same learning rate at every T, the 1/T gradient scale slows "
                "training at large T and leaves these models unfinished")
    return ""


def _under_trained_rule(rows: list[dict], adv: str) -> str:
    """The under-training rule that applies to ``adv``'s cells, in words."""
    rule = f"more than {100 * claims.UNDERFIT_GAP:g} points below the mode's best cell"
    reference = claims.converged_reference(rows, adv)
    if reference is None:
        return rule
    return (f"{rule} or more than {100 * claims.ABSOLUTE_GAP:g} points below "
            f"{100 * reference:.4g}%, the converged accuracy of this model and data")


def mode_table(rows: list[dict], adv: str) -> list[str]:
    judged = claims.clean_metric(rows)
    first = ("test_acc",) if judged == "test_acc" else ()
    shifts = ("corruption_acc",
              *(("perturbation_acc",) if cells(rows, "perturbation_acc", adv) else ()))
    metrics = [(m, SHORT_LABELS[m]) for m in (*first, "clean_acc", *shifts,
                                              "robust_pgd_ce", *ADAPTIVE, "worst_case_acc")]
    columns = {key: cells(rows, key, adv) for key, _ in metrics}
    temps = sorted({c.temp for cs in columns.values() for c in cs})
    head = ["T", *(label for _, label in metrics), "masked runs", "zero CE grad",
            "logit norm", "margin"]
    weak = claims.underfit(rows, adv)
    best = claims.best_cell(cells(rows, judged, adv))
    note = [] if not weak else [
        f"**Under-trained:** at T = {', '.join(f'{c.temp:g}' for c in weak)} the mean clean "
        f"accuracy{' on the whole test set' if judged == 'test_acc' else ''} "
        f"({', '.join(pct(c) + '%' for c in weak)}) is {_under_trained_rule(rows, adv)} "
        f"(the best cell: T = {best.temp:g}, {pct(best)}%)"
        + _underfit_reason(rows, weak, best)
        + ". Their robust accuracies describe weak classifiers, not a robustness effect of T.",
        ""]
    out = [f"### {plots.MODE_LABELS[adv]}", "", *note, *plateau_note(rows, adv),
           "Accuracies in % (mean ± std over seeds); *clean (test set)*: the last epoch's "
           "on the whole test set, *clean* and the rest: the final evaluation's test images; "
           "*masked runs*: runs whose evaluation "
           "flagged gradient masking (CE only / general); *zero CE grad*: % of correctly "
           "classified test inputs whose raw-logit CE input gradient is exactly zero.", "",
           "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    extra = {key: cells(rows, key, adv) for key in ("zero_grad_ce", "logit_norm", "margin")}
    for t in temps:
        rs = [r for r in rows if r["adv"] == adv and not r["learn_temp"] and r["temp"] == t]
        ce = sum(r["masking_kind"] == "ce" for r in rs)
        general = sum(r["masking_kind"] == "general" for r in rs)
        out.append("| " + " | ".join([
            f"{t:g}", *(pct(_cell_at(columns[k], t)) for k, _ in metrics),
            f"{ce + general}/{len(rs)} ({ce} / {general})",
            pct(_cell_at(extra["zero_grad_ce"], t)),
            num(_cell_at(extra["logit_norm"], t)), num(_cell_at(extra["margin"], t))]) + " |")
    return [*out, ""]


PLATEAU = 0.01
"""The PGD sweep's plateau rule: at T = 1, clean and training-attack accuracy change by less
than this over the last two epochs (``clean_change_last2``, ``robust_change_last2``), judged on
the mean over the T = 1 seeds."""


def plateau_note(rows: list[dict], adv: str) -> list[str]:
    """Whether the T = 1 runs of ``adv`` trained to their plateau: each seed's change over the
    last two epochs and their mean, which the rule judges (one seed's change is as noisy as one
    epoch's accuracy against the next: the training attack runs on 512 test images). Empty
    where the rows do not carry the change."""
    base = sorted((r for r in rows if r["adv"] == adv and not r["learn_temp"]
                   and r["temp"] == 1.0), key=lambda r: r["seed"])
    parts, means, over, counted = [], [], 0, 0
    for key, what in (("clean_change_last2", "clean"),
                      ("robust_change_last2", "training-attack accuracy")):
        values = [r[key] for r in base if r[key] is not None]
        if values:
            mean = sum(values) / len(values)
            means.append(mean)
            over += sum(abs(v) >= PLATEAU for v in values)
            counted += len(values)
            parts.append(f"{what} {', '.join(f'{100 * v:+.1f}' for v in values)} "
                         f"(mean {100 * mean:+.1f})")
    if not parts:
        return []
    reached = all(abs(m) < PLATEAU for m in means)
    alone = (f" ({over} of {counted} per-seed changes alone are a point or more; "
             "the rule reads the mean, since one seed's change is as noisy as one epoch "
             "against the next)" if reached and over else "")
    return [f"**Plateau at T = 1** (rule: the mean over the T = 1 seeds of the clean and the "
            f"training-attack accuracy on the test set changes by less than "
            f"{100 * PLATEAU:g} point over the last two epochs), points per seed: "
            f"{'; '.join(parts)}: "
            + (f"reached{alone}." if reached else
               "**not reached**: T = 1's accuracy still moves by a point or more."), ""]


def learned_section(rows: list[dict]) -> list[str]:
    arms = sorted({(r["adv"], r["temp"]) for r in rows if r["learn_temp"]},
                  key=lambda a: (list(plots.MODE_LABELS).index(a[0]), a[1]))
    if not arms:
        return []
    out = ["## Learned temperature (`--learn-temp`)", "",
           "T is a trained parameter (`log T`, no weight decay) starting at T0. Compared with "
           "the best fixed T of the same training mode by the claims' test (one comparison, "
           "not corrected for the temperatures tried).", "",
           "| training | T0 | final T (per seed) | clean | worst case | corruptions | vs best "
           "fixed T (clean) | vs best fixed T (worst case) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for adv, t0 in arms:
        final = [r["final_temp"] for r in rows
                 if r["adv"] == adv and r["learn_temp"] and r["temp"] == t0]
        final_cell = learned(rows, "final_temp", adv, t0)
        compare = []
        for metric in (claims.clean_metric(rows), "worst_case_acc"):
            mine, fixed = learned(rows, metric, adv, t0), claims.best_cell(cells(rows, metric,
                                                                                adv))
            if mine is None or fixed is None:
                compare.append("-")
                continue
            judged, test = judge_difference(mine, fixed, _n_images(rows, metric))
            word = {"better": "better than", "worse": "worse than", "same": "same as"}[judged]
            compare.append(f"{word} T = {fixed.temp:g} ({pct(fixed)}; p {test.p:.2g})")
        out.append("| " + " | ".join([
            plots.MODE_LABELS[adv], f"{t0:g}",
            f"{num(final_cell)} ({', '.join(f'{t:.3g}' for t in final)})",
            pct(learned(rows, claims.clean_metric(rows), adv, t0)),
            pct(learned(rows, "worst_case_acc", adv, t0)),
            pct(learned(rows, "corruption_acc", adv, t0)), *compare]) + " |")
    return [*out, ""]


def mechanism_section(rows: list[dict], grad_rows: list[dict] | None) -> list[str]:
    out = ["## The gradient mechanism", "",
           "Theory: the gradient of CE(z/T) with respect to the logits is "
           "(softmax(z/T) - y)/T, so T scales the step by 1/T and, as T grows, spreads the "
           "update over the negative classes.", ""]
    if grad_rows:
        out += ["### On fixed trained models (`gradients.csv`, `gradients.png`)", "",
                "Each model is evaluated with the loss CE(z/T) at every T (its weights do not "
                "change). *|dL/dz|*: mean logit-gradient norm (autograd; the largest "
                "deviation from the formula is in the CSV column `formula_error`); *T x "
                "|dL/dz|*: the same times T; *|dL/dx|*: input-gradient norm; *zero dx*: % "
                "of examples with an exactly-zero input gradient; *entropy*: normalised "
                "entropy of the negative-class gradient weights (1 = even).", ""]
        for m in claims.mechanism(grad_rows):
            rs = sorted((r for r in grad_rows if r["model"] == m.model),
                        key=lambda r: r["temperature"])
            out += [f"**{m.model}** ({int(rs[0]['n_examples'])} test images)", "",
                    "| T | \\|dL/dz\\| | T x \\|dL/dz\\| | \\|dL/dx\\| | zero dx | entropy | "
                    "p_y |", "| --- | --- | --- | --- | --- | --- | --- |"]
            out += [f"| {r['temperature']:g} | {r['logit_grad_norm']:.3g} | "
                    f"{r['temperature'] * r['logit_grad_norm']:.3g} | "
                    f"{r['input_grad_norm']:.3g} | {100 * r['zero_input_grad']:.1f} | "
                    f"{r['neg_entropy_norm']:.3f} | {r['p_true']:.3f} |" for r in rs]
            slope = "-" if m.slope is None else f"{m.slope:.2f}"
            out += ["",
                    f"- 1/T step scaling: log-log slope of |dL/dz| over the three largest T = "
                    f"{slope} -> **{'supported' if m.one_over_t else 'not supported'}** "
                    f"(rule: slope in [{claims.SLOPE_RANGE[0]}, {claims.SLOPE_RANGE[1]}])",
                    f"- evening across negative classes: entropy "
                    f"{'never falls' if m.entropy_rises else 'falls somewhere'} as T rises and "
                    f"reaches {m.entropy_end:.3f} at the largest T -> "
                    f"**{'supported' if m.evens else 'not supported'}** (rule: never falls by "
                    f"more than {claims.ENTROPY_TOL}, ends above {claims.ENTROPY_END})", ""]
    out += ["### In trained models (each model at its own training T, from `results.csv`)", "",
            "Training at T does not leave the logits alone: the table shows what the models "
            "learned. The slope is the log-log fit of the mean logit norm against T over the "
            "temperatures T >= 1 that are not under-trained (see the tables above); a model "
            "whose logits grew in proportion to T would have slope 1.", ""]
    arms = compensation_arms(rows)
    for arm in arms:
        rs = arm_rows(rows, arm)  # one arm at a time: the arms' logits differ by far
        for adv in _modes(rs):
            out += _logit_growth(rs, adv, "" if len(arms) == 1 else
                                 f"{ARM_LABELS.get(arm, arm).split(':')[0]}, ")
    return out


def _logit_growth(rows: list[dict], adv: str, prefix: str) -> list[str]:
    """Logit norm, margin and the gradient at the training T per temperature of one arm and
    training mode, with the log-log slope of the logit norm over the well-trained T >= 1."""
    norm = cells(rows, "logit_norm", adv)
    weak = {c.temp for c in claims.underfit(rows, adv)}
    above = [c for c in norm if c.temp >= 1 and c.temp not in weak]
    s = claims.slope([c.temp for c in above], [c.mean for c in above])
    fit = ", ".join(f"{c.temp:g}" for c in above)
    grad = cells(rows, "logit_grad_norm_at_T", adv)
    ent = cells(rows, "neg_entropy_norm_at_T", adv)
    growth = (f"mean logit norm scales as T^{s:.2f} (fit over T = {fit})" if s is not None
              else "no slope: fewer than two well-trained temperatures T >= 1"
              + (f" (only T = {fit})" if fit else ""))
    out = [f"**{prefix}{plots.MODE_LABELS[adv]}**: {growth}", "",
           "| T | logit norm | margin | \\|dL/dz\\| at T | entropy at T |",
           "| --- | --- | --- | --- | --- |"]
    out += [f"| {c.temp:g} | {num(c)} | {num(_cell_at(cells(rows, 'margin', adv), c.temp))}"
            f" | {num(_cell_at(grad, c.temp))} | {num(_cell_at(ent, c.temp))} |"
            for c in norm]
    return [*out, ""]


def calibration_section(rows: list[dict]) -> list[str]:
    """ECE and NLL before and after temperature scaling, and the fitted temperature, per
    training temperature (the fit on half the test images, judged on the other half)."""
    if not any(r["ece_before"] is not None for r in rows):
        return []
    out = ["#### Calibration", "",
           "The model's own probabilities softmax(z / T) before and after post-hoc temperature "
           "scaling (`tempfast.calibration`, fitted on a seeded half of the test set, judged on "
           "the other half): ECE with 15 equal-width bins and NLL; *fitted T* rescales the "
           "model's probabilities, *effective T* = fitted T x training T divides the raw "
           "logits. Mean ± std over seeds.", "",
           "| training | T | ECE before | ECE after | NLL before | NLL after | fitted T | "
           "effective T |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for adv in _modes(rows):
        columns = {k: cells(rows, k, adv) for k in ("ece_before", "ece_after", "nll_before",
                                                     "nll_after", "cal_temperature",
                                                     "effective_temperature")}
        for c in columns["ece_before"]:
            at = {k: _cell_at(v, c.temp) for k, v in columns.items()}
            out.append(f"| {plots.MODE_LABELS[adv]} | {c.temp:g} | {pct(at['ece_before'])} | "
                       f"{pct(at['ece_after'])} | {num(at['nll_before'])} | "
                       f"{num(at['nll_after'])} | {num(at['cal_temperature'])} | "
                       f"{num(at['effective_temperature'])} |")
    return [*out, ""]


def curve_section(rows: list[dict]) -> list[str]:
    """Standard training: worst-case robust accuracy of the scale-invariant attacks against
    eps, per training temperature (mean over seeds)."""
    eps_values, by_t = _curves(rows)
    if not by_t:
        return []
    out = ["#### Robustness against the budget (standard training)", "",
           "Worst case per example of PGD on CE at the adaptive temperature, PGD on the CW "
           "margin and APGD-DLR, at each eps (L-inf on [0, 1] pixels), in % (mean ± std over "
           "seeds). At the evaluation's eps a standard-trained model may have no robustness "
           "left to compare; the curve shows whether T moves it at smaller budgets. The "
           "verdict per eps uses the claims' rule.", "",
           "| T | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |",
           "|" + " --- |" * (len(eps_values) + 1)]
    for t in sorted(by_t):
        row = []
        for e in eps_values:
            vals = tuple(c[e] for c in by_t[t] if e in c)
            row.append(pct(Cell(t, vals)) if vals else "-")
        out.append(f"| {t:g} | " + " | ".join(row) + " |")
    verdicts = []
    for e, v, w in curve_verdicts(rows):
        recheck = ""
        if w is not None:  # as for the claims: never rest on a weak classifier unsaid
            recheck = (f"; T = {v.best.temp:g} is under-trained" + (
                "; no well-trained T > 1 is left" if w.best is None else
                f"; over the well-trained T only: **{w.label}** (T = {w.best.temp:g} "
                f"{pct(w.best)}%; {statistics_text(w)})"))
        verdicts.append(f"- eps {e:g}: **{v.label}** (T = {v.best.temp:g} {pct(v.best)}% vs "
                        f"{pct(v.base)}%; {statistics_text(v)}{recheck})")
    if not verdicts:
        return [*out, "", "Claim 3 along the curve: no T > 1 measured yet.", ""]
    return [*out, "", "Claim 3 along the curve:", "", *verdicts, ""]


def _curves(rows: list[dict]) -> tuple[list[float], dict[float, list[dict[float, float]]]]:
    """The eps values of standard training's curves and each temperature's curves."""
    runs = [r for r in rows if r["adv"] == "none" and not r["learn_temp"] and r["eps_curve"]]
    by_t: dict[float, list[dict[float, float]]] = {}
    for r in runs:
        by_t.setdefault(r["temp"], []).append(table.parse_curve(r["eps_curve"]))
    return sorted({e for curves in by_t.values() for c in curves for e in c}), by_t


def curve_verdicts(rows: list[dict]) -> list[tuple[float, Verdict, Verdict | None]]:
    """Claim 3 at each eps of the curve: ``(eps, verdict, recheck)``, the verdict by the
    claims' rule, inconclusive where its deciding cell or T = 1 is under-trained; ``recheck``
    (where the deciding cell is under-trained) the same comparison over the well-trained
    temperatures only. Eps values without a T > 1 are left out."""
    eps_values, by_t = _curves(rows)
    weak = {c.temp for c in claims.underfit(rows, "none")}
    out = []
    for e in eps_values:
        cs = [Cell(t, tuple(c[e] for c in curves if e in c)) for t, curves in sorted(by_t.items())]
        cs = [c for c in cs if c.values]
        v = versus_t1(cs, _n_images(rows))
        if v.best is None:
            continue
        recheck = (versus_t1([c for c in cs if c.temp not in weak], _n_images(rows))
                   if v.best.temp in weak else None)
        out.append((e, claims.honest(v, weak), recheck))
    return out


def _well_trained_check(rows: list[dict], metric: str, adv: str, v: Verdict) -> str:
    """When the deciding cell of ``v`` is under-trained: the same comparison over the
    well-trained temperatures only (``; T = 16 is under-trained; over the well-trained T: ...``),
    so a verdict never rests on a weak classifier unsaid. Empty otherwise."""
    weak = {c.temp for c in claims.underfit(rows, adv)}
    if v.best is None or v.best.temp not in weak:
        return ""
    kept = [c for c in cells(rows, metric, adv) if c.temp not in weak]
    w = versus_t1(kept, _n_images(rows, metric))
    if w.best is None:
        return f"; T = {v.best.temp:g} is under-trained and no well-trained T > 1 is left"
    return (f"; T = {v.best.temp:g} is under-trained; over the well-trained T only: "
            f"**{w.label}**, T = {w.best.temp:g}, {100 * w.diff:+.1f} points, p "
            f"{w.p_holm:.2g} after Holm")


def conclusions(rows: list[dict]) -> list[str]:
    """The claims' verdicts per arm in sentences, what contradicts the paper, and what the
    experiment cannot say."""
    out = ["## What we conclude", ""]
    for arm in compensation_arms(rows):
        rs = arm_rows(rows, arm)
        said = []
        for adv, metric, what in (
                ("none", claims.clean_metric(rs), "clean accuracy (claim 1)"),
                ("none", "corruption_acc", "corruption accuracy (claim 2)"),
                ("none", "perturbation_acc", "natural-perturbation accuracy (claim 2)"),
                ("none", "worst_case_acc", "robustness of standard training, adaptive attacks "
                                           "(claim 3)"),
                ("pgd", "worst_case_acc", "robustness of PGD training, adaptive attacks "
                                          "(claim 4)")):
            if adv not in _modes(rs):
                continue
            v = _versus(rs, metric, adv)
            if v.best is None:
                continue
            said.append(f"{what}: **{v.label}** (best T > 1: T = {v.best.temp:g}, "
                        f"{100 * v.diff:+.1f} points, p {v.p_holm:.2g} after Holm"
                        f"{_well_trained_check(rs, metric, adv, v)})")
        curve = [f"eps {e:g} **{v.label}** (T = {v.best.temp:g}, {100 * v.diff:+.1f} "
                 f"points, p {v.p_holm:.2g} after Holm)" for e, v, _ in curve_verdicts(rs)]
        if curve:
            said.append("along the eps curve (claim 3, scale-invariant attacks): "
                        + ", ".join(curve))
        raw = _versus(rs, "robust_pgd_ce", "none") if "none" in _modes(rs) else None
        adaptive = _versus(rs, "worst_case_acc", "none") if "none" in _modes(rs) else None
        masked = [r for r in rs if r["masking_kind"] not in (None, "none")]
        weak = {adv: claims.underfit(rs, adv) for adv in _modes(rs)}
        out.append(f"**{ARM_LABELS.get(arm, arm)}.** "
                   + ("; ".join(said) if said else "no T > 1 measured yet") + ".")
        notes = []
        if raw is not None and raw.label == "supported" and adaptive.label != "supported":
            notes.append("the gain under PGD on raw-logit CE does not survive the adaptive "
                         "attacks: it is the attack failing (gradient masking), not robustness")
        if masked:
            notes.append(f"gradient masking was flagged in {len(masked)} of {len(rs)} runs "
                         "(the escalated attacks are counted in their worst case)")
        for adv, cs in weak.items():
            if cs:
                notes.append(f"{plots.MODE_LABELS[adv]} at T = "
                             f"{', '.join(f'{c.temp:g}' for c in cs)} is under-trained (clean "
                             f"accuracy {_under_trained_rule(rs, adv)}): those cells describe "
                             "weak classifiers")
        if notes:
            out.append("Also: " + "; ".join(notes) + ".")
        out.append("")
    out += ["Where a verdict here contradicts the paper it is reported as measured. The "
            "experiment is small: a few seeds, small models, a few epochs on a subset, a short "
            "attack suite at one budget (plus the curve), so a *not supported* is weak evidence "
            "against a claim, not a refutation. At the paper's scale (CIFAR-10/100 with "
            "ResNet-18 or a ViT, 100 epochs, eps 8/255: `experiments/configs/`) the answers may "
            "differ: the learning-rate schedule acts on T over many more steps (the loss x T "
            "arm is the control for the step size), 100 epochs may finish the models that are "
            "under-trained at large T here, and masking matters more where logits can grow "
            "large. Those configs exist and have not been run (no GPU), so none of this is "
            "measured.", ""]
    return out


def make_plots(rows: list[dict], out: Path, suffix: str = "") -> list[str]:
    """Write the PNGs of ``rows`` (one arm) into ``out`` as ``<name><suffix>.png``; return
    their file names."""
    attacks = [(m, ATTACK_LABELS[m]) for m in ("robust_pgd_ce", *ADAPTIVE, "worst_case_acc")
               if any(r[m] is not None for r in rows)]
    name = lambda base: f"{base}{suffix}.png"
    written = [name("accuracy_vs_T"), name("corruption_vs_T"), name("robust_vs_T"),
               name("zero_grad_vs_T"), name("logits_vs_T")]
    plots.metric_figure(rows, claims.clean_metric(rows), "clean test accuracy",
                        "Clean accuracy vs T", out / written[0])
    plots.metric_figure(rows, "corruption_acc", "mean corruption accuracy",
                        "Corruption accuracy vs T", out / written[1])
    plots.panels_figure(rows, attacks, "robust accuracy", "Robust accuracy vs T, per attack",
                        out / written[2])
    plots.panels_figure(rows, [(f"zero_grad_{k}", f"loss {k}") for k in table.ZERO_GRAD_LOSSES],
                        "inputs with exactly-zero input gradient",
                        "Fraction of zero input gradients vs T", out / written[3],
                        ylim=(-0.02, 1.02))
    plots.logits_figure(rows, out / written[4])
    if any(r["ece_before"] is not None for r in rows):
        written.append(name("calibration_vs_T"))
        plots.panels_figure(rows, [("ece_before", "ECE before"), ("ece_after", "ECE after")],
                            "expected calibration error", "Calibration vs T (ECE before and "
                            "after temperature scaling)", out / written[-1])
    perturbations = [m for m in ("perturbation_acc", *PERTURBATION_LABELS)
                     if any(r.get(m) is not None for r in rows)]
    if perturbations:
        written.append(name("perturbation_vs_T"))
        plots.panels_figure(rows, [(m, "mean" if m == "perturbation_acc" else
                                    PERTURBATION_LABELS[m]) for m in perturbations],
                            "accuracy", "Natural-perturbation accuracy vs T (mean over "
                            "strengths)", out / written[-1])
    if any(r["eps_curve"] for r in rows):
        written.append(name("eps_curve"))
        plots.curve_figure(rows, out / written[-1])
    return written


def _plot_caption(file: str) -> str:
    base = file.rsplit(".", 1)[0]
    for key, label in PLOTS.items():
        if base.startswith(key.rsplit(".", 1)[0]):
            return label
    return {"calibration_vs_T": "ECE before and after temperature scaling",
            "perturbation_vs_T": "natural-perturbation accuracy, mean and per kind",
            "eps_curve": "worst-case robust accuracy against eps"}.get(base.split("-")[0], base)


def render(rows: list[dict], grad_rows: list[dict] | None, plot_files: dict[str, list[str]],
           source: str) -> str:
    """The whole REPORT.md text (``plot_files``: the PNGs of each arm)."""
    n_seeds = _n_seeds(rows)
    data = ", ".join(sorted({r["data"] for r in rows}))
    summary_rows: list[list[str]] = []
    arm_text: list[str] = []
    for arm in compensation_arms(rows):
        rs = arm_rows(rows, arm)
        claim_text, summary = claim_sections(rs)
        summary_rows += [[ARM_LABELS.get(arm, arm).split(":")[0], *r] for r in summary]
        arm_text += [f"## Arm: {ARM_LABELS.get(arm, arm)}", "", *claim_text,
                     "### Tables: mean ± std over seeds per training temperature", ""]
        for adv in _modes(rs):
            arm_text += mode_table(rs, adv)
        arm_text += calibration_section(rs)
        arm_text += curve_section(rs)
        arm_text += learned_section(rs)
        if plot_files.get(arm):
            arm_text += ["### Plots", ""]
            arm_text += [f"![{_plot_caption(f)}]({f})" for f in plot_files[arm]]
            arm_text.append("")
    lines = [
        f"# Temperature, accuracy and robustness: {data} sweep report", "",
        f"Generated by `python -m experiments.report` from `{source}` ({len(rows)} runs)"
        + (" and `gradients.csv`" if grad_rows else "")
        + ". Every number is read from those files; rerun the command to regenerate.", "",
        f"**Scope.** A small experiment: {n_seeds} seed(s) per cell, a small model, short "
        "training and a short attack suite. Each claim picks the best of several "
        "temperatures, so its p-value is corrected for the temperatures tried (Holm).",
        "",
        *setup_section(rows),
        *conclusions(rows),
        "## Verdicts at a glance", "",
        f"Rule (see *How the verdicts are made*): *supported* if the best T > 1 beats T = 1 "
        f"with a Holm-corrected p below {claims.ALPHA:g} and by more than "
        f"{100 * claims.MIN_DIFF:g} points; *contradicted* if even the best T > 1 is worse "
        "that way; else *not supported*.", "",
        "| arm | claim | training | metric | attack family | verdict | best T > 1 vs T = 1 (%) "
        "| test, p, detectable effect (80% power), trend in log T |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in summary_rows), "",
        *arm_text,
    ]
    lines += mechanism_section(rows, grad_rows)
    if plot_files.get("gradients"):
        lines += [f"![{PLOTS[gradients.PLOT_NAME]}]({gradients.PLOT_NAME})", ""]
    lines += [
        "## How the verdicts are made", "",
        "- A cell is one (arm, training mode, temperature); its value is the mean over seeds, "
        "its spread the sample standard deviation. A fixed T = 1 is the same run in every arm.",
        "- For each claim every cell with T > 1 is compared with T = 1: difference d, tested "
        "with Welch's t-test over the seeds (the seeds are the units: test images reused "
        "across seeds and temperatures count once, inside each seed's accuracy); where it is "
        "undefined, a cell of one seed (an interim sweep) against one with spread borrows "
        "that spread (Student's t, equal variances, never below the floor that follows), and "
        "where no spread is known (one seed in each, or none in either) the binomial noise "
        "of the pooled test images stands in as a floor. The two-sided p-value is "
        "corrected by Holm's method over the temperatures tried. Beside it: the effect the "
        "test detects with 80% power at that corrected level, and a trend test (the slope "
        "against log T over every seed at T >= 1, one test with no best-of-k); where the "
        "runs kept their per-example "
        "results (`per_example.jsonl`), the paired test of the best T against T = 1 on the "
        "same images: a two-stage bootstrap over seeds and then images within a seed "
        "(clustered by seed), shown beside the verdict, which Welch's test decides. "
        f"*supported*: the best T > 1 has corrected p < {claims.ALPHA:g} and "
        f"d > {100 * claims.MIN_DIFF:g} points; *contradicted*: even the best is worse that "
        "way; otherwise *not supported*. The difference is also given in test images.",
        "- Robustness claims are judged twice: with PGD on raw-logit CE (the attack the "
        "paper's claim rests on) and with the adaptive attacks' per-example worst case "
        "(an example counts as robust only if no attack broke it). If only the raw-logit "
        "verdict is *supported*, the report reads the gain as gradient masking.",
        "- Masking diagnostics come from `tempfast eval`'s checks in each run's final "
        "evaluation: *CE only* means only the CE-loss checks failed (the scale-invariant "
        "attacks still see through it); *general* means another check failed; either way the "
        "evaluation escalates and counts the stronger attacks in the worst case.",
        f"- Learned T is compared with the best fixed T of the same mode and arm by one planned "
        f"comparison: the claims' test (Welch's t over the seeds where defined), p < "
        f"{claims.ALPHA:g} uncorrected and more than {100 * claims.MIN_DIFF:g} points.",
        "- Mechanism: see the rules stated under each mechanism check.",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: str | Path, *, csv_path: str | Path | None = None,
                 output: str | Path | None = None, with_plots: bool = True) -> Path:
    """Read ``folder/results.csv`` (or ``csv_path``) and write the report (default
    ``folder/REPORT.md``) and, with matplotlib, the plots next to it. Returns the report path.

    Raises:
        ValueError: the CSV is missing columns or holds no rows.
    """
    folder = Path(folder)
    csv_path = Path(csv_path) if csv_path else folder / table.RESULTS
    output = Path(output) if output else folder / "REPORT.md"
    rows = table.read_results(csv_path)
    grad_path = folder / gradients.CSV_NAME
    grad_rows = gradients.read_rows(grad_path) if grad_path.exists() else None
    plot_files: dict[str, list[str]] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    if with_plots and plots.have_matplotlib():
        arms = compensation_arms(rows)
        for arm in arms:
            suffix = "" if len(arms) == 1 else f"-{COMPENSATION_TAGS[arm]}"
            plot_files[arm] = make_plots(arm_rows(rows, arm), output.parent, suffix)
        if grad_rows:
            plots.gradient_figure(grad_rows, output.parent / gradients.PLOT_NAME)
            plot_files["gradients"] = [gradients.PLOT_NAME]
    elif with_plots:
        print("matplotlib is not installed (pip install 'tempfast[plot]'): report without "
              "plots", file=sys.stderr)
    atomic_write_text(output, render(rows, grad_rows, plot_files, csv_path.name))
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Write REPORT.md and PNG plots from a sweep's results.csv.")
    p.add_argument("folder", help="the sweep's --out folder (holds results.csv)")
    p.add_argument("--csv", help="results CSV (default FOLDER/results.csv)")
    p.add_argument("--output", help="report path (default FOLDER/REPORT.md); plots go next to it")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    args = p.parse_args(argv)
    try:
        path = write_report(args.folder, csv_path=args.csv, output=args.output,
                            with_plots=args.plots)
    except (OSError, ValueError) as exc:
        print(f"experiments.report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import sys
from pathlib import Path

from tempfast.train.checkpoint import atomic_write_text

from . import claims, gradients, plots, table
from .claims import Cell, Verdict, cells, judge_difference, learned, versus_t1

ATTACK_LABELS = {
    "robust_pgd_ce": "PGD, CE on raw logits (T = 1)",
    "robust_pgd_ce_t": "PGD, CE at the training T",
    "robust_pgd_cw": "PGD, CW margin",
    "robust_apgd_dlr": "APGD, DLR",
    "robust_apgd_ce": "APGD, CE on raw logits",
    "robust_square": "Square (gradient-free)",
    "worst_case_acc": "worst case (per example, all attacks)",
}
SHORT_LABELS = {
    "clean_acc": "clean", "corruption_acc": "corruptions", "robust_pgd_ce": "pgd-ce",
    "robust_pgd_ce_t": "pgd-ce-t", "robust_pgd_cw": "pgd-cw", "robust_apgd_dlr": "apgd-dlr",
    "robust_apgd_ce": "apgd-ce", "robust_square": "square", "worst_case_acc": "worst case",
}
METRIC_LABELS = {"clean_acc": "clean accuracy", "corruption_acc": "mean corruption accuracy",
                 **ATTACK_LABELS}
ADAPTIVE = ("robust_pgd_ce_t", "robust_pgd_cw", "robust_apgd_dlr", "robust_square")
PLOTS = {
    "accuracy_vs_T.png": "clean accuracy",
    "corruption_vs_T.png": "mean corruption accuracy",
    "robust_vs_T.png": "robust accuracy per attack",
    "zero_grad_vs_T.png": "fraction of exactly-zero input gradients",
    "logits_vs_T.png": "logit norm, margin and logit-gradient norm",
    "gradients.png": "gradient mechanism on fixed trained models",
}


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
    noise = (f"{claims.Z:g} x se = {100 * claims.Z * v.se:.1f}" if min(v.best.n, v.base.n) > 1
             else "one seed: no noise estimate")
    overall = claims.best_cell(cells(rows, metric, adv))
    elsewhere = ("" if overall.temp in (v.best.temp, 1.0) else
                 f"; the best T of the whole grid is T = {overall.temp:g} ({pct(overall)}%)")
    return (f"**{v.label}**: best T > 1 is T = {v.best.temp:g} with {pct(v.best)}% vs "
            f"{pct(v.base)}% at T = 1 (difference {100 * v.diff:+.1f} points, {noise}); at "
            f"T = {v.best.temp:g}: {_masking_at(rows, adv, v.best.temp)}{elsewhere}")


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
    return [
        "## Setup (read from the CSV)",
        "",
        f"- data: {values('data')}; model: {values('model')}; epochs: {values('epochs')}",
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
        f"{len(flagged) - ce_only} general)",
        f"- code revision(s): {values('git_rev')}",
        "- sweep command(s): " + ("; ".join(f"`{c}`" for c in commands) or "-"),
        "- each run's exact `tempfast train` command is in the CSV column `command`",
        "",
    ]


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

    def verdict(claim: str, adv: str, metric: str, family: str) -> Verdict:
        v = versus_t1(cells(rows, metric, adv))
        summary.append([claim, plots.MODE_LABELS[adv], METRIC_LABELS[metric],
                        family, v.label,
                        "-" if v.best is None else
                        f"T = {v.best.temp:g}: {pct(v.best)} vs {pct(v.base)}"])
        return v

    def attack_table(adv: str) -> list[str]:
        out = ["| attack | family | verdict (best T > 1 vs T = 1) |", "| --- | --- | --- |"]
        for metric in ("robust_pgd_ce", *ADAPTIVE, "worst_case_acc"):
            v = versus_t1(cells(rows, metric, adv))
            family = "raw-logit CE" if metric == "robust_pgd_ce" else "adaptive"
            detail = ("" if v.best is None else
                      f": T = {v.best.temp:g} {pct(v.best)}% vs {pct(v.base)}%")
            out.append(f"| {ATTACK_LABELS[metric]} | {family} | {v.label}{detail} |")
        return out

    def robustness(adv: str, claim: str) -> None:
        raw = verdict(claim, adv, "robust_pgd_ce", "PGD with CE on raw logits")
        adaptive = verdict(claim, adv, "worst_case_acc", "adaptive attacks (worst case)")
        text.extend([
            f"- PGD with CE on raw logits: {_verdict_line(raw, rows, adv, 'robust_pgd_ce')}",
            f"- adaptive attacks (CE at the training T, CW margin, APGD-DLR, Square; the "
            f"per-example worst case over the whole suite): "
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

    text += ["## Claims of arXiv 2502.20604, one by one", ""]
    if "none" in _modes(rows):
        text += ["### Claim 1: moderate temperatures give better accuracy than T = 1", ""]
        v = verdict("1", "none", "clean_acc", "clean")
        text += [f"- standard training, clean accuracy: "
                 f"{_verdict_line(v, rows, 'none', 'clean_acc')}", ""]
        text += ["### Claim 2: elevated temperatures improve robustness to common "
                 "corruptions", ""]
        v = verdict("2", "none", "corruption_acc", "corruptions")
        text += [f"- standard training, mean accuracy over the corruption suite: "
                 f"{_verdict_line(v, rows, 'none', 'corruption_acc')}", ""]
        text += ["### Claim 3: elevated temperatures improve robustness to untargeted PGD "
                 "(standard training)", ""]
        robustness("none", "3")
    if "pgd" in _modes(rows):
        text += ["### Claim 4: higher temperatures can improve PGD adversarial training", ""]
        v = verdict("4", "pgd", "clean_acc", "clean")
        text.append(f"- PGD training, clean accuracy: "
                    f"{_verdict_line(v, rows, 'pgd', 'clean_acc')}")
        robustness("pgd", "4")
    return text, summary


def mode_table(rows: list[dict], adv: str) -> list[str]:
    metrics = [(m, SHORT_LABELS[m]) for m in ("clean_acc", "corruption_acc", "robust_pgd_ce",
                                              *ADAPTIVE, "worst_case_acc")]
    columns = {key: cells(rows, key, adv) for key, _ in metrics}
    temps = sorted({c.temp for cs in columns.values() for c in cs})
    head = ["T", *(label for _, label in metrics), "masked runs", "zero CE grad",
            "logit norm", "margin"]
    weak = claims.underfit(rows, adv)
    best = claims.best_cell(cells(rows, "clean_acc", adv))
    note = [] if not weak else [
        f"**Under-trained:** at T = {', '.join(f'{c.temp:g}' for c in weak)} the mean clean "
        f"accuracy ({', '.join(pct(c) + '%' for c in weak)}) is more than "
        f"{100 * claims.UNDERFIT_GAP:g} points below the best cell (T = {best.temp:g}, "
        f"{pct(best)}%)"
        + (": with the same learning rate at every T, the 1/T gradient scale slows training "
           "at large T and leaves these models unfinished" if all(c.temp > best.temp for c in
                                                                  weak) else "")
        + ". Their robust accuracies describe weak classifiers, not a robustness effect of T.",
        ""]
    out = [f"### {plots.MODE_LABELS[adv]}", "", *note,
           "Accuracies in % (mean ± std over seeds); *masked runs*: runs whose evaluation "
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


def learned_section(rows: list[dict]) -> list[str]:
    arms = sorted({(r["adv"], r["temp"]) for r in rows if r["learn_temp"]},
                  key=lambda a: (list(plots.MODE_LABELS).index(a[0]), a[1]))
    if not arms:
        return []
    out = ["## Learned temperature (`--learn-temp`)", "",
           "T is a trained parameter (`log T`, no weight decay) starting at T0. Compared with "
           "the best fixed T of the same training mode by the same rule as the claims.", "",
           "| training | T0 | final T (per seed) | clean | worst case | corruptions | vs best "
           "fixed T (clean) | vs best fixed T (worst case) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for adv, t0 in arms:
        final = [r["final_temp"] for r in rows
                 if r["adv"] == adv and r["learn_temp"] and r["temp"] == t0]
        final_cell = learned(rows, "final_temp", adv, t0)
        compare = []
        for metric in ("clean_acc", "worst_case_acc"):
            mine, fixed = learned(rows, metric, adv, t0), claims.best_cell(cells(rows, metric,
                                                                                adv))
            if mine is None or fixed is None:
                compare.append("-")
                continue
            word = {"better": "better than", "worse": "worse than", "same": "same as"}[
                judge_difference(*claims.difference(mine, fixed))]
            compare.append(f"{word} T = {fixed.temp:g} ({pct(fixed)})")
        out.append("| " + " | ".join([
            plots.MODE_LABELS[adv], f"{t0:g}",
            f"{num(final_cell)} ({', '.join(f'{t:.3g}' for t in final)})",
            pct(learned(rows, "clean_acc", adv, t0)), pct(learned(rows, "worst_case_acc", adv,
                                                                  t0)),
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
    for adv in _modes(rows):
        norm = cells(rows, "logit_norm", adv)
        weak = {c.temp for c in claims.underfit(rows, adv)}
        above = [c for c in norm if c.temp >= 1 and c.temp not in weak]
        s = claims.slope([c.temp for c in above], [c.mean for c in above])
        fit = ", ".join(f"{c.temp:g}" for c in above)
        grad = cells(rows, "logit_grad_norm_at_T", adv)
        ent = cells(rows, "neg_entropy_norm_at_T", adv)
        out += [f"**{plots.MODE_LABELS[adv]}**: mean logit norm scales as T^"
                f"{'-' if s is None else f'{s:.2f}'} (fit over T = {fit or '-'})", "",
                "| T | logit norm | margin | \\|dL/dz\\| at T | entropy at T |",
                "| --- | --- | --- | --- | --- |"]
        out += [f"| {c.temp:g} | {num(c)} | {num(_cell_at(cells(rows, 'margin', adv), c.temp))}"
                f" | {num(_cell_at(grad, c.temp))} | {num(_cell_at(ent, c.temp))} |"
                for c in norm]
        out.append("")
    return out


def make_plots(rows: list[dict], out: Path) -> list[str]:
    """Write the PNGs into ``out``; return their file names."""
    attacks = [(m, ATTACK_LABELS[m]) for m in ("robust_pgd_ce", *ADAPTIVE, "worst_case_acc")
               if any(r[m] is not None for r in rows)]
    plots.metric_figure(rows, "clean_acc", "clean test accuracy", "Clean accuracy vs T",
                        out / "accuracy_vs_T.png")
    plots.metric_figure(rows, "corruption_acc", "mean corruption accuracy",
                        "Corruption accuracy vs T", out / "corruption_vs_T.png")
    plots.panels_figure(rows, attacks, "robust accuracy", "Robust accuracy vs T, per attack",
                        out / "robust_vs_T.png")
    plots.panels_figure(rows, [(f"zero_grad_{k}", f"loss {k}") for k in table.ZERO_GRAD_LOSSES],
                        "inputs with exactly-zero input gradient",
                        "Fraction of zero input gradients vs T", out / "zero_grad_vs_T.png",
                        ylim=(-0.02, 1.02))
    plots.logits_figure(rows, out / "logits_vs_T.png")
    return [f for f in PLOTS if f != gradients.PLOT_NAME]


def render(rows: list[dict], grad_rows: list[dict] | None, plot_files: list[str],
           source: str) -> str:
    """The whole REPORT.md text."""
    n_seeds = _n_seeds(rows)
    claim_text, summary = claim_sections(rows)
    lines = [
        "# Temperature, accuracy and robustness: sweep report", "",
        f"Generated by `python -m experiments.report` from `{source}` ({len(rows)} runs)"
        + (" and `gradients.csv`" if grad_rows else "")
        + ". Every number is read from those files; rerun the command to regenerate.", "",
        f"**Scope.** This is a small experiment: {n_seeds} seed(s) per cell, a small model, "
        "short training and a short attack suite. Standard deviations from so few seeds are "
        "rough, and choosing the best of several temperatures favours finding an "
        "improvement. The learning rate is the same at every T (not retuned). Treat the "
        "verdicts as a description of these runs, not as a test of the paper at its scale.",
        "",
        *setup_section(rows),
        "## Verdicts at a glance", "",
        "Rule (see *How the verdicts are made*): *supported* if the best T > 1 beats T = 1 by "
        f"more than {claims.Z:g} standard errors and {100 * claims.MIN_DIFF:g} points; "
        "*contradicted* if even the best T > 1 is worse than T = 1 that way; else *not "
        "supported*.", "",
        "| claim | training | metric | attack family | verdict | best T > 1 vs T = 1 (%) |",
        "| --- | --- | --- | --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in summary), "",
        *claim_text,
        "## Tables: mean ± std over seeds per training temperature", "",
    ]
    for adv in _modes(rows):
        lines += mode_table(rows, adv)
    lines += learned_section(rows)
    lines += mechanism_section(rows, grad_rows)
    if plot_files:
        lines += ["## Plots", ""]
        lines += [f"![{PLOTS[f]}]({f})" for f in plot_files]
        lines.append("")
    lines += [
        "## How the verdicts are made", "",
        "- A cell is one (training mode, temperature); its value is the mean over seeds, its "
        "spread the sample standard deviation.",
        "- For each claim the metric of the best cell with T > 1 is compared with T = 1: "
        "difference d, standard error se = sqrt(s1^2/n1 + s2^2/n2). *supported*: "
        f"d > {claims.Z:g} se and d > {100 * claims.MIN_DIFF:g} points; *contradicted*: "
        f"d < -{claims.Z:g} se and d < -{100 * claims.MIN_DIFF:g} points; otherwise *not "
        "supported*.",
        "- Robustness claims are judged twice: with PGD on raw-logit CE (the attack the "
        "paper's claim rests on) and with the adaptive attacks' per-example worst case "
        "(an example counts as robust only if no attack of the suite broke it). If only the "
        "raw-logit verdict is *supported*, the report reads the gain as gradient masking.",
        "- Masking diagnostics come from `tempfast eval`'s checks in each run's final "
        "evaluation: *CE only* means only the CE-loss checks failed (zero CE gradients, CE far "
        "above margin/DLR accuracy: the scale-invariant attacks still see through it); "
        "*general* means another check failed (accuracy rising with eps or with more "
        "steps/restarts, Square beating the white-box attacks).",
        "- Learned T is compared with the best fixed T of the same mode by the same "
        "difference rule (*better* / *same* / *worse*).",
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
    rows = table.read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no runs")
    grad_path = folder / gradients.CSV_NAME
    grad_rows = gradients.read_rows(grad_path) if grad_path.exists() else None
    plot_files: list[str] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    if with_plots and plots.have_matplotlib():
        plot_files = make_plots(rows, output.parent)
        if grad_rows:
            plots.gradient_figure(grad_rows, output.parent / gradients.PLOT_NAME)
            plot_files.append(gradients.PLOT_NAME)
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

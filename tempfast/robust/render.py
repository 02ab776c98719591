"""The rendering of an evaluation's result (:func:`tempfast.robust.evaluation.evaluate`) as
rich tables, apart from its computation: the robustness table, the masking diagnostics and
verdict, and the corruption table."""

from __future__ import annotations

from . import masking


def masking_warnings(result: dict) -> list[str]:
    """One ``SUSPECTED GRADIENT MASKING: <reason>`` line per failed check of ``result``."""
    return [f"{masking.WARNING}: {reason}"
            for reason in (result["masking"] or {}).get("reasons", [])]


def header(result: dict) -> str:
    """The evaluation's settings: what ran, exactly (the attacks and their settings, the
    diagnostics, the corruptions, the calibration)."""
    s = result["settings"]
    attacks = list(result["robust_acc"])
    parts = [f"{result['n_examples']} test images", f"T {s['train_temperature']:.4g}", "fp32",
             s["device"]]
    if attacks:
        run = f"attacks {', '.join(attacks)} at eps {s['eps']:.4g}"
        if any(a != "square" for a in attacks):
            run += f" (alpha {s['alpha']:.4g}, {s['steps']} steps, {s['restarts']} restart(s))"
        if "square" in attacks:
            run += f", square {s['square_queries']} queries"
        parts += [run, f"masking diagnostics (pgd-cw: eps curve, {s['check_steps']} steps, "
                       f"{s['restarts'] + 1} restarts; more until the attacks converge"
                       f"{'' if s.get('escalate', True) else ': not in a quick evaluation'})"]
    else:
        parts.append("no attacks (no masking diagnostics)")
    for key in ("corruptions", "perturbations"):
        if result.get(key) is not None:
            parts.append(f"{key} on {result[key].get('n_examples') or 'the'} test images")
    if result.get("calibration"):
        parts.append("calibration")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render(result: dict, console=None) -> None:
    """Print ``result`` as rich tables (the diagnostics' and escalation's runs that count in
    the worst case dimmed under the suite's attacks), then the masking warnings, the
    escalation and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(header(result), highlight=False)
    table = Table(title="Robustness")
    table.add_column("evaluation")
    table.add_column("accuracy", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", _pct(result["clean_acc"]), "")
    for name, acc in result["robust_acc"].items():
        table.add_row(name, _pct(acc), f"{result['attack_seconds'][name]:.1f}")
    for name, acc in (result.get("extra_robust_acc") or {}).items():
        table.add_row(f"[dim]{name} (diagnostic)[/dim]", f"[dim]{_pct(acc)}[/dim]", "")
    if result["worst_case_acc"] is not None:
        table.add_row("[bold]worst case[/bold]", f"[bold]{_pct(result['worst_case_acc'])}[/bold]",
                      "")
    if result["corruption_acc"] is not None:
        table.add_row("corruptions (mean)", _pct(result["corruption_acc"]), "")
    if result.get("perturbation_acc") is not None:
        table.add_row("natural perturbations (mean)", _pct(result["perturbation_acc"]), "")
    console.print(table)
    if result["masking"] is not None:
        _render_masking(result["masking"], console)
    if result["corruptions"] is not None:
        c = result["corruptions"]
        console.print(f"corruptions: {c['source']}", highlight=False, soft_wrap=True)
        ctable = Table(title="Corruption accuracy")
        ctable.add_column("corruption")
        for sev in c["severities"]:
            ctable.add_column(f"s{sev}", justify="right")
        ctable.add_column("mean", justify="right")
        for name, row in c["per_corruption"].items():
            ctable.add_row(name, *(_pct(row[str(sev)]) for sev in c["severities"]),
                           _pct(row["mean"]))
        console.print(ctable)
    p = result.get("perturbations")
    if p is not None:
        ptable = Table(title=f"Natural perturbations ({p['n_examples']} test images)")
        ptable.add_column("perturbation")
        for strength in p["strengths"]:
            ptable.add_column(f"strength {strength}", justify="right")
        ptable.add_column("mean", justify="right")
        for name, row in p["per_perturbation"].items():
            ptable.add_row(name, *(_pct(row[str(s)]) for s in p["strengths"]), _pct(row["mean"]))
        console.print(ptable)
    cal = result.get("calibration")
    if cal:
        ctable = Table(title=f"Calibration: T fitted on {cal['fit_examples']} test images, "
                             f"judged on the other {cal['report_examples']}")
        for column in ("", "ECE", "NLL", "Brier"):
            ctable.add_column(column, justify="right" if column else "left")
        for when, label in (("before", f"at T {cal['train_temperature']:.4g} (training)"),
                            ("after", f"x {cal['temperature']:.4g} (fitted): T "
                                      f"{cal['effective_temperature']:.4g}")):
            ctable.add_row(label, f"{cal[f'ece_{when}']:.4f}", f"{cal[f'nll_{when}']:.4f}",
                           f"{cal[f'brier_{when}']:.4f}")
        console.print(ctable)
    converged = (result["masking"] or {}).get("convergence")
    if converged:
        colour = "green" if converged["converged"] else "yellow"
        console.print(f"[{colour}]convergence: {converged['line']}[/{colour}]", highlight=False)
    for line in masking_warnings(result):
        console.print(f"[bold red]{line}[/bold red]", highlight=False)
    escalation = result.get("escalation")
    if escalation:
        console.print(f"[bold]escalation[/bold] ({escalation['reason']}): "
                      f"{', '.join(escalation['attacks'])}; counted in the worst case",
                      highlight=False)
    if result["masking"] is not None:
        colour = "red" if result["masking"]["suspected"] else "green"
        console.print(f"[{colour}]verdict: {result['masking']['verdict']}[/{colour}]",
                      highlight=False)


def _render_masking(m: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Gradient-masking diagnostics")
    table.add_column("check")
    table.add_column("measured")
    for key, fraction in m["zero_grad_fraction"].items():
        table.add_row(f"zero input gradient, {key} loss", _pct(fraction))
    table.add_row("pgd-cw accuracy vs eps",
                  ", ".join(f"{p['eps']:.3g}: {_pct(p['acc'])}" for p in m["eps_curve"]) or "-")
    for key, what in (("more_steps", "steps"), ("more_restarts", "restarts")):
        c = m[key]
        table.add_row(f"pgd-cw, more {what}",
                      f"{c['base_' + what]}: {_pct(c['base_acc'])} -> {c[what]}: {_pct(c['acc'])}")
    for r in (m.get("convergence") or {}).get("history", [])[1:]:
        table.add_row(f"convergence round {r['round']}",
                      f"{r['steps']} steps x {r['restarts']} restarts: pgd-cw worst case "
                      f"{_pct(r['worst_acc'])}")
    if m["square_only_fraction"] is not None:
        table.add_row("broken by square only", _pct(m["square_only_fraction"]))
    console.print(table)

"""What the trainer prints: a rich progress bar, JSON lines, one quiet line, or nothing.

The trainer calls one :class:`Reporter` (the silent base class on ranks other than 0):

* :class:`RichReporter` (default): a progress bar per epoch (loss, accuracy, images/s, ETA) on
  stderr, one line per finished epoch and a final table on stdout;
* :class:`JsonReporter` (``--json``): one JSON object per line on stdout, with an ``event``
  key: ``start``, ``epoch`` (the row written to metrics.jsonl), ``status``, ``summary``;
* :class:`QuietReporter` (``--quiet``): only the final one-line result.

Per-step values live on the device as ``sums = [loss_sum, correct, count]``; only the rich
bar reads them back, at most every ``refresh_s`` seconds, so quiet and JSON runs never wait
for the device inside an epoch.
"""

from __future__ import annotations

import json
import sys
import time

from torch import Tensor


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _compensation(kind: str | None) -> str:
    """How the header says what ``--temp-compensation`` does."""
    return {"loss": " (loss x T)", "lr": " (lr x T)"}.get(kind, "")


def _of(n: int | None) -> str:
    """The sample size of an accuracy: `` (of 1000 test images)``."""
    return "" if n is None else f" (of {n} test images)"


def result_line(summary: dict) -> str:
    """One line: clean and worst-case robust accuracy, final T, output folder."""
    parts = [f"clean {_pct(summary.get('clean_acc'))}{_of(summary.get('clean_n'))}"]
    if summary.get("worst_case_acc") is not None:
        parts.append(f"worst-case robust {_pct(summary['worst_case_acc'])}")
    if (summary.get("masking") or {}).get("suspected"):
        parts.append("SUSPECTED GRADIENT MASKING")
    parts.append(f"T {summary['final_temperature']:.4g}")
    parts.append(f"-> {summary['output']}")
    return "  ".join(parts)


def _converged(report: dict) -> str:
    """``yes``, ``yes (2 rounds more)`` or ``NO (cap: 3 rounds)`` / ``NO (quick evaluation)``."""
    if report["converged"]:
        return "yes" if report["rounds"] == 0 else f"yes ({report['rounds']} round(s) more)"
    return f"NO (cap: {report['cap']} rounds)" if report["cap"] else "NO (quick evaluation)"


class Reporter:
    """Silent reporter; subclasses print. Every method may be called on any rank."""

    def start(self, info: dict) -> None:
        """The run begins (``info``: output folder, device, data, model, epochs...)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, start_step: int = 0) -> None:
        """Epoch ``epoch`` (0-based) of ``epochs`` begins, ``steps`` batches, from
        ``start_step`` (resumed mid-epoch when > 0)."""

    def step(self, done: int, sums: Tensor) -> None:
        """``done`` batches of the epoch finished; ``sums = [loss_sum, correct, count]``."""

    def epoch_end(self, row: dict) -> None:
        """The epoch's metrics row (also written to metrics.jsonl)."""

    def status(self, message: str) -> None:
        """A one-line status message (the final evaluation reports its progress here)."""

    def summary(self, summary: dict) -> None:
        """The run's summary.json content."""

    def close(self) -> None:
        """Stop any live display."""


class QuietReporter(Reporter):
    def summary(self, summary: dict) -> None:
        print(result_line(summary), flush=True)


class JsonReporter(Reporter):
    def _emit(self, event: str, payload: dict) -> None:
        sys.stdout.write(json.dumps({"event": event, **payload}) + "\n")
        sys.stdout.flush()

    def start(self, info: dict) -> None:
        self._emit("start", info)

    def epoch_end(self, row: dict) -> None:
        self._emit("epoch", row)

    def status(self, message: str) -> None:
        self._emit("status", {"message": message})

    def summary(self, summary: dict) -> None:
        self._emit("summary", summary)


class RichReporter(Reporter):
    def __init__(self, refresh_s: float = 0.25) -> None:
        from rich.console import Console

        self.out = Console()
        self.err = Console(stderr=True)
        self.refresh_s = refresh_s
        self._progress = None
        self._task = None

    def start(self, info: dict) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.out.print(
            f"[bold]tempfast train[/]  data {info['data']} ({info['n_train']} train / "
            f"{info['n_test']} test)  model {info['model']}  T {info['temperature']:g}"
            f"{' (learned)' if info['learn_temp'] else ''}"
            f"{_compensation(info.get('temp_compensation'))}  adv {info['adv']}  "
            f"device {info['device']} x{info['world_size']}", soft_wrap=True, highlight=False)
        self.out.print(f"output {info['output']}", soft_wrap=True, highlight=False)
        if info.get("resumed_from"):
            self.out.print(f"resumed from {info['resumed_from']}", soft_wrap=True,
                           highlight=False)
        if info.get("note"):
            self.out.print(info["note"], soft_wrap=True, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=self.err, transient=True,
        )
        self._progress.start()

    def epoch_start(self, epoch: int, epochs: int, steps: int, start_step: int = 0) -> None:
        self._t0, self._last, self._steps = time.perf_counter(), 0.0, steps
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps,
                                             completed=start_step, stats="")

    def step(self, done: int, sums: Tensor) -> None:
        now = time.perf_counter()
        if now - self._last < self.refresh_s and done < self._steps:
            return
        self._last = now
        loss_sum, correct, count = sums.tolist()
        stats = (f"loss {loss_sum / max(count, 1):.4f}  acc {_pct(correct / max(count, 1))}  "
                 f"{count / max(now - self._t0, 1e-9):,.0f} img/s")
        self._progress.update(self._task, completed=done, stats=stats)

    def epoch_end(self, row: dict) -> None:
        self._progress.remove_task(self._task)
        line = (f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
                f"acc {_pct(row['train_acc'])}")
        if row.get("test_acc") is not None:
            line += f"  test {_pct(row['test_acc'])}"
        if row.get("test_robust_acc") is not None:
            line += f"  robust {_pct(row['test_robust_acc'])}"
        line += (f"  T {row['temperature']:.4g}  lr {row['lr']:.4g}  "
                 f"{row['epoch_time_s']:.1f} s  {row['images_per_s']:,.0f} img/s")
        self.out.print(line, soft_wrap=True, highlight=False)

    def status(self, message: str) -> None:
        self.err.print(message, soft_wrap=True, highlight=False)

    def summary(self, summary: dict) -> None:
        from rich.table import Table

        self.close()
        table = Table(title="tempfast train", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        n = summary.get("clean_n")
        table.add_row("clean accuracy" + ("" if n is None else f" ({n} test images)"),
                      _pct(summary.get("clean_acc")))
        for name, acc in (summary.get("robust_acc") or {}).items():
            table.add_row(f"robust: {name}", _pct(acc))
        for name, acc in (summary.get("extra_robust_acc") or {}).items():
            table.add_row(f"diagnostic: {name}", _pct(acc))  # counts in the worst case
        if summary.get("worst_case_acc") is not None:
            table.add_row("robust: worst case", _pct(summary["worst_case_acc"]))
        if summary.get("corruption_acc") is not None:
            table.add_row("corruptions (mean)", _pct(summary["corruption_acc"]))
        if summary.get("perturbation_acc") is not None:
            table.add_row("natural perturbations (mean)", _pct(summary["perturbation_acc"]))
        masking = summary.get("masking") or {}
        if masking:
            table.add_row("gradient masking", "SUSPECTED" if masking.get("suspected") else "no")
            if masking.get("convergence"):
                table.add_row("attacks converged", _converged(masking["convergence"]))
        table.add_row("temperature (train -> final)",
                      f"{summary['temperature']:.4g} -> {summary['final_temperature']:.4g}")
        best = summary.get("best") or {}
        if best.get("epoch") is not None:
            table.add_row(f"best epoch ({best['metric']})",
                          f"{best['epoch']} ({_pct(best['value'])})")
        table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
        self.out.print(table)
        self.out.print(f"output folder {summary['output']}", soft_wrap=True, highlight=False)
        for reason in masking.get("reasons", []):
            self.out.print(f"[bold red]SUSPECTED GRADIENT MASKING[/]: {reason}", soft_wrap=True,
                           highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_reporter(mode: str, is_main: bool = True) -> Reporter:
    """``mode`` is ``rich``, ``json`` or ``quiet``; ranks other than 0 get a silent one."""
    if not is_main:
        return Reporter()
    return {"rich": RichReporter, "json": JsonReporter, "quiet": QuietReporter}[mode]()

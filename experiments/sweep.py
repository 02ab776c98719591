"""Train and evaluate every (temperature, training mode, seed) with ``tempfast train``.

    python -m experiments.sweep --data digits --temps 0.25 0.5 1 2 4 8 16 32 64 \\
        --adv none pgd --seeds 3 --learn-temp --out experiments/results/digits

Each run is one ``python -m tempfast train ... --output OUT/runs/<run> --quiet`` subprocess
(its own RNG state and threads; ``--jobs`` of them side by side). When it has finished, the
sweep measures the final model (``last.pt``) on the evaluated test images
(:mod:`experiments.measure`: logit norm, margin, gradient norms and negative-class entropy at
the run's final T) and appends one row to ``OUT/results.csv`` (:mod:`experiments.table`) with
the trainer's final evaluation (clean, corruption, perturbation, per-attack and worst-case
robust accuracy, masking diagnostics and convergence), the final T, times, the git revision
of the code that ran and the exact command; its per-example masks (clean, each attack, worst
case, on the evaluated test images in order) go to ``OUT/per_example.jsonl`` for the paired
tests of the report.

Resuming: rerun the same command. Runs with a row in the CSV are skipped; a run whose folder
holds ``summary.json`` but no row gets its row; a run folder without ``summary.json`` (killed
or interrupted) is continued with ``tempfast train --resume``. ``OUT/sweep.json`` records the
settings that define the runs; a rerun with other settings is refused (choose another
``--out``). The grid (temperatures, modes, seeds, learned-T arm) may grow between reruns.

Afterwards (unless ``--no-gradients``) :mod:`experiments.gradients` analyses the T = 1
checkpoints of the first seed (standard and PGD training) at every sweep temperature.

``--config FILE.yaml`` reads defaults for any flag (keys are the flag names with ``_``); flags
given on the command line win. Exit status: 0 all runs done, 1 some run failed (see its
``sweep.log``), 2 bad input, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

from tempfast.cli.train import number
from tempfast.errors import UsageError

from . import table
from .rows import (
    Measurer,
    Run,
    code_revision,
    environment,
    make_row,
    number_text,
    per_example_record,
)
from .runner import Runner

# Sweep flags passed through to every `tempfast train` run: (name, type). None: trainer default.
TRAIN_OPTIONS = (
    ("data", str), ("data_seed", int), ("train_subset", int), ("model", str), ("epochs", int),
    ("batch_size", int),
    ("lr", number), ("opt", str), ("sched", str), ("wd", number), ("warmup_epochs", int),
    ("eps", number), ("alpha", number), ("steps", int), ("attack_loss", str), ("amp", str),
    ("eval_examples", int), ("eval_steps", int), ("eval_restarts", int), ("eval_attacks", str),
)
# Settings that PGD-training runs may set apart (--pgd-train-subset, --pgd-epochs): PGD
# training costs about 8 forward and backward passes per image, standard training 1.
PGD_OVERRIDES = ("train_subset", "epochs")
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Train and evaluate every (temperature, training mode, seed) with "
                    "tempfast train; one CSV row per run; rerun to resume.")
    p.add_argument("--config", help="YAML file with defaults for any flag below")
    p.add_argument("--out", help="results folder (results.csv, sweep.json, runs/)")
    p.add_argument("--runs-dir", help="run folders with checkpoints (default OUT/runs)")
    g = p.add_argument_group("grid")
    g.add_argument("--temps", nargs="+", type=number, default=[1.0],
                   help="training temperatures (1)")
    g.add_argument("--adv", nargs="+", choices=("none", "pgd"), default=["none"],
                   help="training modes: none (standard), pgd (PGD adversarial training)")
    g.add_argument("--seeds", type=int, default=1, help="seeds per cell: 0 .. N-1 (1)")
    g.add_argument("--first-seed", type=int, default=0, help="first seed (0)")
    g.add_argument("--learn-temp", nargs="*", type=number, metavar="T0",
                   help="add a learned-temperature arm per training mode, starting at each "
                        "T0 (no value: 1)")
    g.add_argument("--compensation", nargs="+", choices=("none", "loss", "lr"),
                   default=["none"],
                   help="temperature-compensation arms (tempfast train --temp-compensation): "
                        "none (the paper's plain CE(z / T), the default), loss (step size kept "
                        "at T = 1's); at T = 1 every arm is the same run, run once")
    g.add_argument("--eps-curve", nargs="+", type=number, metavar="EPS",
                   help="also measure, for standard training, the worst-case robust accuracy "
                        "of the scale-invariant attacks at each EPS")
    g = p.add_argument_group("training and evaluation (passed to tempfast train; default: its "
                             "own)")
    for name, kind in TRAIN_OPTIONS:
        g.add_argument("--" + name.replace("_", "-"), type=kind,
                       default="digits" if name == "data" else None)
    for name in PGD_OVERRIDES:
        flag = name.replace("_", "-")
        g.add_argument(f"--pgd-{flag}", type=int, dest=f"pgd_{name}",
                       help=f"--{flag} of the PGD-training runs (default: --{flag})")
    g.add_argument("--no-corruptions", dest="corruptions", action="store_false",
                   help="skip the corruption suite in the final evaluation")
    g.add_argument("--extra", default="",
                   help="more tempfast train flags for every run, one string (e.g. "
                        "'--channels-last --amp bf16')")
    g = p.add_argument_group("environment (not part of a run's definition)")
    g.add_argument("--data-dir", help="folder holding the data files")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (1)")
    g.add_argument("--jobs", type=int, default=1, help="runs side by side (1)")
    g.add_argument("--no-gradients", dest="gradients", action="store_false",
                   help="skip the gradient analysis after the runs")
    g.add_argument("--dry-run", action="store_true",
                   help="print the run commands and what would happen; run nothing")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the flags, with defaults from ``--config``; check them.

    Raises:
        UsageError: an unreadable config, an unknown config key, a bad value.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            config = yaml.safe_load(Path(args.config).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read --config {args.config}: "
                             f"{str(exc).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise UsageError(f"--config {args.config}: expected a mapping of flag names")
        known = {a.dest for a in parser._actions} - {"help", "config"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UsageError(f"--config {args.config}: unknown keys {', '.join(unknown)}")
        if isinstance(config.get("extra"), list):
            config["extra"] = shlex.join(str(v) for v in config["extra"])
        parser.set_defaults(**config)
        args = parser.parse_args(argv)
    try:
        args.temps = [number(str(t)) for t in args.temps]
        if args.learn_temp is not None:
            args.learn_temp = [number(str(t)) for t in args.learn_temp] or [1.0]
        if args.eps_curve is not None:
            args.eps_curve = [number(str(e)) for e in args.eps_curve]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--temps / --learn-temp: {exc}") from None
    if args.out is None:
        raise UsageError("--out is required (the results folder)")
    for name in ("seeds", "jobs", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in PGD_OVERRIDES:
        value = getattr(args, f"pgd_{name}")
        if value is not None and value < 1:
            raise UsageError(f"--pgd-{name.replace('_', '-')} must be >= 1, got {value}")
    for t in args.temps + (args.learn_temp or []):
        if not t > 0:
            raise UsageError(f"temperatures must be > 0, got {t}")
    for e in args.eps_curve or []:
        if not 0 < e <= 1:
            raise UsageError(f"--eps-curve values must lie in (0, 1], got {e}")
    args.adv = list(dict.fromkeys(args.adv))
    if not set(args.adv) <= {"none", "pgd"}:
        raise UsageError(f"--adv must be some of none, pgd, got {' '.join(args.adv)}")
    return args


def grid(args: argparse.Namespace) -> list[Run]:
    """Every run of the sweep in order: per compensation arm, per mode, per temperature, per
    seed; then the learned-temperature arm (per arm, per mode, per T0, per seed). A fixed
    T = 1 is the same run in every arm (the compensation multiplies by 1): it runs once, in the
    first arm."""
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    arms = list(dict.fromkeys(args.compensation))
    runs = [Run(adv, t, s, compensation=arm) for arm in arms for adv in args.adv
            for t in dict.fromkeys(args.temps) for s in seeds
            if t != 1.0 or arm == arms[0]]
    for t0 in dict.fromkeys(args.learn_temp or []):
        runs += [Run(adv, t0, s, learn_temp=True, compensation=arm) for arm in arms
                 for adv in args.adv for s in seeds]
    return runs


def settings(args: argparse.Namespace) -> dict:
    """What defines the runs, beyond the grid (recorded in sweep.json)."""
    out = {name: getattr(args, name) for name, _ in TRAIN_OPTIONS}
    out["corruptions"] = args.corruptions
    out["extra"] = shlex.split(args.extra)
    out["eps_curve"] = args.eps_curve
    out.update({f"pgd_{name}": getattr(args, f"pgd_{name}") for name in PGD_OVERRIDES})
    return out


def train_command(args: argparse.Namespace, run: Run, output: Path) -> list[str]:
    """The ``tempfast train`` arguments of ``run`` (without the interpreter)."""
    cmd = ["-m", "tempfast", "train"]
    for name, _ in TRAIN_OPTIONS:
        value = getattr(args, name)
        if run.adv == "pgd" and name in PGD_OVERRIDES and getattr(args, f"pgd_{name}"):
            value = getattr(args, f"pgd_{name}")
        if value is not None:
            cmd += ["--" + name.replace("_", "-"),
                    number_text(value) if isinstance(value, float) else str(value)]
    cmd += run.args()
    cmd += ["--eval", "full"]  # the claims are judged on the full evaluation, never a preset's
    if not args.corruptions:
        cmd.append("--no-corruptions")
    cmd += shlex.split(args.extra)
    if args.data_dir is not None:
        cmd += ["--data-dir", args.data_dir]
    cmd += ["--threads", str(args.threads), "--device", args.device, "--output", str(output),
            "--quiet"]
    return cmd


def check_train_command(cmd: list[str]) -> None:
    """Let tempfast's own parser and config check a run's flags (raises UsageError)."""
    from tempfast.cli import build_parser as tempfast_parser
    from tempfast.cli.train import config_from_args

    config_from_args(tempfast_parser().parse_args(cmd[2:])).resolved()


def _check_sweep_file(out: Path, wanted: dict, dry_run: bool) -> None:
    path = out / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())["settings"]
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        for key in sorted(set(old) | set(wanted)):
            if old.get(key) != wanted.get(key):
                raise UsageError(f"{out} holds a sweep with other settings ({key}: "
                                 f"{old.get(key)!r} there, {wanted.get(key)!r} now); choose "
                                 f"another --out")
    elif not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": wanted}, indent=2) + "\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _line(i: int, total: int, row: dict, how: str) -> str:
    masked = {None: "-", "none": "no", "ce": "CE only", "general": "YES"}[row["masking_kind"]]
    return (f"[{i}/{total}] {row['run']}  clean {_pct(row['clean_acc'])}  corruptions "
            f"{_pct(row['corruption_acc'])}  worst-case {_pct(row['worst_case_acc'])}  pgd-ce "
            f"{_pct(row['robust_pgd_ce'])}  masking {masked}  T {row['final_temp']:.4g}  "
            f"{row['wall_time_s']:.1f} s  ({how})")


def check_data_files(args: argparse.Namespace) -> None:
    """Before any run starts: the IDX files of ``--data fashion-mnist`` / ``mnist`` are there.

    Raises:
        UsageError: a file is missing (one line: where they are expected, how to install them).
    """
    from tempfast.train import idx

    if args.data in idx.INSTALL_HINT:
        idx.locate(args.data, args.data_dir)


def sweep(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the sweep described by parsed ``args`` (see the module docstring)."""
    import torch

    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    runs = grid(args)
    commands = {run: train_command(args, run, runs_dir / run.name) for run in runs}
    check_train_command(commands[runs[0]])
    check_data_files(args)
    _check_sweep_file(out, settings(args), args.dry_run)
    csv_path = out / table.RESULTS
    per_example_path = out / table.PER_EXAMPLE
    rows = table.read_rows(csv_path) if csv_path.exists() else []
    done = {row["run"] for row in rows}
    todo = [run for run in runs if run.name not in done]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already in {csv_path}, "
          f"{len(todo)} to do; run folders in {runs_dir}", flush=True)
    sweep_command = shlex.join(["python", "-m", "experiments.sweep", *argv])
    if args.dry_run:
        for run in todo:
            state = ("has summary.json" if (runs_dir / run.name / "summary.json").exists() else
                     "resume" if (runs_dir / run.name / "config.yaml").exists() else "new")
            print(f"{run.name} ({state}): python {shlex.join(commands[run])}")
        return 0
    torch.set_num_threads(args.threads)
    revision = code_revision()
    measurer = Measurer(args.data_dir, args.device)
    environment_columns = environment(args.device, args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    failed: list[str] = []
    finished = len(runs) - len(todo)

    def record(run: Run, cmd: list[str], resumed: bool, process_s: float | None,
               how: str) -> None:
        nonlocal finished
        masks = per_example_record(run, runs_dir / run.name)
        if masks is not None:  # before the row: a run with a row always has its masks
            table.append_jsonl(per_example_path, masks)
        row = make_row(run, runs_dir / run.name, measurer, command=shlex.join(["python", *cmd]),
                       sweep_command=sweep_command, revision=revision, resumed=resumed,
                       process_s=process_s, env=environment_columns,
                       eps_curve=args.eps_curve)
        rows.append(row)
        order = {r.name: i for i, r in enumerate(runs)}
        rows.sort(key=lambda r: order.get(r["run"], len(order)))
        table.write_rows(csv_path, rows)
        finished += 1
        print(_line(finished, len(runs), row, how), flush=True)

    with Runner() as runner:
        pending: dict[Future, tuple[Run, list[str], bool]] = {}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for run in todo:
                run_dir = runs_dir / run.name
                if (run_dir / "summary.json").exists():
                    record(run, commands[run], False, None, "found summary.json")
                    continue
                resumed = (run_dir / "config.yaml").exists()
                cmd = [sys.executable, *commands[run], *(["--resume"] if resumed else [])]
                pending[pool.submit(runner.execute, cmd, run_dir / "sweep.log", env)] = (
                    run, commands[run] + (["--resume"] if resumed else []), resumed)
            for future in _as_completed(pending):
                run, cmd, resumed = pending[future]
                result = future.result()
                if result is None:
                    continue
                rc, seconds = result
                if rc == 0 and (runs_dir / run.name / "summary.json").exists():
                    record(run, cmd, resumed, round(seconds, 3), "resumed" if resumed else "ran")
                elif not runner.event.is_set():
                    failed.append(run.name)
                    log = runs_dir / run.name / "sweep.log"
                    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln]
                    print(f"sweep: {run.name} failed (exit status {rc}): {lines[-1]} (see "
                          f"{log})", flush=True)
        if runner.event.is_set():
            print("sweep: interrupted; rerun the same command to resume", flush=True)
            return EXIT_INTERRUPTED
    if args.gradients:
        _gradients(args, runs, runs_dir, out)
    print(f"sweep: {len(rows)} rows in {csv_path}"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + f"; next: python -m experiments.report {out}", flush=True)
    return EXIT_FAILED if failed else 0


def _as_completed(pending: dict[Future, tuple]):
    """Futures in completion order; wakes up every second so signals are handled promptly."""
    left = set(pending)
    while left:
        done, left = wait(left, timeout=1.0, return_when=FIRST_COMPLETED)
        yield from done


def _gradients(args: argparse.Namespace, runs: list[Run], runs_dir: Path, out: Path) -> None:
    from .gradients import analyse

    refs = [runs_dir / r.name / "last.pt" for r in runs
            if r.temp == 1.0 and not r.learn_temp and r.seed == args.first_seed
            and r.compensation == args.compensation[0]]
    refs = [p for p in refs if p.exists()]
    if not refs:
        print("sweep: no T = 1 checkpoint of the first seed; gradient analysis skipped",
              flush=True)
        return
    print(f"sweep: gradient analysis of {', '.join(p.parent.name for p in refs)}", flush=True)
    analyse([str(p) for p in refs], sorted(set(args.temps)), out, n_examples=None,
            data_dir=args.data_dir, device=args.device)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return sweep(parse_args(argv), argv)
    except UsageError as exc:
        print(f"experiments.sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

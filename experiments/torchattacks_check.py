"""tempfast's attacks beside torchattacks' on the same models, images and budget.

For each checkpoint (``tempfast train`` runs) and eps, one evaluation
(:func:`tempfast.robust.evaluation.evaluate`) runs tempfast's default suite and torchattacks'
``PGD``, ``APGD`` (CE), ``FAB``, ``Square`` and ``CW`` (an L2 attack, projected onto the
L-infinity ball) through ``ta:<Name>``, at the digits sweep's settings (10 steps of 2.5 eps /
10, 1 restart, Square 300 queries, all 360 test images). From the per-example masks:

* tempfast's ``pgd-ce`` against torchattacks' ``PGD`` (the same loss, random start, steps and
  step size), paired by McNemar's exact test: they should agree within sampling noise, except
  that tempfast's PGD keeps each example's best iterate and torchattacks' returns the last; so
  tempfast's PGD returning its last iterate (``keep_best=False``, as torchattacks does) is
  compared with torchattacks' too;
* the worst case over tempfast's attacks (the suite, the diagnostics' runs, the convergence
  rounds, any escalation), and with torchattacks' attacks added: how much the extra package
  finds that tempfast's evaluation missed.

    python -m experiments.torchattacks_check RUN [RUN ...] --out OUT

Needs ``pip install 'tempfast[torchattacks]'``. Results are written after every evaluation
(``results.json``, ``REPORT.md``); a rerun skips the finished ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tempfast.robust.attacks import PGD, seeded
from tempfast.robust.evaluation import evaluate, unpack_mask
from tempfast.robust.torchattacks_adapter import is_torchattacks
from tempfast.train.checkpoint import RESTORE_KEYS, checkpoint_data, load_checkpoint, restore_model

from .check_store import CheckStore, command_line
from .stats import mcnemar

TA_ATTACKS = ("ta:PGD", "ta:APGD", "ta:FAB", "ta:Square", "ta:CW")
SETTINGS = dict(steps=10, restarts=1, n_examples=360, square_queries=300, corruptions=False,
                calibration=False, seed=0)


def _one(run: Path, eps: float) -> dict:
    ckpt = load_checkpoint(run / "best.pt", RESTORE_KEYS)
    cfg = ckpt.get("config") or {}
    temperature = float(ckpt.get("temperature", cfg.get("temp", 1.0)))
    t0 = time.perf_counter()
    result = evaluate(restore_model(ckpt), checkpoint_data(ckpt), eps=eps,
                      train_temperature=temperature,
                      attacks=["pgd-ce", "pgd-ce-t", "pgd-ce-adaptive", "pgd-cw", "apgd-dlr",
                               "square", *TA_ATTACKS], **SETTINGS)
    n = result["n_examples"]
    masks = {name: unpack_mask(text, n) for name, text in
             result["per_example"]["attacks"].items()}
    ours = torch.stack([m for name, m in masks.items() if not is_torchattacks(name)]).all(0)
    every = torch.stack(list(masks.values())).all(0)
    pgd = mcnemar(masks["pgd-ce"].numpy(), masks["ta:PGD"].numpy())
    last = _last_iterate(run, eps)
    same = mcnemar(last.numpy(), masks["ta:PGD"].numpy())
    return {"model": f"{cfg.get('adv', 'none')}-trained, T {cfg.get('temp', 1)} ({run.name})",
            "eps": eps, "n": n, "clean_acc": result["clean_acc"],
            "robust_acc": {**result["robust_acc"]},
            "pgd_ce": float(masks["pgd-ce"].float().mean()),
            "ta_pgd": float(masks["ta:PGD"].float().mean()),
            "pgd_only_broken_by_ta": int((masks["pgd-ce"] & ~masks["ta:PGD"]).sum()),
            "ta_only_broken_by_tempfast": int((masks["ta:PGD"] & ~masks["pgd-ce"]).sum()),
            "pgd_mcnemar_p": pgd.p,
            "pgd_last": float(last.float().mean()),
            "last_only_broken_by_ta": int((last & ~masks["ta:PGD"]).sum()),
            "ta_only_broken_by_last": int((masks["ta:PGD"] & ~last).sum()),
            "last_mcnemar_p": same.p,
            "worst_tempfast": float(ours.float().mean()),
            "worst_with_ta": float(every.float().mean()),
            "found_only_by_ta": int((ours & ~every).sum()),
            "masking": result["masking"]["reasons"],
            "convergence": result["masking"]["convergence"]["line"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _last_iterate(run: Path, eps: float) -> torch.Tensor:
    """Per-example robust mask of tempfast's PGD on CE returning its last iterate (as
    torchattacks' does), at the evaluation's settings and clean-correct images."""
    ckpt = load_checkpoint(run / "best.pt", RESTORE_KEYS)
    model, bundle = restore_model(ckpt), checkpoint_data(ckpt)
    x, y = (torch.cat(t) for t in zip(*bundle.test_batches(512, "cpu",
                                                            limit=SETTINGS["n_examples"]),
                                      strict=True))
    steps = SETTINGS["steps"]
    attack = PGD(model, eps, 2.5 * eps / steps, steps, "ce", keep_best=False)
    with torch.no_grad():
        ok = model(x.float()).argmax(1) == y
    with seeded(1, x.device):
        x_adv = attack(x[ok].float(), y[ok])
    robust = ok.clone()
    with torch.no_grad():
        robust[ok] = model(x_adv).argmax(1) == y[ok]
    return robust


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _report(rows: list[dict], command: str) -> str:
    lines = ["# tempfast's attacks beside torchattacks'", "",
             "Generated by `experiments/torchattacks_check.py` (its docstring says what runs):",
             "", f"    {command}", "",
             "PGD on CE at the same settings (random start, 10 steps of 2.5 eps / 10, 1 "
             "restart), paired per example (McNemar's exact test); then the worst case over "
             "tempfast's evaluation (suite, diagnostics, convergence rounds) and with "
             f"torchattacks' {', '.join(TA_ATTACKS)} added.", "",
             "| model | eps | clean | pgd-ce (tempfast) | ta:PGD | broken by one only "
             "(tempfast / ta) | McNemar p | tempfast PGD, last iterate | broken by one only | "
             "McNemar p | worst case, tempfast | with torchattacks | "
             "found only by torchattacks |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eps']:g} | {_pct(r['clean_acc'])} | "
                     f"{_pct(r['pgd_ce'])} | {_pct(r['ta_pgd'])} | "
                     f"{r['ta_only_broken_by_tempfast']} / {r['pgd_only_broken_by_ta']} | "
                     f"{r['pgd_mcnemar_p']:.2g} | {_pct(r['pgd_last'])} | "
                     f"{r['ta_only_broken_by_last']} / {r['last_only_broken_by_ta']} | "
                     f"{r['last_mcnemar_p']:.2g} | {_pct(r['worst_tempfast'])} | "
                     f"{_pct(r['worst_with_ta'])} | {r['found_only_by_ta']} of {r['n']} |")
    lines += ["", "Every attack's accuracy:", "",
              "| model | eps | " + " | ".join(rows[0]["robust_acc"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in rows[0]["robust_acc"]) + " |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eps']:g} | "
                     + " | ".join(_pct(v) for v in r["robust_acc"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="tempfast train output folders")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torchattacks

    store = CheckStore(args.out, _report, command_line(
        "experiments.torchattacks_check", argv, args.threads,
        torchattacks=torchattacks.__version__))
    done = {(r["model"], r["eps"]) for r in store.rows}
    try:
        for run in args.runs:
            for eps in args.eps:
                if any(m.endswith(f"({run.name})") and e == eps for m, e in done):
                    continue
                store.add(_one(run, eps))
                print(f"{run.name} eps {eps}: done", flush=True)
    except KeyboardInterrupt:
        print("torchattacks_check: interrupted; finished evaluations are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

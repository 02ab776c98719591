"""``tempfast calibrate CHECKPOINT``: fit a post-hoc temperature (Guo et al. 2017) on half of
the run's test set and store it in the checkpoint, so that later evaluations report with it.

The model's probabilities are ``softmax(z / T_train)`` (its training temperature, the learned
one if it learned T); the fitted ``T`` rescales them, ``softmax(z / (T x T_train))``. It is
fitted on a seeded half of the test set (:func:`tempfast.robust.evaluation.calibration_split`)
and judged on the other half, which ``tempfast eval`` also reports on. Exit status: 0 done, 2
bad input, 1 the checkpoint could not be written (the fit is printed first).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import OutputError, os_reason
from .args import one_line_parser_error


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``calibrate`` on the ``tempfast`` subcommand parser."""
    p = subparsers.add_parser(
        "calibrate", help="fit a post-hoc temperature on held-out data, store it in the "
                          "checkpoint",
        description="Fit the NLL-optimal temperature on half of the run's test set, report ECE, "
                    "NLL and Brier before and after on the other half, and store the "
                    "temperature in the checkpoint for later evaluations.")
    p.error = one_line_parser_error("calibrate")
    p.add_argument("checkpoint", help="a checkpoint written by tempfast train")
    p.add_argument("--output", help="where to write the calibrated checkpoint (default: over "
                                    "the checkpoint, atomically)")
    p.add_argument("--data-dir", help="where the run's data set is (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit / report split (0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda when available")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    from ..robust.evaluation import calibration_report
    from ..train.checkpoint import (
        RESTORE_KEYS,
        check_writable,
        checkpoint_data,
        load_checkpoint,
        restore_model,
        save_checkpoint,
    )
    from ..train.distributed import resolve_device

    out = Path(args.output or args.checkpoint)
    check_writable(out.parent, "--output" if args.output else
                   "the default output (over the checkpoint; pass --output to write the "
                   "calibrated checkpoint elsewhere)")
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, RESTORE_KEYS)
    model = restore_model(ckpt, device)
    bundle = checkpoint_data(ckpt, args.data_dir)
    train_t = float(ckpt.get("temperature", (ckpt.get("config") or {}).get("temp", 1.0)))
    report = calibration_report(model, bundle, train_t, seed=args.seed)
    report["seed"] = args.seed
    if args.json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(f"T {report['temperature']:.4g} (x training T {train_t:.4g} = "
              f"{report['effective_temperature']:.4g}), fitted on {report['fit_examples']} test "
              f"images; on the other {report['report_examples']}: ECE "
              f"{report['ece_before']:.4f} -> {report['ece_after']:.4f}, NLL "
              f"{report['nll_before']:.4f} -> {report['nll_after']:.4f}", flush=True)
    ckpt["calibration"] = report
    try:
        save_checkpoint(out, ckpt)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {os_reason(exc)}; the fit above is "
                          "complete") from None
    if not args.json:
        print(f"wrote {out}")
    return 0

"""``tempfast eval CHECKPOINT``: the robustness evaluation of
:func:`tempfast.robust.evaluation.evaluate` on a training checkpoint, printed as rich tables (or
JSON) and written to ``eval.json``.

The model, its data set (same split) and the training temperature come from the checkpoint.
Exit status: 0 done (also when gradient masking is suspected: the flag is in the output),
2 bad input (one line on stderr, no traceback; an ``--output`` that cannot be written is found
before the evaluation runs), 1 eval.json could not be written after all (the results were
printed first), 130 interrupted by Ctrl-C (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..errors import OutputError, UsageError, os_reason
from ..robust.attacks import ATTACKS, DEFAULT_ATTACKS
from ..train.distributed import resolve_device
from .args import number, one_line_parser_error, shift_examples


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``tempfast`` subcommand parser."""
    p = subparsers.add_parser(
        "eval", help="robustness evaluation of a checkpoint (attacks, masking, corruptions)",
        description="Clean accuracy, robust accuracy under an attack suite (per attack and the "
                    "per-example worst case), gradient-masking diagnostics and corruption "
                    "accuracy of a tempfast training checkpoint, all in fp32.")
    p.error = one_line_parser_error("eval")
    p.add_argument("checkpoint", help="a checkpoint written by tempfast train (last.pt, best.pt)")
    g = p.add_argument_group("attacks")
    g.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help=f"comma-separated, from {', '.join(ATTACKS)}, or ta:<Name> for "
                        "torchattacks' attack <Name> at the same budget (ta:PGD, ta:FAB; pip "
                        "install 'tempfast[torchattacks]'); or none (default: "
                        f"{','.join(DEFAULT_ATTACKS)})")
    g.add_argument("--eps", type=number,
                   help="L-inf budget on [0, 1] pixels, e.g. 8/255 (default: the run's --eps)")
    g.add_argument("--alpha", type=number, help="PGD step (default: 2.5 * eps / steps)")
    g.add_argument("--steps", type=int, default=20, help="PGD and APGD iterations (default: 20)")
    g.add_argument("--restarts", type=int, default=1,
                   help="PGD and APGD random restarts (default: 1)")
    g.add_argument("--square-queries", type=int, default=1000,
                   help="Square attack queries per example (default: 1000)")
    g.add_argument("--check-steps", type=int,
                   help="PGD steps of the more-steps masking check (default: 2 * steps)")
    g.add_argument("--temperature", type=number,
                   help="T of the pgd-ce-t attack (default: the checkpoint's final T)")
    g.add_argument("--n-examples", type=int, default=1000,
                   help="evaluate the first N test images (0: all; default: 1000)")
    g.add_argument("--no-calibration", dest="calibration", action="store_false",
                   help="skip the calibration report (ECE, NLL and Brier before and after "
                        "temperature scaling fitted on half the test set, judged on the "
                        "other half)")
    g = p.add_argument_group("corruptions and natural perturbations")
    g.add_argument("--perturbations", action="store_true",
                   help="also the natural perturbations (rotation, translation, scaling, "
                        "elastic; strengths 1-3)")
    g.add_argument("--shift-examples", type=shift_examples,
                   help="test images of the corruptions and perturbations: all, or a count "
                        "(default: those of --n-examples)")
    g.add_argument("--no-corruptions", dest="corruptions", action="store_false",
                   help="skip the corruption suite")
    g.add_argument("--corruptions-dir",
                   help="folder of published CIFAR-10-C / CIFAR-100-C files (<name>.npy, "
                        "labels.npy) to use instead of the regenerated corruptions")
    g.add_argument("--severities", default="1,2,3,4,5",
                   help="comma-separated severities (default: 1,2,3,4,5)")
    g = p.add_argument_group("run")
    g.add_argument("--data-dir", help="where the run's data set is (default: the run's)")
    g.add_argument("--batch-size", type=int, default=512,
                   help="images per attack batch (default: 512)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda when available")
    g.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: the run's --threads, else torch's)")
    g.add_argument("--output",
                   help="where to write eval.json: a file, or a folder (default: next to the "
                        "checkpoint)")
    g.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout instead of tables")
    p.set_defaults(func=_main)
    return p


def _severities(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--severities must be comma-separated integers 1..5, got {text!r}")\
            from None


def _output_path(args: argparse.Namespace) -> Path:
    if args.output is None:
        return Path(args.checkpoint).resolve().parent / "eval.json"
    out = Path(args.output)
    return out / "eval.json" if out.is_dir() or args.output.endswith(("/", "\\")) else out


EXIT_INTERRUPTED = 130


def _main(args: argparse.Namespace) -> int:
    try:
        return _evaluate(args)
    except KeyboardInterrupt:
        print("tempfast eval: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _evaluate(args: argparse.Namespace) -> int:
    from ..robust import checks, render
    from ..robust import evaluation as ev
    from ..robust.attacks import parse_attacks
    from ..train.checkpoint import (
        RESTORE_KEYS,
        check_writable,
        checkpoint_data,
        load_checkpoint,
        restore_model,
    )

    # The settings are checked by the library (its messages name the argument, which
    # tempfast.cli turns into the flag); only what this command adds is checked here.
    attacks = parse_attacks(args.attacks)
    severities = _severities(args.severities)
    if args.n_examples < 0:
        raise UsageError(f"--n-examples must be >= 0 (0: all test images), got "
                         f"{args.n_examples}")
    n_examples = None if args.n_examples == 0 else args.n_examples
    if args.temperature is not None:
        checks.positive(args.temperature, "temperature")
    if args.threads is not None:
        checks.at_least(args.threads, "threads", 1)
    # every setting but the checkpoint's (eps when not given, T) checked before it is loaded
    settings = ev.EvalSettings(
        eps=0.0 if args.eps is None else args.eps, steps=args.steps, train_temperature=1.0,
        attacks=attacks, alpha=args.alpha, restarts=args.restarts, n_examples=n_examples,
        corruptions=args.corruptions, seed=args.seed, square_queries=args.square_queries,
        severities=severities, corruptions_dir=args.corruptions_dir,
        perturbations=args.perturbations, shift_examples=args.shift_examples,
        batch_size=args.batch_size, check_steps=args.check_steps, calibration=args.calibration)
    settings.check()
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, RESTORE_KEYS)
    out = _output_path(args)
    if out.is_dir():
        raise UsageError(f"--output {out} is a folder")
    check_writable(out.parent, "--output" if args.output else
                   "the default output (beside the checkpoint; pass --output to write it "
                   "elsewhere)")
    cfg = ckpt.get("config") or {}
    eps = args.eps if args.eps is not None else cfg.get("eps")
    if eps is None:
        raise UsageError("the checkpoint's run has no --eps; pass --eps")
    temperature = args.temperature or float(ckpt.get("temperature", cfg.get("temp", 1.0)))
    model = restore_model(ckpt, device)
    bundle = checkpoint_data(ckpt, args.data_dir)
    status = None
    if not args.json:
        from rich.console import Console

        err = Console(stderr=True)
        status = lambda message: err.print(message, style="dim", highlight=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or cfg.get("threads") or threads)
    try:
        result = ev.evaluate(model, bundle, settings, progress=status, eps=float(eps),
                             train_temperature=temperature,
                             calibration_temperature=(ckpt.get("calibration") or {}).get(
                                 "temperature"))
    finally:
        torch.set_num_threads(threads)
    result = {"checkpoint": str(Path(args.checkpoint).resolve()), "data": bundle.name,
              "model": ckpt["model_config"]["name"], **result}
    # The results reach stdout before the file is written: a write that fails loses nothing.
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
        for line in render.masking_warnings(result):
            print(line, file=sys.stderr)
    else:
        from rich.console import Console

        console = Console()
        render.render(result, console)
    _write_json(out, result)
    if not args.json:
        console.print(f"wrote {out}", highlight=False)
    return 0


def _write_json(path: Path, result: dict) -> None:
    from ..train.checkpoint import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_reason(exc)}; the results above are "
                          "complete") from None

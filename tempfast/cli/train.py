"""``tempfast train``: the command-line face of :func:`tempfast.train.run`.

Every flag maps onto a :class:`tempfast.train.TrainConfig` field of the same name; a flag left
out takes the per-data-set default (see ``tempfast train --help``). Exit status: 0 done,
2 bad input (one line on stderr, nothing written), 130 interrupted by Ctrl-C (a recovery
checkpoint was written; continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..train.data import DATASETS
from .args import names, number, one_line_parser_error, shift_examples

if TYPE_CHECKING:
    from ..train.config import TrainConfig

EXIT_INTERRUPTED = 130


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``tempfast`` subcommand parser."""
    p = subparsers.add_parser(
        "train", help="standard or PGD adversarial training at a temperature",
        description="Train a classifier with the temperature-scaled cross-entropy "
                    "CE(z / T, y), optionally on PGD adversarial examples, then run a short "
                    "robustness evaluation. Defaults marked 'data' depend on --data.")
    p.error = one_line_parser_error("train")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", choices=DATASETS,
                   help="data set (default digits: scikit-learn's 8x8 digits, built in)")
    g.add_argument("--data-dir", help="folder holding the data files (cifar: ./data; "
                   "fashion-mnist: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR files that are missing")
    g.add_argument("--data-seed", type=int, default=0,
                   help="seed of the digits split, of the synthetic data and of "
                        "--train-subset (0)")
    g.add_argument("--train-subset", type=int,
                   help="train on this many training images: a stratified subset drawn from "
                        "--data-seed (every class's share kept), for quick runs")
    g.add_argument("--num-classes", type=int, help="synthetic: number of classes (1000)")
    g.add_argument("--img-size", type=int,
                   help="imagefolder: image size (first image's); synthetic: 8")
    g.add_argument("--workers", type=int, help="imagefolder: DataLoader workers (min(4, cpus))")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="small_cnn, small_cnn_pool or a timm model name (data: "
                   "small_cnn for digits/synthetic, small_cnn_pool for fashion-mnist/mnist, "
                   "resnet18 otherwise)")
    g.add_argument("--patch-size", type=int,
                   help="vision transformers: patch size in pixels, dividing the image size "
                        "(default: the divisor nearest image size / 8: 4 for 28 px)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("temperature")
    g.add_argument("--temp", type=number, default=1.0, help="training temperature T > 0 (1)")
    g.add_argument("--learn-temp", action="store_true",
                   help="learn T (starting at --temp) with the model")
    g.add_argument("--temp-compensation", default="loss", choices=("loss", "lr", "none"),
                   help="keep the update's size at T = 1's so that T changes only its "
                        "direction: loss (default) multiplies the loss by T (exact for SGD "
                        "and AdamW); lr multiplies the learning rate by T and divides the "
                        "weight decay by T (SGD, fixed T); none is the paper's plain CE(z / T)")
    g.add_argument("--fused-head", action="store_true",
                   help="fuse the classifier and the loss (tempfast.linear_cross_entropy): the "
                        "batch's logits are never built; for many classes (--data synthetic)")
    g = p.add_argument_group("adversarial training")
    g.add_argument("--adv", default="none", choices=("none", "pgd"),
                   help="train on clean inputs (none, the default) or on PGD adversarial examples")
    g.add_argument("--eps", type=number, help="L-inf budget (data: 0.1 digits and fashion-mnist, "
                   "8/255 others)")
    g.add_argument("--alpha", type=number, help="PGD step (data: 0.025 digits and fashion-mnist, "
                   "2/255 others)")
    g.add_argument("--steps", type=int, help="PGD steps (data: 7 digits and fashion-mnist, 10 "
                   "others)")
    g.add_argument("--attack-loss", default="train", choices=("train", "raw"),
                   help="training attack's loss: CE at the training T (train, the default) "
                   "or on raw logits (raw)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs (data: 20 digits, 10 fashion-mnist, 100 "
                   "cifar)")
    g.add_argument("--batch-size", type=int,
                   help="batch size per process (data: 64 digits, 128 fashion-mnist "
                        "and cifar)")
    g.add_argument("--lr", type=number,
                   help="peak learning rate (data: sgd 0.05 digits, 0.1 cifar; adamw 1e-3)")
    g.add_argument("--opt", default="sgd", choices=("sgd", "adamw"),
                   help="sgd (default; momentum 0.9, Nesterov) or adamw")
    g.add_argument("--sched", default="cosine", choices=("cosine", "step", "none"),
                   help="per-step schedule: cosine to 0 (default), x0.1 at 50%% and 75%%, or none")
    g.add_argument("--wd", type=number, help="weight decay (sgd 5e-4, adamw 0.05)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs (0)")
    g.add_argument("--seed", type=int, default=0,
                   help="training seed: init, order, augmentation, PGD (0)")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast precision (none; fp16 adds a gradient scaler)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default): CUDA when available, else CPU")
    g.add_argument("--nproc-per-node", type=int, default=1,
                   help="train with DDP in this many local processes (1), as torchrun "
                        "--standalone --nproc_per_node would")
    g.add_argument("--threads", type=int,
                   help="CPU threads for torch (data: 1 for digits and fashion-mnist, "
                        "torch's default otherwise)")
    g = p.add_argument_group("output")
    g.add_argument("--output", help="run folder (output/train/<data>-<model>-T<temp>-<adv>-"
                   "seed<seed>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run files of a run already in --output")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="print only the final result line")
    mode.add_argument("--json", action="store_true", help="print JSON lines on stdout")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, default=1,
                   help="test every N epochs (1; 0: only after the last)")
    g.add_argument("--eval-adv-examples", type=int, default=512,
                   help="--adv pgd: test images attacked at each evaluated epoch (512; 0: none)")
    g.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the final robustness evaluation (as --eval none)")
    g.add_argument("--eval", dest="eval_preset", choices=("auto", "quick", "full", "none"),
                   default="auto",
                   help="final evaluation: full (the attack suite, its diagnostics and "
                        "escalation, corruptions, calibration), quick (pgd-ce and apgd-dlr on "
                        "at most 200 images, no corruptions or calibration; masking reads "
                        "'not escalated' instead of escalating), none, or auto (default: full "
                        "when it costs at most the training's forward and backward passes, "
                        "else quick); --eval-* flags win over the preset")
    g.add_argument("--eval-examples", type=int,
                   help="final evaluation: test images (data: 360 digits, 1000 "
                        "others)")
    g.add_argument("--eval-steps", type=int, help="final evaluation: PGD steps (max(steps, 10))")
    g.add_argument("--eval-restarts", type=int, default=1,
                   help="final evaluation: PGD restarts (1)")
    g.add_argument("--eval-attacks", type=names,
                   help="final evaluation: comma-separated attacks, ta:<Name> for torchattacks' "
                        "(default: the full suite)")
    g.add_argument("--no-corruptions", dest="eval_corruptions", action="store_false",
                   help="final evaluation: skip the corruption suite")
    g.add_argument("--eval-perturbations", action="store_true",
                   help="final evaluation: also the natural perturbations (rotation, "
                        "translation, scaling, elastic; strengths 1-3)")
    g.add_argument("--eval-shift-examples", type=shift_examples,
                   help="final evaluation: test images of the corruptions and perturbations: "
                        "all, or a count (default: those of --eval-examples)")
    g.add_argument("--eval-square-queries", type=int,
                   help="final evaluation: Square's queries per image (300)")
    p.set_defaults(func=_main)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~tempfast.train.TrainConfig` of parsed ``tempfast train`` arguments."""
    from ..train.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def _main(args: argparse.Namespace) -> int:
    from ..train import RunInterruptedError, run
    from ..train.progress import make_reporter

    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        from ..train.distributed import launch_local

        config_from_args(args).resolved()  # bad flags: one line here, not one per process
        return launch_local(args.nproc_per_node, _without_nproc(args.argv))
    is_main = os.environ.get("RANK", "0") == "0"
    mode = "json" if args.json else "quiet" if args.quiet else "rich"
    reporter = make_reporter(mode, is_main=is_main)
    try:
        run(config_from_args(args), reporter)
    except RunInterruptedError as exc:
        where = (f"checkpoint {exc.path}; continue with --resume" if exc.path
                 else "no epoch had finished, nothing to resume")
        if is_main:
            print(f"tempfast train: interrupted: {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if is_main:
            print("tempfast train: aborted; the checkpoints in the output folder are complete "
                  "up to the last finished epoch", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0

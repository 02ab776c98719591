"""The paper's mechanism on a trained model: how the loss temperature shapes the gradient.

    python -m experiments.gradients RUN/last.pt [RUN2/last.pt ...] \\
        --temps 0.25 0.5 1 2 4 8 16 32 64 --out DIR

For a fixed trained model (each checkpoint) and its first ``--n-examples`` test images, and for
every loss temperature T, :func:`experiments.measure.measure` gives the mean logit-gradient norm
``||(softmax(z / T) - y) / T||`` (checked against autograd), the mean input-gradient norm, the
fraction of exactly-zero input gradients, and the normalised entropy of the gradient weights
over the negative classes (1: spread evenly, 0: all on one class). For large T the softmax
tends to uniform and the logit gradient to ``(1/C - y) / T``: the norm falls as ``1 / T`` and
the negative-class weights become even; for small T it concentrates on the largest wrong logit
and vanishes on confidently classified examples.

Writes ``DIR/gradients.csv`` (one row per checkpoint and T) and ``DIR/gradients.png``
(matplotlib, the optional ``plot`` extra; skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from tempfast.cli.train import number
from tempfast.errors import UsageError
from tempfast.train.checkpoint import atomic_write_text

from .measure import MEASURES

CSV_NAME, PLOT_NAME = "gradients.csv", "gradients.png"
COLUMNS = ("model", "adv", "train_temp", "temperature", "n_examples", *MEASURES)


def analyse(checkpoints: list[str], temps: list[float], out: str | Path, *,
            n_examples: int | None = None, data_dir: str | None = None,
            device: str = "auto") -> list[dict]:
    """Measure every checkpoint at every temperature; write the CSV and the plot; return rows.

    ``n_examples``: test images (None: the run's ``--eval-examples``). The model label is the
    checkpoint's folder name.

    Raises:
        UsageError: an unreadable checkpoint, missing data, a temperature <= 0.
    """
    from tempfast.train.checkpoint import load_checkpoint, restore_model

    from .measure import measure
    from .rows import load_run_data, resolve_device

    if not temps or min(temps) <= 0:
        raise UsageError(f"--temps must be > 0, got {temps}")
    dev = resolve_device(device)
    rows = []
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        cfg = ckpt["config"]
        model = restore_model(ckpt, dev)
        bundle = load_run_data(cfg, data_dir)
        n = n_examples or cfg["eval_examples"]
        label = Path(path).resolve().parent.name
        for t in temps:
            stats = measure(model, bundle.test_batches(512, dev, limit=n), float(t))
            rows.append({"model": label, "adv": cfg["adv"], "train_temp": ckpt["temperature"],
                         "temperature": float(t), "n_examples": min(n, bundle.n_test), **stats})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / CSV_NAME, buf.getvalue())
    from .plots import gradient_figure, have_matplotlib

    if have_matplotlib():
        gradient_figure(rows, out / PLOT_NAME)
    else:
        print("matplotlib is not installed (pip install 'tempfast[plot]'): no plot",
              file=sys.stderr)
    return rows


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a gradients.csv, numbers as floats."""
    with open(path, newline="") as f:
        return [{k: (v if k in ("model", "adv") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.gradients",
        description="Input- and logit-gradient norms and negative-class gradient entropy of "
                    "trained models against the loss temperature T.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoints written by tempfast train (last.pt)")
    p.add_argument("--temps", nargs="+", type=number,
                   default=[0.25, 0.5, 1, 2, 4, 8, 16, 32, 64],
                   help="loss temperatures (0.25 0.5 1 2 4 8 16 32 64)")
    p.add_argument("--n-examples", type=int, help="test images (the run's --eval-examples)")
    p.add_argument("--out", help="output folder (the first checkpoint's folder)")
    p.add_argument("--data-dir", help="where the run's data set is now")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    args = p.parse_args(argv)
    import torch

    try:
        if args.n_examples is not None and args.n_examples < 1:
            raise UsageError(f"--n-examples must be >= 1, got {args.n_examples}")
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        out = args.out or str(Path(args.checkpoints[0]).parent)
        rows = analyse(args.checkpoints, args.temps, out, n_examples=args.n_examples,
                       data_dir=args.data_dir, device=args.device)
    except UsageError as exc:
        print(f"experiments.gradients: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'model':<24} {'T':>6} {'|dL/dz|':>10} {'|dL/dx|':>10} {'zero dx':>8} "
          f"{'neg. entropy':>12} {'p_y':>6}")
    for r in rows:
        print(f"{r['model']:<24} {r['temperature']:>6g} {r['logit_grad_norm']:>10.4g} "
              f"{r['input_grad_norm']:>10.4g} {r['zero_input_grad']:>8.1%} "
              f"{r['neg_entropy_norm']:>12.3f} {r['p_true']:>6.3f}")
    print(f"wrote {Path(out) / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

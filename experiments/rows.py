"""One CSV row per finished run: the trainer's summary plus measurements of the final model.

:func:`make_row` reads a run folder written by ``tempfast train`` (``summary.json``,
``config.yaml``, ``last.pt``), measures the final model on the evaluated test images at its
final temperature (:mod:`experiments.measure`) and returns the row of
:data:`experiments.table.COLUMNS`. :func:`code_revision` names the code that ran.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import table

COMPENSATION_TAGS = {"none": "plain", "loss": "lossxT", "lr": "lrxT"}


@dataclass(frozen=True)
class Run:
    """One cell of the grid: training mode, (initial) temperature, seed, learned T or not, and
    the temperature compensation arm (``--temp-compensation``: ``none`` is the paper's plain
    ``CE(z / T)``, ``loss`` keeps the step size at T = 1's)."""

    adv: str
    temp: float
    seed: int
    learn_temp: bool = False
    compensation: str = "none"

    @property
    def name(self) -> str:
        kind = "learnT" if self.learn_temp else "T"
        tag = COMPENSATION_TAGS[self.compensation]
        return f"{self.adv}-{kind}{number_text(self.temp)}-{tag}-seed{self.seed}"

    def args(self) -> list[str]:
        return ["--temp", number_text(self.temp), *(["--learn-temp"] if self.learn_temp else []),
                "--temp-compensation", self.compensation, "--adv", self.adv,
                "--seed", str(self.seed)]


def number_text(value: float) -> str:
    """Shortest text that reads back as exactly ``value``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def resolve_device(device: str):
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_run_data(config: dict, data_dir: str | None = None):
    """The data bundle of a run's resolved config (``data_dir`` overrides the run's; the test
    set, which is all the measurements use, does not depend on ``--train-subset``)."""
    from tempfast.train.data import load_data

    return load_data(config["data"], data_dir or config["data_dir"], False, config["data_seed"],
                     num_classes=config["num_classes"], img_size=config["img_size"], workers=0)


def environment(device: str, threads: int) -> dict:
    """What ran the runs: torch and triton versions, the device (``cpu``, or the GPU's name)
    and the CPU threads per run."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dev = resolve_device(device)
    kind = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"torch_version": torch.__version__, "triton_version": triton_version,
            "device_kind": kind, "threads": threads}


def code_revision(root: Path | None = None) -> str:
    """Git revision of the checkout at ``root`` (default: the one the ``tempfast`` package is
    imported from), with ``-dirty`` when code or settings under tempfast/, kernels/ or
    experiments/ differ from it (results and Markdown text excluded: a README edited while a
    sweep runs does not change what the rows measured); ``tempfast <version>`` outside a git
    checkout."""
    import tempfast

    root = Path(tempfast.__file__).resolve().parents[1] if root is None else root

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", "tempfast", "kernels", "experiments",
                    ":(exclude)experiments/results", ":(exclude,glob)**/*.md")
    except (OSError, subprocess.CalledProcessError):
        return f"tempfast {tempfast.__version__}"
    return rev + ("-dirty" if dirty else "")


class Measurer:
    """Measures final models (see :mod:`experiments.measure`), loading each data set once."""

    def __init__(self, data_dir: str | None, device: str) -> None:
        self.data_dir = data_dir
        self.device = resolve_device(device)
        self.bundles: dict[tuple, object] = {}

    def bundle(self, config: dict):
        key = (config["data"], config["data_seed"], config["num_classes"], config["img_size"])
        if key not in self.bundles:
            self.bundles[key] = load_run_data(config, self.data_dir)
        return self.bundles[key]

    def __call__(self, run_dir: Path, n_examples: int, temperature: float,
                 eps_curve: list[float] | None = None, steps: int = 10,
                 seed: int = 0) -> dict:
        """The measurements of :mod:`experiments.measure` at ``temperature``, and with
        ``eps_curve`` the worst-case robust accuracy at each eps (``curve``); ``n_test``: the
        size of the whole test set."""
        from tempfast.train.checkpoint import load_checkpoint, restore_model

        from .measure import eps_curve as curve
        from .measure import measure

        ckpt = load_checkpoint(run_dir / "last.pt")
        model = restore_model(ckpt, self.device)
        bundle = self.bundle(ckpt["config"])
        out = measure(model, bundle.test_batches(512, self.device, limit=n_examples),
                      temperature)
        out["n_test"] = bundle.n_test
        if eps_curve:
            batches = list(bundle.test_batches(512, self.device, limit=n_examples))
            out["curve"] = curve(model, batches, eps_curve, steps=steps, seed=seed)
        return out


def masking_kind(masking: dict | None, robust: dict, n: int) -> str | None:
    """``none``, ``ce`` (only the CE-loss checks failed: the scale-invariant attacks and the
    worst case stay trustworthy) or ``general`` (another check failed); None: not measured."""
    from tempfast.robust.masking import CE_ATTACKS, judge

    if masking is None:
        return None
    if not masking["suspected"]:
        return "none"
    rest = dict(masking, zero_grad_fraction={k: v for k, v in
                                             masking["zero_grad_fraction"].items()
                                             if k not in ("ce", "ce_at_T")})
    general = judge(rest, {k: v for k, v in robust.items() if k not in CE_ATTACKS}, n)
    return "general" if general["suspected"] else "ce"


def format_curve(curve: dict[float, float] | None) -> str | None:
    """``{eps: accuracy}`` as the CSV cell ``eps:acc;eps:acc`` (None when not measured)."""
    if not curve:
        return None
    return ";".join(f"{number_text(e)}:{a:.6g}" for e, a in sorted(curve.items()))


def per_example_record(run: Run, run_dir: Path) -> dict | None:
    """The run's per-example masks for ``per_example.jsonl`` (``run``, ``n``, ``clean``,
    ``worst_case``, ``attacks``: hex-packed by :func:`tempfast.robust.evaluation.pack_mask`,
    the first ``n`` test images in order), or None when its evaluation recorded none."""
    ev = json.loads((run_dir / "summary.json").read_text()).get("eval") or {}
    per = ev.get("per_example")
    if not per:
        return None
    return {"run": run.name, "n": ev["n_examples"], **per}


def last_two_epochs_change(run_dir: Path) -> dict[str, float | None]:
    """How much the clean and the training-attack test accuracy (``test_acc``,
    ``test_robust_acc`` of ``metrics.jsonl``) changed over the last two epochs: the last
    epoch's value minus the value two epochs before it (the plateau rule of the PGD sweep:
    the mean of each over the T = 1 seeds under a point). None where the run has fewer than
    three epochs or did not measure the accuracy; a resumed run's repeated epoch counts once
    (its last record)."""
    by_epoch: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                by_epoch[record["epoch"]] = record
    epochs = sorted(by_epoch)

    def change(key: str) -> float | None:
        if len(epochs) < 3:
            return None
        last, before = by_epoch[epochs[-1]].get(key), by_epoch[epochs[-3]].get(key)
        return None if last is None or before is None else last - before

    return {"clean_change_last2": change("test_acc"),
            "robust_change_last2": change("test_robust_acc")}


def make_row(run: Run, run_dir: Path, measurer: Measurer, *, command: str, sweep_command: str,
             revision: str, resumed: bool, process_s: float | None, env: dict,
             eps_curve: list[float] | None = None) -> dict:
    """The CSV row of a finished run (its summary.json plus the final-model measurements;
    ``eps_curve``: the eps values of the worst-case curve, measured for standard training)."""
    from tempfast.robust.attacks import ATTACKS

    summary = json.loads((run_dir / "summary.json").read_text())
    ev = summary.get("eval") or {}
    s = ev.get("settings") or {}
    robust = summary.get("robust_acc") or {}
    masking = summary.get("masking")
    zero = (masking or {}).get("zero_grad_fraction", {})
    cal = summary.get("calibration") or {}
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    n = ev.get("n_examples") or config["eval_examples"]
    curve = eps_curve if run.adv == "none" else None
    stats = measurer(run_dir, n, summary["final_temperature"], curve,
                     steps=s.get("steps") or config["eval_steps"], seed=run.seed)
    return {
        "run": run.name, "data": summary["data"], "model": summary["model"], "adv": run.adv,
        "temp": run.temp, "learn_temp": run.learn_temp, "compensation": run.compensation,
        "final_temp": summary["final_temperature"], "seed": run.seed,
        "train_subset": config.get("train_subset"),
        "epochs": summary["epochs"],
        "test_acc": (summary.get("last_epoch") or {}).get("test_acc"), "n_test": stats["n_test"],
        "clean_acc": summary["clean_acc"],
        "corruption_acc": summary["corruption_acc"],
        "perturbation_acc": summary.get("perturbation_acc"),
        **{f"perturb_{name}": row["mean"] for name, row in
           ((ev.get("perturbations") or {}).get("per_perturbation") or {}).items()},
        "shift_examples": (ev.get("perturbations") or ev.get("corruptions") or {}).get(
            "n_examples"),
        **{table.robust_column(a): robust.get(a) for a in ATTACKS},
        "worst_case_acc": summary["worst_case_acc"],
        "masking_suspected": None if masking is None else masking["suspected"],
        "masking_kind": masking_kind(masking, robust, n),
        "attacks_converged": ((masking or {}).get("convergence") or {}).get("converged"),
        "convergence_rounds": ((masking or {}).get("convergence") or {}).get("rounds"),
        **{f"zero_grad_{k}": zero.get(k) for k in table.ZERO_GRAD_LOSSES},
        "masking_reasons": " | ".join((masking or {}).get("reasons", [])) or None,
        "logit_norm": stats["logit_norm"], "margin": stats["margin"],
        "logit_grad_norm_at_T": stats["logit_grad_norm"],
        "input_grad_norm_at_T": stats["input_grad_norm"],
        "neg_entropy_norm_at_T": stats["neg_entropy_norm"], "p_true_at_T": stats["p_true"],
        "ece_before": cal.get("ece_before"), "ece_after": cal.get("ece_after"),
        "nll_before": cal.get("nll_before"), "nll_after": cal.get("nll_after"),
        "cal_temperature": cal.get("temperature"),
        "effective_temperature": cal.get("effective_temperature"),
        "cal_examples": cal.get("report_examples"),
        "eps_curve": format_curve(stats.get("curve")),
        "eps": s.get("eps", config["eps"]), "eval_examples": n,
        "eval_steps": s.get("steps"), "eval_restarts": s.get("restarts"),
        "square_queries": s.get("square_queries") if "square" in robust else None,
        **last_two_epochs_change(run_dir),
        "train_time_s": summary["train_time_s"], "eval_time_s": summary["eval_time_s"],
        "wall_time_s": summary["wall_time_s"], "process_s": process_s,
        **env, "git_rev": revision, "resumed": resumed, "command": command,
        "sweep_command": sweep_command,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


"""Every setting of a training run (:class:`TrainConfig`), its per-data-set defaults and its
checks. The ``tempfast train`` flags are these fields (``--batch-size`` is ``batch_size``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import SettingError
from ..robust import checks
from ..robust.attacks import parse_attacks
from .data import DATASETS
from .models import check_model_name

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per data set: model, epochs, batch size, SGD learning rate, PGD eps / alpha / steps, final
# evaluation size, CPU threads (None: torch's default). Digits use one thread: its tiny ops gain
# little from a second one, and lose several-fold when the cores are shared with other jobs.
DATA_DEFAULTS = {
    "digits": dict(model="small_cnn", epochs=20, batch_size=64, lr=0.05,
                   eps=0.1, alpha=0.025, steps=7, eval_examples=360, threads=1),
    "cifar10": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                    eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "cifar100": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                     eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "imagefolder": dict(model="resnet18", epochs=100, batch_size=128, lr=0.1,
                        eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
    "synthetic": dict(model="small_cnn", epochs=10, batch_size=256, lr=0.05,
                      eps=8 / 255, alpha=2 / 255, steps=10, eval_examples=1000),
}
# 28x28 grey images: the small CNN that pools after its first two blocks (3.4x the speed of
# small_cnn at this size), eps 0.1 as in the MNIST literature, one CPU thread as for digits.
for _name in ("fashion-mnist", "mnist"):
    DATA_DEFAULTS[_name] = dict(model="small_cnn_pool", epochs=10, batch_size=128, lr=0.05,
                                eps=0.1, alpha=0.025, steps=7, eval_examples=1000, threads=1)
# How the learning signal is kept at T = 1's size (see TrainConfig.temp_compensation).
TEMP_COMPENSATIONS = ("loss", "lr", "none")
OPT_DEFAULTS = {"sgd": dict(wd=5e-4), "adamw": dict(lr=1e-3, wd=0.05)}
CHOICES = {"opt": tuple(OPT_DEFAULTS), "sched": ("cosine", "step", "none"),
           "temp_compensation": TEMP_COMPENSATIONS,
           "adv": ("none", "pgd"), "attack_loss": ("train", "raw"), "amp": tuple(AMP_DTYPES),
           "device": ("auto", "cpu", "cuda"), "eval_preset": ("auto", "quick", "full", "none")}
# Integer settings and their smallest allowed value.
AT_LEAST = {"steps": 1, "epochs": 1, "batch_size": 1, "eval_every": 0, "warmup_epochs": 0,
            "train_subset": 1,
            "eval_examples": 1, "eval_adv_examples": 0, "eval_steps": 1, "eval_restarts": 1,
            "workers": 0, "threads": 1, "patch_size": 1}


@dataclass
class TrainConfig:
    """Every setting of a run; ``None`` means the per-data-set / per-optimiser default
    (:data:`DATA_DEFAULTS`, :data:`OPT_DEFAULTS`), filled in by :meth:`resolved`.

    ``temp_compensation`` keeps the step size of the update at T = 1's, so that T changes only
    its direction. The gradient of ``CE(z / T, y)`` is ``J^T (softmax(z / T) - y) / T``: its
    size falls as ``1 / T``.

    * ``"loss"`` (default): the loss is multiplied by T (detached: a learned T gets the
      gradient of the plain loss) before ``backward``, so the gradient is ``J^T (p_T - y)``.
      Exact for SGD with momentum and weight decay (the momentum buffer is linear in the
      gradient; weight decay is added apart from it) and for AdamW (invariant to a gradient's
      scale anyway, up to its epsilon; its decay is decoupled), with a fixed or learned T.
    * ``"lr"``: SGD only, fixed T: the learning rate is multiplied by T and the weight decay
      divided by T, so that ``lr T (g / T + (wd / T) w) = lr (g + wd w)`` (exact). For AdamW
      an lr times T would be a T times larger step: refused.
    * ``"none"``: the paper's setting, the plain ``CE(z / T, y)`` at the set learning rate.
    """

    data: str = "digits"
    data_dir: str | None = None
    download: bool = False
    data_seed: int = 0
    train_subset: int | None = None
    num_classes: int | None = None
    img_size: int | None = None
    workers: int | None = None
    model: str | None = None
    patch_size: int | None = None
    temp: float = 1.0
    learn_temp: bool = False
    temp_compensation: str = "loss"
    fused_head: bool = False
    adv: str = "none"
    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    attack_loss: str = "train"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    opt: str = "sgd"
    sched: str = "cosine"
    wd: float | None = None
    warmup_epochs: int = 0
    seed: int = 0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    threads: int | None = None
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    eval_every: int = 1
    eval_adv_examples: int = 512
    final_eval: bool = True
    eval_preset: str = "auto"
    eval_examples: int | None = None
    eval_steps: int | None = None
    eval_restarts: int = 1
    eval_attacks: list[str] | None = None
    eval_corruptions: bool = True
    eval_perturbations: bool = False
    eval_shift_examples: int | str | None = None
    eval_square_queries: int | None = None

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` default filled in and the settings checked.

        Raises:
            SettingError: (a ``ValueError`` naming the field) an unknown data set, model,
                optimiser, ...; eps outside [0, 1]; steps < 1; temperature <= 0; any other
                value out of range.
        """
        checks.choice(self.data, "data", DATASETS)
        for name, choices in CHOICES.items():
            checks.choice(getattr(self, name), name, choices)
        base = DATA_DEFAULTS[self.data] | OPT_DEFAULTS[self.opt]
        cfg = dataclasses.replace(self, **{
            k: base.get(k) for k in ("model", "eps", "alpha", "steps", "epochs", "batch_size",
                                     "lr", "wd", "eval_examples", "threads")
            if getattr(self, k) is None
        })
        if cfg.eval_steps is None and isinstance(cfg.steps, int):
            cfg.eval_steps = max(cfg.steps, 10)
        if cfg.output is None:
            learned = "-learned" if cfg.learn_temp else ""
            cfg.output = (f"output/train/{cfg.data}-{cfg.model}-T{cfg.temp:g}{learned}-"
                          f"{cfg.adv}-seed{cfg.seed}")
        cfg.check()
        return cfg

    def check(self) -> None:
        """Check a resolved configuration (every default filled in) with the shared checks of
        :mod:`tempfast.robust.checks`; raises :class:`~tempfast.errors.SettingError`."""
        checks.positive(self.temp, "temp")
        checks.eps(self.eps)
        checks.positive(self.alpha, "alpha")
        for name, low in AT_LEAST.items():
            value = getattr(self, name)
            if value is not None:
                checks.at_least(value, name, low)
        checks.positive(self.lr, "lr")
        checks.non_negative(self.wd, "wd")
        if self.resume and self.overwrite:
            raise SettingError("resume", "and --overwrite exclude each other")
        if self.temp_compensation == "lr" and (self.opt != "sgd" or self.learn_temp):
            raise SettingError("temp_compensation", "lr is exact only for SGD with a fixed T "
                                                    "(AdamW is already invariant to the "
                                                    "gradient's scale): use loss")
        check_model_name(self.model)
        if self.eval_attacks is not None:
            parse_attacks(self.eval_attacks, "eval_attacks")
        if self.eval_shift_examples not in (None, "all"):
            checks.at_least(self.eval_shift_examples, "eval_shift_examples", 1)
        if self.eval_square_queries is not None:
            checks.at_least(self.eval_square_queries, "eval_square_queries", 1)

    @property
    def loss_factor(self) -> bool:
        """Whether the loss is multiplied by T before backward (``temp_compensation="loss"``)."""
        return self.temp_compensation == "loss"

    def optimiser_settings(self) -> tuple[float, float]:
        """``(lr, wd)`` the optimiser is built with: scaled by T and 1 / T under
        ``temp_compensation="lr"``."""
        if self.temp_compensation == "lr":
            return self.lr * self.temp, self.wd / self.temp
        return self.lr, self.wd

    def as_dict(self) -> dict:
        """Plain JSON/YAML-able dict (what config.yaml and checkpoints hold)."""
        return dataclasses.asdict(self)

"""Robustness evaluation: clean accuracy, an attack suite with a per-example worst case,
gradient-masking diagnostics and common corruptions.

Everything runs in fp32 (autocast off) on the model's device, in eval mode, on the first
``n_examples`` test images of a bundle (``bundle.test_batches(batch_size, device, limit)``
yielding ``(x, y)``, x ``(N, C, H, W)`` in [0, 1]). The model takes [0, 1] images and returns
logits ``(N, num_classes)``.

* clean accuracy ``mean(argmax z(x) = y)``;
* robust accuracy per attack (:data:`tempfast.robust.attacks.ATTACKS`): an example is robust when it
  is classified correctly both clean and after the attack (attacks run on the clean-correct
  examples only);
* worst case: robust only if no attack broke it (the suite's, the diagnostics' runs at the
  evaluation's eps, the escalation's), the headline number;
* :mod:`tempfast.robust.masking` diagnostics (``SUSPECTED GRADIENT MASKING`` when a check
  fails), and an escalation to stronger attacks when one does (see :func:`evaluate`);
* corruption accuracy per corruption and severity and the mean over both, on the regenerated
  suite (:mod:`tempfast.robust.corruptions`) or on published CIFAR-10-C / CIFAR-100-C files.

Each attack, each extra diagnostic run and each corrupted batch has its own seed derived from
``seed``, so a number does not depend on which other attacks run; the caller's RNG state is
left untouched.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError
from . import checks, convergence, masking
from . import corruptions as corr
from . import perturbations as pert
from .attacks import build_attack, eval_mode, parse_attacks, seeded
from .bpda import declares_preprocessing
from .targeted import TARGETS

Progress = Callable[[str], None]

EOT_SAMPLES = 32  # draws whose gradients the escalation averages on a stochastic model
VOTES = 32  # forward passes whose majority classifies an input of a stochastic model

def derive_seed(seed: int, *keys: str | int) -> int:
    """A 31-bit seed from ``seed`` and ``keys`` (CRC-32, stable across runs and platforms)."""
    return zlib.crc32("/".join(map(str, (seed, *keys))).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class EvalSettings:
    """Everything that shapes an evaluation's numbers (see :func:`evaluate`).

    Attributes:
        eps: L-infinity budget on [0, 1] pixels.
        steps: iterations of PGD and APGD.
        train_temperature: the training T (``pgd-ce-t`` attacks CE at this T).
        attacks: names from :data:`tempfast.robust.attacks.ATTACKS`; None: the default suite
            (``pgd-ce, pgd-ce-t, pgd-ce-adaptive, pgd-cw, apgd-dlr, square``); empty: none.
        alpha: PGD step (None: ``2.5 * eps / steps``).
        restarts: random restarts of PGD and APGD.
        n_examples: the first test images evaluated (None: all).
        corruptions: run the corruption suite (regenerated, or the files in
            ``corruptions_dir``) at ``severities``.
        seed: base seed of every random choice.
        square_queries: Square's query budget per example.
        severities: corruption severities to run (1..5).
        corruptions_dir: published CIFAR-10-C / CIFAR-100-C files to use instead of the
            regenerated corruptions.
        batch_size: examples per attack batch.
        check_steps: PGD steps of the more-steps diagnostic (None: ``2 * steps``).
        eot: forward passes whose gradients the escalation averages on a stochastic model.
        bpda: pass gradients straight through the model's declared non-differentiable
            preprocessing (:class:`tempfast.robust.bpda.NonDifferentiable`) in every gradient
            attack; None: only in the escalation, when masking is suspected.
        calibration: measure calibration on the whole test set (:func:`calibration_report`):
            the model's probabilities ``softmax(z / train_temperature)`` before and after
            temperature scaling fitted on one half and reported on the other.
        calibration_temperature: a temperature fitted before (``tempfast calibrate``, on the
            same fit half) to report instead of fitting one.
        perturbations: run the natural perturbations (:mod:`tempfast.robust.perturbations`:
            rotation, translation, scaling, elastic) at strengths 1-3.
        shift_examples: the test images of the corruptions and perturbations: None, the
            evaluated ones (``n_examples``); ``"all"``, the whole test set; or a count.
        escalate: run the stronger attacks when masking is suspected and raise the attacks'
            budget until they converge (:mod:`tempfast.robust.convergence`); False (a quick
            evaluation): the verdict says "not escalated" and the convergence line "not
            converged" instead.
    """

    eps: float
    steps: int
    train_temperature: float
    attacks: Sequence[str] | str | None = None
    alpha: float | None = None
    restarts: int = 1
    n_examples: int | None = None
    corruptions: bool = True
    seed: int = 0
    square_queries: int = 1000
    severities: Sequence[int] = corr.SEVERITIES
    corruptions_dir: str | None = None
    batch_size: int = 512
    check_steps: int | None = None
    eot: int = EOT_SAMPLES
    bpda: bool | None = None
    calibration: bool = True
    calibration_temperature: float | None = None
    perturbations: bool = False
    shift_examples: int | str | None = None
    escalate: bool = True

    def check(self) -> None:
        """Raise :class:`~tempfast.errors.SettingError` naming the first setting the suite
        cannot run (the checks of :mod:`tempfast.robust.checks`), or an unknown attack."""
        parse_attacks(self.attacks)
        checks.eps(self.eps)
        if self.alpha is not None:
            checks.positive(self.alpha, "alpha")
        checks.at_least(self.steps, "steps", 1)
        checks.at_least(self.restarts, "restarts", 1)
        if self.n_examples is not None:
            checks.at_least(self.n_examples, "n_examples", 1)
        checks.at_least(self.square_queries, "square_queries", 1)
        if self.check_steps is not None:
            checks.at_least(self.check_steps, "check_steps", 1)
        checks.severities(self.severities)
        checks.at_least(self.batch_size, "batch_size", 1)
        checks.at_least(self.eot, "eot", 1)
        if self.shift_examples is not None and self.shift_examples != "all":
            checks.at_least(self.shift_examples, "shift_examples", 1)

    def resolved(self) -> EvalSettings:
        """These settings with ``attacks``, ``alpha`` and ``check_steps`` resolved (the suite's
        names, ``2.5 * eps / steps``, ``2 * steps``)."""
        return dataclasses.replace(
            self, attacks=parse_attacks(self.attacks),
            alpha=2.5 * self.eps / self.steps if self.alpha is None else float(self.alpha),
            check_steps=2 * self.steps if self.check_steps is None else self.check_steps)


SHORT_SETTINGS = {
    "steps": 10,
    "restarts": 1,
    "n_examples": 360,
    "square_queries": 300,
    "severities": (1, 3, 5),
}
"""Settings of the short evaluation ``tempfast train`` runs at its end (7-9 s for the 360 digits
test images and the small CNN on one CPU thread); the trainer's flags set the rest (and may
override ``steps``, ``restarts`` and ``n_examples``)."""

QUICK_SETTINGS = {
    "attacks": ("pgd-ce", "apgd-dlr"),
    "n_examples": 200,
    "corruptions": False,
    "perturbations": False,
    "calibration": False,
    "escalate": False,
}
"""``tempfast train --eval quick``: one attack on CE at T and one scale-invariant attack, on at
most 200 test images, no corruptions, perturbations or calibration, and no escalation (a
suspected masking reads "not escalated", unconverged attacks "not converged"). Explicit
``--eval-*`` flags win over these."""


def pack_mask(mask: Tensor) -> str:
    """A boolean mask ``(N,)`` as hex digits, 4 examples each, the first example in the highest
    bit (``unpack_mask`` reverses it)."""
    bits = np.packbits(mask.detach().cpu().numpy().astype(bool))
    return bits.tobytes().hex()[:(mask.numel() + 3) // 4]


def unpack_mask(text: str, n: int) -> Tensor:
    """The ``(n,)`` boolean mask that :func:`pack_mask` wrote as ``text``."""
    data = bytes.fromhex(text + "0" * (len(text) % 2))
    return torch.from_numpy(np.unpackbits(np.frombuffer(data, np.uint8))[:n].astype(bool))


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _accuracy(mask: Tensor) -> float:
    return float(mask.sum()) / mask.numel() if mask.numel() else 0.0


class Judge:
    """Whether a model classifies inputs correctly: one forward pass, or for a stochastic
    model (:func:`is_stochastic`) the majority of ``votes`` passes drawn from a fixed seed.

    The fixed seed gives every example the same random draws each time its batch is judged
    (clean, and after each attack), so a robust mask measures the attack, not the model's
    noise: with fresh draws, the worst case over a dozen masks would count every example that
    one noisy judgement got wrong."""

    def __init__(self, model: nn.Module, votes: int = 1, seed: int = 0) -> None:
        self.model, self.votes, self.seed = model, votes, seed

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.votes == 1:
            return self.model(x).argmax(1) == y
        with seeded(self.seed, x.device):
            predictions = torch.stack([self.model(x).argmax(1) for _ in range(self.votes)])
        return predictions.mode(0).values == y


def _robust_mask(judge: Judge, attack: Callable[[Tensor, Tensor], Tensor],
                 batches: list[tuple[Tensor, Tensor]], correct: list[Tensor]) -> Tensor:
    """Per-example robust mask: correct clean and after ``attack`` (run on correct ones)."""
    out = []
    for (x, y), ok in zip(batches, correct, strict=True):
        idx = ok.nonzero().squeeze(1)
        if not idx.numel():
            out.append(ok.clone())
            continue
        attacked = x.clone()
        attacked[idx] = attack(x[idx], y[idx])
        out.append(ok & judge(attacked, y))  # the whole batch: the judge's draws per example
    return torch.cat(out)


def is_stochastic(model: nn.Module, x: Tensor) -> bool:
    """Whether two forward passes on the same inputs differ (random preprocessing, dropout
    left on, noise): gradients of such a model are samples, and attacks need EOT."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


FORWARD_PASS = 1 / 3  # a forward pass alone, in forward + backward passes


def attack_passes(name: str, steps: int, restarts: int, queries: int) -> float:
    """Forward + backward passes per example of one attack run (Square: its queries, forward
    passes only)."""
    if name in ("square", "ta:Square"):
        return restarts * queries * FORWARD_PASS
    if name == "pgd-targeted":
        return restarts * steps * TARGETS
    return restarts * steps


def _test_size(bundle) -> int | None:
    return getattr(bundle, "n_test", None)


def planned_passes(settings: EvalSettings, n: int, n_test: int | None = None) -> dict[str, float]:
    """The evaluation's planned work, in forward + backward passes over one image, per stage
    (``attacks``, ``diagnostics``, ``corruptions``, ``perturbations``, ``calibration``) for
    ``n`` evaluated images (``n_test``: the whole test set, which the calibration and
    ``shift_examples="all"`` read). The eps curve is
    counted in full (it stops early once accuracy reaches its floor); an escalation, which
    runs only when masking is suspected, and the convergence rounds, which run only when the
    attacks had not converged, are not counted."""
    cfg = settings.resolved()
    out = {"attacks": n * sum(attack_passes(a, cfg.steps, cfg.restarts, cfg.square_queries)
                              for a in cfg.attacks)}
    if cfg.attacks:
        curve = max(len(masking.eps_points(cfg.eps)) - 1, 0)
        base = 0 if "pgd-cw" in cfg.attacks else cfg.steps * cfg.restarts
        out["diagnostics"] = n * (1 + base + curve * cfg.steps * cfg.restarts
                                  + cfg.check_steps * cfg.restarts
                                  + cfg.steps * (cfg.restarts + 1))
    shifted = _shift_count(cfg, n, n_test)
    if cfg.corruptions:
        out["corruptions"] = shifted * len(corr.CORRUPTIONS) * len(cfg.severities) * FORWARD_PASS
    if cfg.perturbations:
        out["perturbations"] = (shifted * len(pert.PERTURBATIONS) * len(pert.STRENGTHS)
                                * FORWARD_PASS)
    if cfg.calibration:
        out["calibration"] = (n_test or n) * FORWARD_PASS
    return out


def _shift_limit(cfg: EvalSettings) -> int | None:
    """The ``limit`` of the corruptions' and perturbations' test batches."""
    if cfg.shift_examples is None:
        return cfg.n_examples
    return None if cfg.shift_examples == "all" else int(cfg.shift_examples)


def _shift_count(cfg: EvalSettings, n: int, n_test: int | None) -> int:
    """Test images of the corruptions and perturbations (see ``shift_examples``)."""
    if cfg.shift_examples is None:
        return n
    total = n_test if n_test is not None else n
    return total if cfg.shift_examples == "all" else min(int(cfg.shift_examples), total)


class _Tracker:
    """The evaluation's progress against its plan: each message says how much is done and,
    once something is, about how long the rest takes at the rate so far."""

    def __init__(self, progress: Progress | None, total: float) -> None:
        self.progress, self.total, self.done = progress, max(total, 1e-9), 0.0
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        if self.progress is None:
            return
        if self.done > 0:
            elapsed = time.perf_counter() - self.start
            left = elapsed * max(self.total - self.done, 0.0) / self.done
            message += f"  ({min(self.done / self.total, 1):.0%} done, about {duration(left)} left)"
        self.progress(message)

    def add(self, passes: float) -> None:
        self.done += passes


def duration(seconds: float) -> str:
    """``45 s``, ``3.2 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def evaluate(model: nn.Module, bundle, settings: EvalSettings | None = None, *,
             progress: Progress | None = None, **overrides) -> dict:
    """Evaluate ``model`` on ``bundle``'s first ``settings.n_examples`` test images (all if
    None).

    Args:
        settings: what shapes the numbers (:class:`EvalSettings`); ``overrides`` (its field
            names as keywords) replace some of its fields, or, without ``settings``, are all
            of them: ``evaluate(model, bundle, eps=0.1, steps=20, train_temperature=8.0)``.
        progress: None, or a callable receiving one-line status messages as work proceeds.

    When more steps or restarts of CW-margin PGD find more, the attacks had not converged: the
    evaluation raises their budget (:mod:`tempfast.robust.convergence`) and reports it under
    ``masking["convergence"]``, apart from masking. When the diagnostics suspect masking, the
    evaluation escalates, says so and records it under ``escalation``: Square with four times
    the queries and two restarts; on a stochastic model (two forward passes differ) the
    scale-invariant gradient attacks with gradients averaged over ``eot`` passes (EOT) and
    ``check_steps`` steps on the averaged gradient; on a model that declares non-differentiable
    preprocessing, those attacks with straight-through gradients (BPDA). Every escalated attack,
    and every diagnostic run at the evaluation's eps, counts in the per-example worst case.

    Returns:
        a JSON-able dict: ``clean_acc``, ``robust_acc`` (attack -> accuracy),
        ``worst_case_acc`` (None without attacks), ``extra_robust_acc`` (the diagnostics' and
        escalation's runs at eps that count in the worst case), ``attack_seconds``,
        ``masking`` (``suspected``, ``reasons``, ``ce_only``, ``verdict`` and the
        diagnostics, see :mod:`tempfast.robust.masking`; None without attacks: the
        diagnostics then do not run), ``escalation`` (None, or why, what
        ran and its accuracies), ``corruption_acc`` (mean, None when not run),
        ``corruptions`` (source, severities, per corruption: accuracy per severity and mean,
        ``n_examples``), ``perturbation_acc`` and ``perturbations`` (the same for the natural
        perturbations by strength; None when not run),
        ``per_example`` (the evaluated images' masks, packed by :func:`pack_mask`: ``clean``,
        ``worst_case``, and per attack of ``robust_acc`` and ``extra_robust_acc``, for paired
        tests between models evaluated on the same images), ``n_examples``, ``settings``
        (every setting that shapes a number, the resolved ``alpha`` and ``check_steps``;
        ``severities`` and ``corruptions_dir`` None without corruptions), ``seconds``.

    Raises:
        SettingError: a setting out of range or an unknown attack (a ``ValueError`` naming the
            argument).
        UsageError: an empty test set, or corruption files that do not fit.
    """
    start = time.perf_counter()
    settings = EvalSettings(**overrides) if settings is None \
        else dataclasses.replace(settings, **overrides)
    settings.check()
    cfg = settings.resolved()
    device = _model_device(model)

    tracker = _Tracker(progress, 0.0)
    say = tracker.say

    with eval_mode(model), torch.autocast(device.type, enabled=False):
        batches = [(x.float(), y) for x, y in bundle.test_batches(cfg.batch_size, device,
                                                                   limit=cfg.n_examples)]
        if not batches:
            raise UsageError("the test set is empty")
        files = None
        if cfg.corruptions and cfg.corruptions_dir is not None:
            files = corr.CorruptionFiles(cfg.corruptions_dir)
            shape = tuple(batches[0][0].shape[1:])
            if files.image_shape != shape:
                raise UsageError(f"--corruptions-dir: images are {files.image_shape} (C, H, W) "
                                 f"but the model's test images are {shape}")
        with seeded(derive_seed(cfg.seed, "clean"), device):
            stochastic = is_stochastic(model, batches[0][0])
            judge = Judge(model, VOTES if stochastic else 1, derive_seed(cfg.seed, "judge"))
            correct = [judge(x, y) for x, y in batches]
        n = sum(int(c.numel()) for c in correct)
        tracker.total = max(sum(planned_passes(cfg, n, _test_size(bundle)).values()), 1e-9)

        def run(name: str, *, eps: float, alpha: float, steps: int, restarts: int,
                key: str = "suite", queries: int = cfg.square_queries, eot: int = 1,
                bpda: bool = bool(cfg.bpda)) -> Tensor:
            attack_seed = derive_seed(cfg.seed, name, key)
            attack = build_attack(name, model, eps=eps, alpha=alpha, steps=steps,
                                  restarts=restarts, temperature=float(cfg.train_temperature),
                                  seed=attack_seed, square_queries=queries, eot=eot,
                                  bpda=bpda)
            with seeded(attack_seed, device):
                mask = _robust_mask(judge, attack, batches, correct)
            tracker.add(n * attack_passes(name, steps, restarts, queries) * eot)
            return mask

        robust, seconds = {}, {}
        for name in cfg.attacks:
            say(f"attack {name} on {n} examples")
            t0 = time.perf_counter()
            robust[name] = run(name, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                               restarts=cfg.restarts)
            seconds[name] = round(time.perf_counter() - t0, 3)
        report, extra, escalation = None, {}, None
        if cfg.attacks:  # no attack, nothing to check for masking: the diagnostics skip too
            say("diagnostics: input gradients")
            with seeded(derive_seed(cfg.seed, "zero-grad"), device):
                zero_grad = masking.zero_gradient_fractions(
                    model, [(x[ok], y[ok]) for (x, y), ok in zip(batches, correct, strict=True)],
                    float(cfg.train_temperature))
            tracker.add(n)
            report, extra = masking.run_diagnostics(
                run, robust, zero_grad, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps,
                restarts=cfg.restarts, more_steps=cfg.check_steps, stochastic=stochastic,
                rounds=convergence.CAP_ROUNDS if cfg.escalate else 0, status=say)
        if report is not None and report["suspected"] and cfg.eps > 0:
            if cfg.escalate:
                escalation = _escalate(run, model, cfg, stochastic, say)
                extra |= escalation.pop("masks")
            else:
                report["verdict"] = ("not escalated: masking suspected and this quick "
                                     "evaluation does not run the stronger attacks (run the "
                                     "full one)")
        shift_batches = batches
        if cfg.shift_examples is not None and (cfg.corruptions or cfg.perturbations):
            shift_batches = [(x.float(), y) for x, y in
                             bundle.test_batches(cfg.batch_size, device,
                                                 limit=_shift_limit(cfg))]
        corruption = perturbation = None
        if cfg.corruptions:
            corruption = _corruptions(judge, shift_batches, cfg, files, device, tracker)
        if cfg.perturbations:
            perturbation = _perturbations(judge, shift_batches, cfg, tracker)
        calibrated = None
        if cfg.calibration:
            say("calibration")
            calibrated = calibration_report(model, bundle, float(cfg.train_temperature),
                                            seed=cfg.seed, batch_size=cfg.batch_size,
                                            temperature=cfg.calibration_temperature)

    every = list(robust.values()) + list(extra.values())
    worst = torch.stack(every).all(0) if robust else None
    return {
        "n_examples": n,
        "clean_acc": _accuracy(torch.cat(correct)),
        "robust_acc": {name: _accuracy(mask) for name, mask in robust.items()},
        "worst_case_acc": None if worst is None else _accuracy(worst),
        "extra_robust_acc": {name: _accuracy(mask) for name, mask in extra.items()},
        "per_example": {"clean": pack_mask(torch.cat(correct)),
                        "worst_case": None if worst is None else pack_mask(worst),
                        "attacks": {name: pack_mask(mask)
                                    for name, mask in (robust | extra).items()}},
        "attack_seconds": seconds,
        "masking": report,
        "escalation": escalation,
        "stochastic": stochastic,
        "corruption_acc": None if corruption is None else corruption["mean"],
        "corruptions": corruption,
        "perturbation_acc": None if perturbation is None else perturbation["mean"],
        "perturbations": perturbation,
        "calibration": calibrated,
        "settings": {"attacks": cfg.attacks, "eps": cfg.eps, "alpha": cfg.alpha,
                     "steps": cfg.steps, "restarts": cfg.restarts,
                     "square_queries": cfg.square_queries, "check_steps": cfg.check_steps,
                     "eot": cfg.eot, "bpda": cfg.bpda, "escalate": cfg.escalate,
                     "severities": list(cfg.severities) if cfg.corruptions else None,
                     "corruptions_dir": cfg.corruptions_dir if cfg.corruptions else None,
                     "perturbations": cfg.perturbations, "shift_examples": cfg.shift_examples,
                     "batch_size": cfg.batch_size,
                     "train_temperature": float(cfg.train_temperature), "seed": cfg.seed,
                     "device": str(device)},
        "seconds": round(time.perf_counter() - start, 3),
    }


CALIBRATION_FIT_FRACTION = 0.5


def calibration_split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(fit, report)`` indices of ``n`` test examples: a seeded half each (the temperature is
    fitted on one half and judged on the other, never on the examples it is fitted to)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "cal")))
    cut = int(n * CALIBRATION_FIT_FRACTION)
    return perm[:cut], perm[cut:]


@torch.no_grad()
def test_logits(model: nn.Module, bundle, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of the whole test set, in fp32 on the CPU."""
    device = _model_device(model)
    logits, labels = [], []
    with eval_mode(model), torch.autocast(device.type, enabled=False):
        for x, y in bundle.test_batches(batch_size, device):
            logits.append(model(x.float()).float().cpu())
            labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def calibration_report(model: nn.Module, bundle, train_temperature: float, *, seed: int = 0,
                       batch_size: int = 512, temperature: float | None = None) -> dict:
    """Calibration of the model's probabilities ``softmax(z / train_temperature)`` on the test
    set: temperature scaling (:mod:`tempfast.calibration`) fitted on a seeded half and judged
    on the other half, or, given ``temperature`` (fitted earlier on the same half), judged
    only. ``effective_temperature`` is ``temperature x train_temperature``, the T to divide the
    raw logits by."""
    from .. import calibration as cal

    logits, labels = test_logits(model, bundle, batch_size)
    logits = logits / float(train_temperature)
    fit, report = calibration_split(labels.numel(), seed)
    if temperature is None:
        out = cal.calibrate(logits[fit], labels[fit], logits[report], labels[report])
        out["source"] = "fitted on the fit half"
    else:
        out = cal.calibrate(logits[fit], labels[fit], logits[report], labels[report],
                            temperature=temperature)
        out["source"] = "stored in the checkpoint"
    out["train_temperature"] = float(train_temperature)
    out["effective_temperature"] = out["temperature"] * float(train_temperature)
    return out


ESCALATED = ("pgd-ce-adaptive", "pgd-cw", "apgd-dlr")  # gradient attacks rerun with EOT / BPDA


def _escalate(run, model: nn.Module, cfg: EvalSettings, stochastic: bool,
              say: Progress) -> dict:
    """The stronger attacks run when masking is suspected; their masks (under ``masks``) join
    the worst case. See :func:`evaluate`."""
    use_bpda = cfg.bpda is not False and declares_preprocessing(model)
    masks, ran = {}, []
    queries = 4 * cfg.square_queries
    name = f"square ({queries} queries, 2 restarts)"
    say(f"escalation: {name}")
    masks[name] = run("square", eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, restarts=2,
                      key="escalate", queries=queries)
    ran.append(name)
    if stochastic or use_bpda:
        how = " + ".join(filter(None, (f"EOT x{cfg.eot}, {cfg.check_steps} steps"
                                       if stochastic else "",
                                       "BPDA" if use_bpda else "")))
        for attack in ESCALATED:
            label = f"{attack} ({how})"
            say(f"escalation: {label}")
            steps = cfg.check_steps if stochastic else cfg.steps
            masks[label] = run(attack, eps=cfg.eps, alpha=cfg.alpha, steps=steps,
                               restarts=cfg.restarts, key="escalate",
                               eot=cfg.eot if stochastic else 1, bpda=use_bpda)
            ran.append(label)
    reasons = ["masking suspected"]
    if stochastic:
        reasons.append("the forward pass is random (EOT)")
    if use_bpda:
        reasons.append("the model declares non-differentiable preprocessing (BPDA)")
    return {"reason": "; ".join(reasons), "stochastic": stochastic, "bpda": use_bpda,
            "attacks": ran, "masks": masks}


def _corruptions(judge: Judge, batches: list[tuple[Tensor, Tensor]], cfg: EvalSettings,
                 files: corr.CorruptionFiles | None, device: torch.device,
                 tracker: _Tracker) -> dict:
    """Accuracy per corruption and severity, and the mean over both: on the regenerated
    corruptions of ``batches``, or on the published ``files``."""
    severities, seed, say = cfg.severities, cfg.seed, tracker.say
    per_severity = sum(int(y.numel()) for _, y in batches) * FORWARD_PASS
    table: dict[str, dict[str, float]] = {}
    if files is None:
        source = corr.LABEL
        for ci, name in enumerate(corr.CORRUPTIONS):
            say(f"corruption {name}")
            table[name] = {}
            for s in severities:
                hits = [judge(corr.corrupt(x, name, s, derive_seed(seed, ci, s, b)), y)
                        for b, (x, y) in enumerate(batches)]
                table[name][str(s)] = _accuracy(torch.cat(hits))
                tracker.add(per_severity)
    else:
        source = f"files in {files.directory}"
        for name in files.names:
            say(f"corruption {name}")
            table[name] = {}
            for s in severities:
                hits = [judge(x, y) for x, y in
                        files.batches(name, s, cfg.batch_size, device, limit=_shift_limit(cfg))]
                table[name][str(s)] = _accuracy(torch.cat(hits))
                tracker.add(per_severity)
    counted = sum(int(h.numel()) for h in hits)
    for row in table.values():
        row["mean"] = float(np.mean(list(row.values())))
    return {"source": source, "severities": list(severities), "per_corruption": table,
            "mean": float(np.mean([row["mean"] for row in table.values()])),
            "n_examples": counted}


def _perturbations(judge: Judge, batches: list[tuple[Tensor, Tensor]], cfg: EvalSettings,
                   tracker: _Tracker) -> dict:
    """Accuracy per natural perturbation and strength, and the mean over both."""
    n = sum(int(y.numel()) for _, y in batches)
    table: dict[str, dict[str, float]] = {}
    for pi, name in enumerate(pert.PERTURBATIONS):
        tracker.say(f"perturbation {name}")
        table[name] = {}
        for s in pert.STRENGTHS:
            hits = [judge(pert.perturb(x, name, s, derive_seed(cfg.seed, "perturb", pi, s, b)),
                          y) for b, (x, y) in enumerate(batches)]
            table[name][str(s)] = _accuracy(torch.cat(hits))
            tracker.add(n * FORWARD_PASS)
        table[name]["mean"] = float(np.mean(list(table[name].values())))
    return {"source": pert.LABEL, "strengths": list(pert.STRENGTHS), "per_perturbation": table,
            "mean": float(np.mean([row["mean"] for row in table.values()])), "n_examples": n}

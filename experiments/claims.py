"""Statistics over seeds and the rules that turn measurements into claim verdicts.

A *cell* is one (training mode, temperature) of the fixed-temperature grid: the values of a
metric over its seeds, their mean and sample standard deviation (``ddof = 1``; 0 for one seed).

Verdict rule for "temperatures above 1 improve metric m" (:func:`versus_t1`), for a metric
that is an accuracy over ``N`` test images:

* every cell with T > 1 is compared with T = 1: ``diff = mean(T) - mean(T = 1)``, tested
  with **Welch's t-test over the seeds** (:func:`experiments.stats.welch`: the seeds are the
  units, so test images reused across seeds and temperatures count once, inside each seed's
  accuracy). One seed in a cell against a cell with spread: Student's t with that spread
  for both (equal variances assumed, ``n - 1`` degrees of freedom), never below the floor
  below. Where no spread is known (one seed in each, or no spread in either)
  the binomial noise of the pooled test images stands in (``n = seeds x N`` trials per cell,
  ``sqrt(p (1 - p) (1 / n_1 + 1 / n_2))`` at the pooled accuracy ``p``, normal tails): it
  ignores that the images are the same, so it is only a floor;
* the p-values are corrected for the number of temperatures tried by Holm's step-down method
  (picking the best of six temperatures is six comparisons, not one);
* ``best`` is the cell with T > 1 whose mean is highest. **supported** if its corrected
  p-value is below ``ALPHA`` and ``diff > MIN_DIFF``; **contradicted** if even the best is worse
  (``diff < -MIN_DIFF``) with a corrected p-value below ``ALPHA``; **not supported** otherwise.
  The difference is also given in test images (``diff x N``).

``ALPHA = 0.05`` and ``MIN_DIFF = 0.005`` (half a percentage point). Two or three seeds estimate
the between-seed spread poorly (Welch's degrees of freedom say how poorly); the verdicts
describe these runs, not the paper at its scale. Beside each verdict: the **minimum detectable
effect** of the deciding test (80% power at the Holm level of its comparisons) and the
**trend test** (:func:`experiments.stats.trend`): the slope of the metric against ``log T``
over every seed of every T >= 1, one test for "higher T, higher metric" with no best-of-k.

Under-trained cells (:func:`underfit`): temperatures whose mean clean accuracy (on the whole
test set where every run measured it, :func:`clean_metric`) is more than
``UNDERFIT_GAP`` (10 points) below the best cell of the same training mode (relative), or, for
standard training, more than ``ABSOLUTE_GAP`` (5 points) below the converged reference of the
same model and data (:data:`CONVERGED_CLEAN`: absolute; PGD training has no reference yet and
is judged relatively). With SGD at a fixed learning rate the 1/T gradient scale slows training
at large T; robust accuracies of such cells describe weak classifiers. A verdict whose deciding
cell or whose T = 1 reference is under-trained reads **inconclusive (under-trained)**
(:func:`honest`), whatever its test says.

Mechanism rules (:func:`slope`, :func:`mechanism`): on a fixed model, the logit-gradient norm
"scales as 1/T" when its log-log slope over the largest three temperatures lies in
``[-1.2, -0.8]``; the update is "evened across negative classes" when the normalised entropy
of the negative-class weights never falls as T rises (tolerance 0.01) and exceeds 0.9 at the
largest T.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from . import stats

ALPHA = 0.05
MIN_DIFF = 0.005
SLOPE_RANGE = (-1.2, -0.8)
ENTROPY_END, ENTROPY_TOL = 0.9, 0.01
UNDERFIT_GAP = 0.10
ABSOLUTE_GAP = 0.05
# Clean test accuracy of T = 1 standard training run to convergence, per data set and model:
# digits, small_cnn, all 1,437 training images x 60 epochs (3x the sweep's 20), seeds 0-2:
# 99.44 / 98.89 / 99.72%, mean 99.35% on the 360 test images (20 epochs: 99.17%: converged);
# Fashion-MNIST, the last epoch on the 10,000 test images of the runs committed in
# experiments/results/fashion-mnist-reference (small_cnn_pool, all 60,000 images x 12 epochs,
# twice issue 26's sweep, SGD lr 0.05 cosine: 91.60%, +0.9 points over its last two epochs) and
# fashion-mnist-vit-reference (test_vit, 4 px patches, x 10 epochs, AdamW lr 1e-3: 85.77%,
# +0.6 points); tests/test_experiments.py checks these against the committed metrics.
CONVERGED_CLEAN = {("digits", "small_cnn"): 0.9935, ("fashion-mnist", "small_cnn_pool"): 0.9160,
                   ("fashion-mnist", "test_vit"): 0.8577}
"""Converged clean accuracy by (data set, model): a reference exists only for the model it was
measured with (another model is judged relatively until it has one)."""
UNDER_TRAINED = "inconclusive (under-trained)"


@dataclass(frozen=True)
class Cell:
    """A metric's values over the seeds of one grid cell."""

    temp: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0


def cells(rows: list[dict], metric: str, adv: str) -> list[Cell]:
    """The fixed-temperature cells of ``adv`` for ``metric``, sorted by T (runs where the
    metric was not measured are left out; cells without any value are dropped)."""
    by_t: dict[float, list[float]] = {}
    for row in rows:
        if row["adv"] == adv and not row["learn_temp"] and row[metric] is not None:
            by_t.setdefault(row["temp"], []).append(float(row[metric]))
    return [Cell(t, tuple(v)) for t, v in sorted(by_t.items())]


def learned(rows: list[dict], metric: str, adv: str, t0: float) -> Cell | None:
    """The learned-T arm of ``adv`` started at ``t0``: ``metric`` over seeds (``temp`` = t0)."""
    values = [float(r[metric]) for r in rows if r["adv"] == adv and r["learn_temp"]
              and r["temp"] == t0 and r[metric] is not None]
    return Cell(t0, tuple(values)) if values else None


def difference(a: Cell, b: Cell) -> tuple[float, float]:
    """``(mean(a) - mean(b), standard error of that difference)``."""
    return a.mean - b.mean, math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def judge_difference(a: Cell, b: Cell, n_images: int | None) -> tuple[str, stats.Test]:
    """``better``, ``worse`` or ``same`` for ``a`` against ``b`` by one planned comparison
    (such as a learned T against the best fixed T), with its test: :func:`compare`'s test
    (Welch's over the seeds where defined) at p < ``ALPHA``, and more than ``MIN_DIFF``."""
    test = compare(a, b, n_images)
    if test.p < ALPHA and test.effect > MIN_DIFF:
        return "better", test
    if test.p < ALPHA and test.effect < -MIN_DIFF:
        return "worse", test
    return "same", test


def two_sided_p(diff: float, se: float) -> float:
    """Two-sided p-value of ``diff`` with standard error ``se`` (normal approximation)."""
    if se <= 0:
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff / se) / math.sqrt(2.0))


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def accuracy_se(a: Cell, b: Cell, n_images: int | None) -> float:
    """The larger of the binomial standard error of ``mean(a) - mean(b)`` over pooled test
    images (``seeds x n_images`` each) and the between-seed one. The pooled rate is kept one
    image away from 0 and 1: at an accuracy of exactly 0% (or 100%) the binomial variance
    vanishes, and so would the minimum detectable effect, while a handful of images would
    still be noise."""
    _, seed_se = difference(a, b)
    if not n_images:
        return seed_se
    n_a, n_b = a.n * n_images, b.n * n_images
    floor = 1 / (n_a + n_b)
    pooled = min(max((a.mean * n_a + b.mean * n_b) / (n_a + n_b), floor), 1 - floor)
    binomial = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n_a + 1 / n_b))
    return max(binomial, seed_se)


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`versus_t1`; ``label`` is ``supported``, ``not supported``,
    ``contradicted`` or ``not measured``; ``p`` and ``p_holm`` the best cell's raw and
    Holm-corrected p-values over ``comparisons`` temperatures, from ``test`` (``welch`` or
    ``binomial``) at ``df`` degrees of freedom; ``mde`` that test's minimum detectable effect
    at the Holm level; ``images`` the difference in test images; ``trend`` the slope test
    against ``log T`` over T >= 1; ``paired`` the paired per-example test of the best cell
    against T = 1 where the runs' masks were kept (:func:`paired`)."""

    label: str
    best: Cell | None = None
    base: Cell | None = None
    diff: float = 0.0
    se: float = 0.0
    p: float = 1.0
    p_holm: float = 1.0
    comparisons: int = 0
    images: float | None = None
    test: str = ""
    df: float | None = None
    mde: float | None = None
    trend: stats.Test | None = None
    paired: stats.Test | None = None


def compare(a: Cell, b: Cell, n_images: int | None) -> stats.Test:
    """``mean(a) - mean(b)``: Welch's t-test over the seeds where it is defined (two or more
    seeds in each cell, some spread); one seed against a cell with spread (an interim sweep):
    Student's t with that cell's spread for both (:func:`experiments.stats.borrowed_spread`),
    never below the binomial floor; else the binomial floor of the pooled test images
    (normal tails; the between-seed spread alone when ``n_images`` is unknown)."""
    welch = stats.welch(list(a.values), list(b.values))
    if a.n >= 2 and b.n >= 2 and welch.se > 0:
        return welch
    diff, se = a.mean - b.mean, accuracy_se(a, b, n_images)
    if min(a.n, b.n) == 1 and max(a.std, b.std) > 0:
        return stats.borrowed_spread(list(a.values), list(b.values), floor_se=se)
    return stats.Test("binomial", diff, se, two_sided_p(diff, se))


def versus_t1(cs: list[Cell], n_images: int | None = None) -> Verdict:
    """Does some T > 1 beat T = 1 on these cells (see the module docstring)? ``n_images``:
    test images behind each seed's accuracy (None: the between-seed noise alone)."""
    base = next((c for c in cs if c.temp == 1.0), None)
    above = [c for c in cs if c.temp > 1.0]
    if base is None or not above:
        return Verdict("not measured")
    tests = [(c, compare(c, base, n_images)) for c in above]
    adjusted = holm([t.p for _, t in tests])
    i = max(range(len(tests)), key=lambda k: tests[k][0].mean)
    best, test = tests[i]
    significant = adjusted[i] < ALPHA
    if significant and test.effect > MIN_DIFF:
        label = "supported"
    elif significant and test.effect < -MIN_DIFF:
        label = "contradicted"
    else:
        label = "not supported"
    trend = stats.trend([base.temp] + [c.temp for c in above],
                        [list(base.values)] + [list(c.values) for c in above])
    return Verdict(label, best, base, test.effect, test.se, test.p, adjusted[i], len(tests),
                   None if n_images is None else test.effect * n_images, test.name, test.df,
                   test.mde(comparisons=len(tests)), trend)


def best_cell(cs: list[Cell]) -> Cell | None:
    """The cell with the highest mean (None for no cells)."""
    return max(cs, key=lambda c: c.mean) if cs else None


def converged_reference(rows: list[dict], adv: str) -> float | None:
    """The converged clean accuracy that judges ``rows`` in absolute terms: standard training
    of one data set and model in :data:`CONVERGED_CLEAN` (None otherwise)."""
    setups = {(r["data"], r["model"]) for r in rows}
    if len(setups) != 1 or adv != "none":
        return None
    return CONVERGED_CLEAN.get(setups.pop())


def clean_metric(rows: list[dict]) -> str:
    """The clean accuracy the claims judge: the last epoch's on the whole test set
    (``test_acc``) when every run has it, else the final evaluation's subset's."""
    return "test_acc" if rows and all(r.get("test_acc") is not None for r in rows) \
        else "clean_acc"


def underfit(rows: list[dict], adv: str) -> list[Cell]:
    """Cells of ``adv``'s judged clean accuracy (:func:`clean_metric`) more than
    ``UNDERFIT_GAP`` below its best cell, or (for standard training of a data set and model
    in :data:`CONVERGED_CLEAN`) more than ``ABSOLUTE_GAP`` below the converged one."""
    cs = cells(rows, clean_metric(rows), adv)
    best = best_cell(cs)
    reference = converged_reference(rows, adv)
    return [c for c in cs if (best is not None and c.mean < best.mean - UNDERFIT_GAP)
            or (reference is not None and c.mean < reference - ABSOLUTE_GAP)]


def honest(v: Verdict, weak: set[float]) -> Verdict:
    """``v`` labelled :data:`UNDER_TRAINED` when its deciding cell or its T = 1 reference is
    one of the ``weak`` temperatures (else ``v`` itself)."""
    if v.best is None or (v.best.temp not in weak and v.base.temp not in weak):
        return v
    return dataclasses.replace(v, label=UNDER_TRAINED)


def mask_key(metric: str) -> str | None:
    """The per-example record's key of a metric (``worst_case``, ``clean``, or the attack of a
    ``robust_*`` column); None for metrics kept as aggregates only."""
    if metric == "worst_case_acc":
        return "worst_case"
    if metric == "clean_acc":
        return "clean"
    if metric.startswith("robust_"):
        return metric.removeprefix("robust_").replace("_", "-")
    return None


def _masks(rows: list[dict], metric: str, adv: str, temp: float) -> dict[int, np.ndarray]:
    from tempfast.robust.evaluation import unpack_mask

    key, out = mask_key(metric), {}
    for row in rows:
        record = row.get("per_example")
        if (record is None or key is None or row["adv"] != adv or row["learn_temp"]
                or row["temp"] != temp):
            continue
        text = record.get(key) if key in ("worst_case", "clean") else \
            (record.get("attacks") or {}).get(key)
        if text is not None:
            out[row["seed"]] = unpack_mask(text, record["n"]).numpy()
    return out


def paired(rows: list[dict], metric: str, adv: str, temp: float,
           base: float = 1.0) -> stats.Test | None:
    """The paired per-example test of ``metric`` at ``temp`` against ``base`` in mode ``adv``:
    the two-stage (seed, image) cluster bootstrap (:func:`experiments.stats.cluster_bootstrap`)
    over the seeds whose runs at both temperatures kept their masks on the same images (rows
    carry them under ``per_example``, from the sweep's ``per_example.jsonl``); McNemar's exact
    test when one seed is left. None when no seed has both."""
    a, b = _masks(rows, metric, adv, temp), _masks(rows, metric, adv, base)
    seeds = sorted(s for s in set(a) & set(b) if a[s].shape == b[s].shape)
    if not seeds:
        return None
    if len(seeds) == 1:
        return stats.mcnemar(a[seeds[0]], b[seeds[0]])
    return stats.cluster_bootstrap(np.stack([a[s] for s in seeds]),
                                   np.stack([b[s] for s in seeds]))


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``log(y)`` against ``log(x)`` (None if fewer than two points
    with ``y > 0``)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


@dataclass(frozen=True)
class Mechanism:
    """Mechanism checks of one model's gradient rows (see the module docstring)."""

    model: str
    slope: float | None
    one_over_t: bool
    entropy_rises: bool
    entropy_end: float

    @property
    def evens(self) -> bool:
        return self.entropy_rises and self.entropy_end > ENTROPY_END


def mechanism(rows: list[dict]) -> list[Mechanism]:
    """Per model of a gradients.csv: the 1/T slope and the negative-class entropy checks."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["temperature"])
        top = rs[-3:]
        s = slope([r["temperature"] for r in top], [r["logit_grad_norm"] for r in top])
        ent = [r["neg_entropy_norm"] for r in rs]
        rises = all(b >= a - ENTROPY_TOL for a, b in itertools.pairwise(ent))
        out.append(Mechanism(model, s, s is not None and SLOPE_RANGE[0] <= s <= SLOPE_RANGE[1],
                             rises, ent[-1]))
    return out

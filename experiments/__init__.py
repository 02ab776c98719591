"""Experiments that test the temperature claims of arXiv 2502.20604 with tempfast.

* :mod:`experiments.sweep`: train and evaluate every (temperature, training mode, seed) with
  ``tempfast train``, one CSV row per run, resumable;
* :mod:`experiments.report`: the CSV -> ``REPORT.md`` (tables, claim-by-claim verdicts) and PNG
  plots;
* :mod:`experiments.gradients`: the paper's mechanism on a trained model: input- and
  logit-gradient norms and the entropy of the negative-class gradient weights against T;
* :mod:`experiments.tiny_imagenet`: lay Tiny-ImageNet out as ``--data imagefolder`` expects.

Run them from the repository root: ``python -m experiments.sweep ...``.
"""

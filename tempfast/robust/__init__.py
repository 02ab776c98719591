"""The robustness suite (needs the ``[train]`` extra for Square): white-box and gradient-free
attacks on [0, 1] images, gradient-masking diagnostics, common corruptions and the evaluation
that combines them (:func:`tempfast.robust.evaluation.evaluate`).

Floor: it uses the public ops (:mod:`tempfast.functional`) and nothing from the trainer or the
command line; ``import tempfast`` does not import it.
"""

"""CLIP's contrastive loss with a temperature, ``CE(a @ b.T / T, arange(B))`` averaged with its
transpose, without the ``B x B`` similarity matrix.

``call.py`` checks and normalises the arguments; ``op.py`` computes the rows on the fused linear
head (:mod:`tempfast.ops.linear_cross_entropy`): ``a`` is the head's hidden and ``b`` its weight,
the targets ``arange(B)``, so the similarities are made and consumed chunk by chunk and the
head's exact gradients (``a``, ``b``, ``T``) carry over. ``sharded.py``: a batch split over the
ranks of a process group (each rank its rows against the gathered batch, the cross terms of
the gradient from its own block and the gathered log-sum-exps), and SimCLR's NT-Xent, which
excludes each view's own similarity as the head cannot (one process is a group of one): its
own chunked autograd, the similarities recomputed in the backward. No kernel of its own.
"""

from .call import (
    ContrastiveCall,
    NtXentCall,
    normalise,
    normalise_nt_xent,
    route,
    run,
    run_nt_xent,
)

__all__ = ["ContrastiveCall", "NtXentCall", "normalise", "normalise_nt_xent", "route", "run",
           "run_nt_xent"]

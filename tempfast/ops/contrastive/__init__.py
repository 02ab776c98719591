"""CLIP's contrastive loss with a temperature, ``CE(a @ b.T / T, arange(B))`` averaged with its
transpose, without the ``B x B`` similarity matrix.

``call.py`` checks and normalises the arguments; ``op.py`` computes the rows on the fused linear
head (:mod:`tempfast.ops.linear_cross_entropy`): ``a`` is the head's hidden and ``b`` its weight,
the targets ``arange(B)``, so the similarities are made and consumed chunk by chunk and the
head's exact gradients (``a``, ``b``, ``T``) carry over. SimCLR's NT-Xent
(:class:`.op.NtXent`) excludes each view's own similarity, which the head cannot: its own
chunked autograd, the similarities recomputed in the backward. No kernel of its own.
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

"""The fused linear head: ``F.cross_entropy((hidden @ weight.T + bias) / T, target, ...)``
without the ``N x C`` logits.

``call.py`` checks and normalises the arguments; ``op.py`` holds the custom ops, their autograd
and the chunked pass. No kernel of its own: each chunk's logits run the cross-entropy's rows
(``kernels/cross_entropy.py`` on the Triton path).
"""

from .call import LinearCall, normalise, route, run
from .op import default_chunk_rows

__all__ = ["LinearCall", "default_chunk_rows", "normalise", "route", "run"]

"""The temperature cross-entropy, ``F.cross_entropy(logits / T, target, ...)``.

``call.py`` checks and normalises the arguments and picks the route; ``op.py`` holds the
autograd (custom ops and the eager Functions); ``torch_path.py`` and ``triton_path.py`` compute
the rows (Triton source: ``kernels/cross_entropy.py``; the backward's rescale:
``kernels/rescale.py``).
"""

from .call import CrossEntropyCall, loss, normalise, plain_loss, route, run

__all__ = ["CrossEntropyCall", "loss", "normalise", "plain_loss", "route", "run"]

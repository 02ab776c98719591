"""tempfast: fused temperature-scaled softmax and cross-entropy for PyTorch.

    import tempfast
    loss = tempfast.cross_entropy(logits, target, temperature=8.0)
    loss = tempfast.linear_cross_entropy(hidden, head.weight, target, head.bias, 8.0)
"""

from . import backend, nn, reference
from ._version import __version__
from .backend import use_backend
from .functional import (
    cross_entropy,
    distillation_loss,
    linear_cross_entropy,
    log_softmax,
    softmax,
)

__all__ = [
    "__version__",
    "backend",
    "cross_entropy",
    "distillation_loss",
    "linear_cross_entropy",
    "log_softmax",
    "nn",
    "reference",
    "softmax",
    "use_backend",
]

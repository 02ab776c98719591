"""tempfast: fused temperature-scaled softmax and cross-entropy for PyTorch.

    import tempfast
    loss = tempfast.cross_entropy(logits, target, temperature=8.0)
    loss = tempfast.linear_cross_entropy(hidden, head.weight, target, head.bias, 8.0)
"""

from . import backend, nn, reference
from ._version import __version__
from .backend import use_backend
from .functional import (
    contrastive_loss,
    cross_entropy,
    distillation_loss,
    linear_cross_entropy,
    linear_token_logprobs,
    log_softmax,
    nt_xent_loss,
    softmax,
    token_logprobs,
)

# Submodules with heavier imports, reachable as attributes (``tempfast.calibration.X`` after
# ``import tempfast``) but imported on first use, so that ``import tempfast`` stays light.
_LAZY_SUBMODULES = ("calibration", "distillation", "hf", "parallel", "robust", "train")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "__version__",
    "backend",
    "contrastive_loss",
    "cross_entropy",
    "distillation_loss",
    "linear_cross_entropy",
    "linear_token_logprobs",
    "log_softmax",
    "nn",
    "nt_xent_loss",
    "reference",
    "softmax",
    "token_logprobs",
    "use_backend",
]

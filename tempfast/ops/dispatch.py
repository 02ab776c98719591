"""Pick the implementation module for a tensor: the Triton launchers or the PyTorch path.

Both modules expose the same functions (``softmax_forward``, ``softmax_backward``, ``ce_rows``,
``rescale_``) with the same shapes and semantics. float64 always takes the PyTorch path (the
kernels compute in fp32).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .. import backend
from . import torch_impl


def impl_for(x: Tensor) -> ModuleType:
    if x.dtype == torch.float64 or backend.resolve(x.device) == "torch":
        return torch_impl
    from . import triton_impl

    return triton_impl

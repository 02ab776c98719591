"""Which implementation computes an op's rows: its Triton launcher or its PyTorch path.

Every op with kernels has both, as ``torch_path.py`` and ``triton_path.py`` in its folder,
with the same functions, shapes and semantics. float64 always takes the PyTorch path (the
kernels compute in fp32); otherwise :func:`tempfast.backend.resolve` decides (Triton on CUDA
tensors, or forced on CPU tensors under the interpreter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backend


def runs_triton(x: Tensor) -> bool:
    """Whether the rows of ``x`` go to the Triton kernels (else to the PyTorch path)."""
    return x.dtype != torch.float64 and backend.resolve(x.device) == "triton"


SMALL_CPU_ELEMENTS = 1 << 16  # CPU calls up to this size compose stock aten ops


def small_on_cpu(x: Tensor, needs_t_grad: bool) -> bool:
    """Whether an eager call on ``x (N, C)`` takes the ``aten`` route: a small CPU call whose
    temperature needs no gradient composes stock aten ops, because at 10 to 1000 classes the
    host cost of a call is the cost, and that route's is eager PyTorch's. Larger calls keep the
    chunked, memory-bounded path. (On CPU tensors :func:`tempfast.backend.resolve` runs the
    PyTorch path unless the Triton backend is forced; asked in that cheaper form, as this runs
    on every small call.)"""
    return (not needs_t_grad and x.is_cpu and x.numel() <= SMALL_CPU_ELEMENTS
            and backend.get_backend() != "triton")

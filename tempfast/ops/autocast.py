"""Autocast: each op takes its input as ``torch.autocast`` hands it to the stock op it replaces.

Autocast runs ``softmax`` and ``log_softmax`` in fp32 on CUDA (its fp32 list) and leaves them in
the input's precision on the CPU; ``cross_entropy`` runs in fp32 on both. tempfast's
cross-entropy always accumulates in fp32 and returns an fp32 loss, with the gradient in the
logits' dtype, which is what autocast's cast gives: it needs no cast (and so no fp32 copy of
the logits). Its softmax casts a 16-bit input to fp32 where autocast would
(:func:`autocast_input`, at the top of the op, eager and traced alike), and the custom op
``tempfast::softmax`` called directly gets the same cast from its autocast registration.
"""

from __future__ import annotations

import torch
from torch import Tensor

# devices whose autocast runs the op in fp32 (torch's autocast op lists)
FP32_UNDER_AUTOCAST: dict[str, tuple[str, ...]] = {"softmax": ("cuda",)}
_LOW = (torch.float16, torch.bfloat16)


def autocast_input(x: Tensor, op: str) -> Tensor:
    """``x`` in fp32 when autocast is on for its device and runs ``op`` in fp32 there (a
    16-bit ``x`` only: fp32 and fp64 inputs are left alone, as autocast leaves them); else
    ``x`` itself."""
    if x.dtype in _LOW:
        device = x.device.type
        if device in FP32_UNDER_AUTOCAST[op] and torch.is_autocast_enabled(device):
            return x.float()
    return x


def register(op_name: str, op: str) -> None:
    """Give the custom op ``tempfast::<op_name>`` autocast's fp32 cast on the devices of
    :data:`FP32_UNDER_AUTOCAST` ``[op]``."""
    for device in FP32_UNDER_AUTOCAST[op]:
        torch.library.register_autocast(f"tempfast::{op_name}", device, torch.float32)

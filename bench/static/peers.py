"""The model's yardsticks: a plain Triton copy and Liger-Kernel's cross-entropy kernel.

Both are recorded and compiled exactly like tempfast's launches (their real launchers run with
:class:`bench.static.record.LaunchRecorder` active), so that the model can be checked against
published numbers before any GPU run: it must order Liger CE at 32000 / 128256 / 262144
classes (H100, bf16, 8192 rows: 0.789 / 2.27 / 4.67 ms, forward + backward) as measured, and
the copy must come out at its own floor.

Liger is read from an installed ``liger-kernel`` (never a project dependency: install it
beside, e.g. ``pip install --no-deps --target DIR liger-kernel`` and put DIR on
``PYTHONPATH``). Liger has no temperature: "Liger at T = 1" is its kernel alone (the fair
peer); "Liger on x / T" adds the division's two elementwise torch passes (forward ``x / T``:
read and write ``N C e`` bytes; backward: the gradient divided by ``T``, the same again).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cases import DTYPES
from .record import Launch, LaunchRecorder

PUBLISHED_LIGER_H100_BF16_MS = {32000: 0.789, 128256: 2.27, 262144: 4.67}  # 8192 rows
COPY_BLOCK = 4096


@triton.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    """``dst[i] = src[i]``, ``BLOCK`` elements per program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


def record_copy(rows: int, classes: int, dtype: str) -> list[Launch]:
    """One launch of :func:`copy_kernel` over ``rows x classes`` elements."""
    src = torch.empty(rows * classes, dtype=DTYPES[dtype])
    dst = torch.empty_like(src)
    recorder = LaunchRecorder(phase="forward")
    with recorder.active():
        copy_kernel[(triton.cdiv(src.numel(), COPY_BLOCK),)](src, dst, src.numel(),
                                                             BLOCK=COPY_BLOCK, num_warps=8)
    return recorder.launches


def liger_available() -> bool:
    try:
        import liger_kernel.ops.cross_entropy  # noqa: F401
    except ImportError:
        return False
    return True


def liger_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liger-kernel")
    except PackageNotFoundError:
        return "unknown" if liger_available() else None


def record_liger(rows: int, classes: int, dtype: str) -> list[Launch]:
    """The launches of Liger's CE forward (which writes the gradient) and backward at an
    upstream gradient of 1, through its own launchers."""
    from liger_kernel.ops import cross_entropy as liger

    x = torch.empty(rows, classes, dtype=DTYPES[dtype]).requires_grad_(True)
    y = torch.zeros(rows, dtype=torch.int64)
    recorder = LaunchRecorder(phase="forward")
    with recorder.active():
        _loss, *_rest, grad = liger.cross_entropy_forward(
            x, y, None, -100, 0.0, 0.0, "mean", None, False)
        recorder.phase = "backward"
        liger.cross_entropy_backward(grad, torch.tensor(1.0))
    return recorder.launches

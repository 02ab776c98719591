"""Helpers shared by the tests: inputs, dtype-aware comparisons, and small stand-ins for a data
bundle and a masked model."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import torch
from torch import nn

import tempfast

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Absolute tolerances relative to the largest magnitude of the expected tensor. fp32: the
# kernels and the oracle differ only by fp32 rounding; fp16 / bf16: outputs are rounded to the
# dtype's 11 / 8 significant bits, the oracle is float64 on the same (rounded) inputs.
REL_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2,
           torch.float64: 1e-10}
# The fp32 loss / lse / dT are compared with this tolerance whatever the input dtype.
LOSS_TOL = 2e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str,
                 floor: float = 1.0) -> None:
    """``|actual - expected| <= rel * max(floor, max|expected|)`` elementwise; NaN and
    infinities must match exactly.

    ``floor=1`` suits losses; gradients, which can be tiny, use a tiny floor so that the
    tolerance follows their own scale.
    """
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.double(), expected.double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN pattern differs"
    infinite = torch.isinf(e)
    assert torch.equal(a[infinite], e[infinite]), f"{what}: infinities differ"
    keep = ~nan_e & ~infinite
    a, e = a[keep], e[keep]
    if e.numel() == 0:
        return
    scale = max(floor, e.abs().max().item())
    err = (a - e).abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel * scale:.3g}"


def run_backend(name: str, fn, *args, **kwargs):
    with tempfast.use_backend(name):
        return fn(*args, **kwargs)


def logits_like(n: int, c: int, dtype: torch.dtype, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).to(dtype)


def temperature_for(kind, n_rows: int, seed: int = 0):
    """A float, or for ``"rows"`` one temperature per row in [0.25, 4]."""
    if kind == "rows":
        g = torch.Generator().manual_seed(seed + 1)
        return torch.rand(n_rows, generator=g) * 3.75 + 0.25
    return kind


class TensorBundle:
    """The part of a DataBundle the evaluation uses: test batches in fixed order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def test_batches(self, batch_size, device, limit=None):
        n = len(self.x) if limit is None else min(limit, len(self.x))
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield self.x[i:j].to(device), self.y[i:j].to(device)


class Scaled(nn.Module):
    """``model(x) * factor``: the saturated-softmax model of defensive distillation."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_layout(folder, n_train=60, n_test=20, gz=True, seed=0):
    """The four IDX files of Fashion-MNIST / MNIST with random 28x28 images, every class
    present, in ``folder``; returns the training labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels[split] = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels[split], gz)
    return labels["train"]

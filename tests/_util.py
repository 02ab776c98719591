"""Helpers of the trainer, data and robustness tests: small stand-ins for a data bundle and a
masked model, and IDX files. (The op tests' harness is :mod:`tests.harness`.)"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import torch


class TensorBundle:
    """The part of a DataBundle the evaluation uses: test batches in fixed order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def test_batches(self, batch_size, device, limit=None):
        n = len(self.x) if limit is None else min(limit, len(self.x))
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield self.x[i:j].to(device), self.y[i:j].to(device)


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

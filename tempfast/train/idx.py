"""MNIST-layout data sets in IDX files: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and
MNIST.

An IDX file is a big-endian header (two zero bytes, a type byte ``0x08`` for unsigned bytes,
the number of dimensions ``d``, then ``d`` int32 sizes) followed by the data. A data set is
four files in one folder, each plain or gzipped (``NAME`` or ``NAME.gz``):
``train-images-idx3-ubyte`` ``(60000, 28, 28)``, ``train-labels-idx1-ubyte`` ``(60000,)``,
``t10k-images-idx3-ubyte`` ``(10000, 28, 28)``, ``t10k-labels-idx1-ubyte`` ``(10000,)``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
DEFAULT_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
INSTALL_HINT = {"fashion-mnist": "install them with `apt-get install dataset-fashion-mnist` "
                                 "(Debian) or pass --data-dir",
                "mnist": "pass --data-dir DIR holding the four MNIST IDX files"}
UBYTE = 0x08


def find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of an IDX file (gzipped or not) with ``ndim`` dimensions.

    Raises:
        UsageError: (one line, naming the file) unreadable, truncated, or not an IDX file of
            unsigned bytes with ``ndim`` dimensions.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b"\0\0" or head[2] != UBYTE or head[3] != ndim:
                raise UsageError(f"{path} is not an IDX file of unsigned bytes with {ndim} "
                                 "dimensions")
            sizes = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = f.read()
    except (OSError, EOFError, struct.error) as exc:
        raise UsageError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    count = int(np.prod(sizes))
    if len(data) != count:
        raise UsageError(f"{path} is truncated or padded: {len(data)} bytes of data for a "
                         f"{'x'.join(map(str, sizes))} array")
    return np.frombuffer(data, dtype=np.uint8).reshape(sizes)


def locate(name: str, data_dir: str | Path | None) -> dict[str, Path]:
    """The four files of data set ``name`` (keys of ``FILES``) in ``data_dir`` or, when it is
    None, the data set's default folder.

    Raises:
        UsageError: no folder is known, or the folder lacks a file (says where the files are
            expected and how to get them).
    """
    if data_dir is None and name not in DEFAULT_DIRS:
        raise UsageError(f"{name}: {INSTALL_HINT[name]}")
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DIRS[name]
    paths = {}
    for key, file in FILES.items():
        path = find(folder, file)
        if path is None:
            raise UsageError(f"{name}: {folder / file}[.gz] not found; expected "
                             f"{', '.join(FILES.values())} (each optionally .gz) in {folder}: "
                             f"{INSTALL_HINT[name]}")
        paths[key] = path
    return paths


def load(name: str, data_dir: str | Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_images (N, 1, 28, 28) uint8, train_labels (N,), test_images, test_labels)``.

    Raises:
        UsageError: the folder lacks a file (see :func:`locate`), or a file is unreadable or
            inconsistent.
    """
    paths = locate(name, data_dir)
    arrays = {key: read_idx(path, 3 if key.endswith("images") else 1)
              for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise UsageError(f"{name}: {paths[f'{split}_images']} holds {images.shape[0]} "
                             f"images but {paths[f'{split}_labels']} {labels.shape[0]} labels")
        if labels.size and int(labels.max()) > 9:
            raise UsageError(f"{name}: labels outside [0, 10) in {paths[f'{split}_labels']}")
    return tuple(torch.from_numpy(arrays[k].copy()) for k in FILES)  # type: ignore[return-value]


def stratified_subset(labels: Tensor, size: int, seed: int) -> Tensor:
    """Indices of ``size`` examples with every class's share of ``labels`` (largest remainders
    to make the total exact), drawn from ``seed``; sorted, so the subset keeps the file order.
    """
    gen = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * size / labels.numel()
    take = quota.floor().long()
    remainder = size - int(take.sum())
    if remainder:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    chosen = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == cls).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
    return torch.cat(chosen).sort().values

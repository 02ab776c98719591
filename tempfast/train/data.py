"""Data sets for the trainer: images in [0, 1], shape ``(B, C, H, W)``, labels ``(B,)`` int64.

=============  ==========================================================================
name           source
=============  ==========================================================================
digits         scikit-learn's 8x8 digits (1797 images, 10 classes, grey): pixel / 16.
               Fixed stratified split, 1437 train / 360 test, ``random_state=seed``
               (the data seed, 0 by default), identical for every training seed.
fashion-mnist  the four IDX files (plain or gzipped) in ``data_dir``, by default Debian's
mnist          ``/usr/share/datasets/fashion-mnist`` (``apt-get install
               dataset-fashion-mnist``); MNIST needs ``data_dir``. 60000 train / 10000
               test 28x28 grey images, 10 classes (:mod:`tempfast.train.idx`).
cifar10/100    the python-pickle batches under ``data_dir`` (``cifar-10-batches-py/``,
               ``cifar-100-python/``); torchvision downloads them only with ``download``.
imagefolder    ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` image files,
               resized (shorter side) and centre-cropped to ``img_size``, read by a
               DataLoader with worker processes.
synthetic      ``num_classes`` (1k to 100k) random prototype images, 8 noisy training and
               2 test copies each, generated from the seed: exercises the large-class kernels.
=============  ==========================================================================

Augmentation runs on the device, batched: random crop with zero padding (``pad`` pixels) and,
for images that mirror (CIFAR, ImageFolder, Fashion-MNIST's clothes), a random horizontal flip;
never for digits (MNIST, scikit-learn's) or synthetic data. ``train_subset`` keeps a
stratified, seeded subset of the training images (quick runs); the test set is unchanged. All
randomness of one epoch (order, crop offsets, flips) is drawn up front on the CPU from ``(seed,
epoch)`` (:class:`EpochPlan`), so an epoch can be replayed from any step on any device: that is
what makes an interrupted and resumed run match an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder",
            "synthetic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SYNTHETIC_TRAIN_PER_CLASS = 8
SYNTHETIC_TEST_PER_CLASS = 2
SYNTHETIC_NOISE = 0.15


@dataclass
class EpochPlan:
    """One rank's share of one epoch: ``steps`` batches of ``batch_size`` example indices.

    ``indices`` (``steps * batch_size``,) int64, ``offsets`` (same, 2) crop offsets in
    ``[0, 2 * pad]``, ``flips`` (same,) bool. All on the CPU.
    """

    indices: Tensor
    offsets: Tensor
    flips: Tensor
    batch_size: int

    @property
    def steps(self) -> int:
        return self.indices.numel() // self.batch_size


class TensorSource:
    """Images ``(N, C, H, W)`` (uint8 or float) and labels ``(N,)`` kept on the device.

    ``x = images[idx].float() / divisor`` gives [0, 1] pixels.
    """

    def __init__(self, images: Tensor, labels: Tensor, divisor: float) -> None:
        self.images, self.labels, self.divisor = images, labels.long(), divisor
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, indices: Tensor) -> TensorSource:
        return TensorSource(self.images[indices], self.labels[indices], self.divisor)

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on:
            self._on[device] = (self.images.to(device), self.labels.to(device))
        return self._on[device]

    def batches(self, index_batches: list[Tensor], device: torch.device) -> Iterator[
            tuple[Tensor, Tensor]]:
        if not index_batches:
            return
        images, labels = self._tensors(device)
        all_idx = torch.cat(index_batches).to(device)  # one host-to-device copy per pass
        for idx in all_idx.split([b.numel() for b in index_batches]):
            yield images[idx].float().div_(self.divisor), labels[idx]


def _unreadable(path: str, exc: BaseException) -> UsageError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return UsageError(f"imagefolder: cannot read image {path}: {reason}")


def _check_images(samples: list[tuple[str, int]]) -> int:
    """Open every image's header (PIL reads only the header): the first file that is not an
    image is a one-line UsageError naming it, before anything is written. Returns the first
    image's shorter side."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def size(path: str) -> tuple[int, int] | UsageError:
        try:
            with Image.open(path) as img:
                return img.size
        except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError: OSError
            return _unreadable(path, exc)

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(size, [path for path, _ in samples], chunksize=64))
    for result in sizes:
        if isinstance(result, UsageError):
            raise result
    return min(sizes[0])


class _ImageFiles(torch.utils.data.Dataset):
    """Image files -> uint8 ``(3, S, S)``: shorter side resized to ``S``, centre crop. A file
    that cannot be decoded (a truncated JPEG whose header was fine) raises a UsageError that
    names it."""

    def __init__(self, samples: list[tuple[str, int]], img_size: int) -> None:
        self.samples, self.img_size = samples, img_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image
        from torchvision.transforms import functional as TF

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = TF.center_crop(TF.resize(img.convert("RGB"), self.img_size), self.img_size)
                return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), label
        except (OSError, ValueError, SyntaxError) as exc:
            raise _unreadable(path, exc) from None


class FolderSource:
    """Image files read in worker processes by a DataLoader (``workers`` of them)."""

    def __init__(self, samples: list[tuple[str, int]], img_size: int, workers: int) -> None:
        self.dataset = _ImageFiles(samples, img_size)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> Tensor:
        return torch.tensor([label for _, label in self.dataset.samples])

    def subset(self, indices: Tensor) -> FolderSource:
        samples = [self.dataset.samples[i] for i in indices.tolist()]
        return FolderSource(samples, self.dataset.img_size, self.workers)

    def batches(self, index_batches: list[Tensor], device: torch.device) -> Iterator[
            tuple[Tensor, Tensor]]:
        if not index_batches:
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in index_batches],
            num_workers=self.workers, pin_memory=device.type == "cuda",
        )
        try:
            for x, y in loader:
                x = x.to(device, non_blocking=True).float().div_(255.0)
                yield x, y.to(device, non_blocking=True)
        except UsageError as exc:
            # From a worker process the message carries the worker's traceback: keep the
            # error's own last line.
            raise UsageError(str(exc).strip().splitlines()[-1].split("UsageError: ")[-1]) \
                from None


def random_crop(x: Tensor, pad: int, offsets: Tensor) -> Tensor:
    """Crop each image of ``x`` (B, C, H, W) from its zero-padded copy at ``offsets`` (B, 2).

    ``offsets[b] = (dy, dx)`` in ``[0, 2 * pad]``; ``(pad, pad)`` returns the image unchanged.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


@dataclass
class DataBundle:
    """A data set ready for training: metadata, train/test sources and augmentation settings.

    ``mean``/``std`` are per-channel statistics of [0, 1] pixels (the model normalises).
    ``pad``: random-crop padding in pixels (0: no crop); ``flip``: random horizontal flips.
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool
    train: TensorSource | FolderSource
    test: TensorSource | FolderSource

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)

    def with_train_subset(self, size: int, seed: int) -> DataBundle:
        """This bundle with ``size`` training images kept: a stratified subset drawn from
        ``seed`` (every class's share kept), in the original order."""
        from .idx import stratified_subset

        keep = stratified_subset(self.train.labels, size, seed)
        return dataclasses.replace(self, train=self.train.subset(keep))

    def meta(self) -> dict:
        """JSON-able description (what a checkpoint stores about the data)."""
        return {"name": self.name, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std),
                "n_train": self.n_train, "n_test": self.n_test}

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Batches per epoch and rank (the last incomplete batch is dropped)."""
        per_rank = self.n_train // world_size
        return max(1, per_rank // batch_size) if per_rank else 0

    def epoch_plan(self, epoch: int, seed: int, batch_size: int, rank: int = 0,
                   world_size: int = 1) -> EpochPlan:
        """The order and augmentation of epoch ``epoch`` for ``rank``, from ``(seed, epoch)``.

        Every rank draws the same permutation and takes every ``world_size``-th example, so
        the ranks see disjoint shards of equal size. A rank with fewer than ``batch_size``
        examples gets one smaller batch.
        """
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n = self.n_train
        perm = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        steps = self.steps_per_epoch(batch_size, world_size)
        size = min(batch_size, n // world_size)
        keep = torch.arange(rank, n - n % world_size, world_size)[: steps * size]
        return EpochPlan(perm[keep], offsets[keep], flips[keep] & self.flip, size)

    def train_batches(self, plan: EpochPlan, device: torch.device | str,
                      start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Augmented training batches of ``plan`` from step ``start_step`` on."""
        device = torch.device(device)
        bs = plan.batch_size
        chunks = list(plan.indices.split(bs))[start_step:]
        offsets = plan.offsets.to(device).split(bs)[start_step:]
        flips = plan.flips.to(device).split(bs)[start_step:]
        for (x, y), off, flip in zip(self.train.batches(chunks, device), offsets, flips,
                                     strict=True):
            if self.pad:
                x = random_crop(x, self.pad, off)
            if self.flip:
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            yield x, y

    def test_batches(self, batch_size: int, device: torch.device | str,
                     limit: int | None = None, *, rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """The first ``limit`` (all if None) test examples in fixed order, no augmentation.

        With ``world_size > 1``, this rank's share (every ``world_size``-th example).
        """
        n = self.n_test if limit is None else min(limit, self.n_test)
        idx = torch.arange(rank, n, world_size)
        yield from self.test.batches(list(idx.split(batch_size)), torch.device(device))


def _stats(images: Tensor, divisor: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(divisor).transpose(0, 1).reshape(images.shape[1], -1)
    return (tuple(round(v, 4) for v in x.mean(1).tolist()),
            tuple(round(max(v, 1e-3), 4) for v in x.std(1).tolist()))


def _digits(seed: int) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.uint8)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target, test_size=360,
                                              stratify=digits.target, random_state=seed)
    train = TensorSource(torch.from_numpy(x_tr), torch.from_numpy(y_tr), 16.0)
    test = TensorSource(torch.from_numpy(x_te), torch.from_numpy(y_te), 16.0)
    mean, std = _stats(train.images, train.divisor)
    return DataBundle("digits", 10, 1, 8, mean, std, pad=1, flip=False, train=train, test=test)


def _idx(name: str, data_dir: str | os.PathLike | None) -> DataBundle:
    from . import idx

    x_tr, y_tr, x_te, y_te = idx.load(name, data_dir)
    train = TensorSource(x_tr[:, None], y_tr, 255.0)
    mean, std = _stats(train.images, train.divisor)
    return DataBundle(name, 10, 1, 28, mean, std, pad=2, flip=name == "fashion-mnist",
                      train=train, test=TensorSource(x_te[:, None], y_te, 255.0))


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UsageError(f"cannot read CIFAR batch {path}: {exc}") from None


def _cifar_arrays(files: list[Path], label_key: bytes) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for path in files:
        batch = _read_pickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise UsageError(f"{path} is not a CIFAR batch (no {label_key.decode()!r} entry)")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise UsageError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _download_cifar(name: str, data_dir: Path, folder: Path) -> None:
    """torchvision's download of ``name`` into ``data_dir``; a failure (no network, a bad
    archive) is a one-line UsageError, and a ``data_dir`` this call created is removed."""
    import torchvision

    datasets = torchvision.datasets
    dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    created = not data_dir.exists()
    try:
        dataset(str(data_dir), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"{name}: --download failed ({reason}); put the files in {folder} "
                         "yourself and pass --data-dir") from None


def _cifar(name: str, data_dir: Path, download: bool) -> DataBundle:
    if name == "cifar10":
        folder = data_dir / "cifar-10-batches-py"
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key, classes = [folder / "test_batch"], b"labels", 10
    else:
        folder = data_dir / "cifar-100-python"
        train_files, test_files, label_key, classes = ([folder / "train"], [folder / "test"],
                                                       b"fine_labels", 100)
    missing = [p for p in [*train_files, *test_files] if not p.is_file()]
    if missing and download:
        _download_cifar(name, data_dir, folder)
        missing = [p for p in [*train_files, *test_files] if not p.is_file()]
    if missing:
        names = ", ".join(p.name for p in [*train_files, *test_files])
        raise UsageError(f"{name}: {missing[0]} not found; expected {names} in {folder} "
                         f"(set --data-dir, or pass --download to fetch them)")
    x_tr, y_tr = _cifar_arrays(train_files, label_key)
    x_te, y_te = _cifar_arrays(test_files, label_key)
    bad = torch.cat([y_tr, y_te])
    if bad.numel() and (int(bad.min()) < 0 or int(bad.max()) >= classes):
        raise UsageError(f"{name}: labels outside [0, {classes}) in {folder}")
    mean, std = CIFAR_STATS[name]
    return DataBundle(name, classes, 3, 32, mean, std, pad=4, flip=True,
                      train=TensorSource(x_tr, y_tr, 255.0),
                      test=TensorSource(x_te, y_te, 255.0))


def _folder_samples(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    samples = []
    for cls in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
        if cls not in class_to_idx:
            raise UsageError(f"imagefolder: class {cls!r} in {split_dir} is not in the train split")
        for root, _, files in sorted(os.walk(split_dir / cls)):
            samples += [(os.path.join(root, f), class_to_idx[cls]) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS)]
    return samples


def _imagefolder(data_dir: Path, img_size: int | None, workers: int | None) -> DataBundle:
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    for split in (train_dir, val_dir):
        if not split.is_dir():
            raise UsageError(f"imagefolder: {split} not found; expected image files in "
                             f"{data_dir}/train/<class>/ and {data_dir}/val/<class>/ "
                             f"(set --data-dir)")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train, val = _folder_samples(train_dir, class_to_idx), _folder_samples(val_dir, class_to_idx)
    if not train or not val:
        empty = train_dir if not train else val_dir
        raise UsageError(f"imagefolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under "
                         f"{empty}/<class>/")
    if len(classes) < 2:
        raise UsageError(f"imagefolder: {train_dir} has {len(classes)} class folder; a "
                         "classifier needs at least 2")
    first_size = _check_images(train + val)
    if img_size is None:
        img_size = first_size
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    mean, std = IMAGENET_STATS
    return DataBundle("imagefolder", len(classes), 3, img_size, mean, std,
                      pad=max(1, img_size // 8), flip=True,
                      train=FolderSource(train, img_size, workers),
                      test=FolderSource(val, img_size, workers))


def _synthetic(seed: int, num_classes: int, img_size: int) -> DataBundle:
    """Class ``k`` is a random prototype image; examples are noisy copies of it, as uint8."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 1, img_size, img_size, generator=gen)

    def copies(per_class: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.randn(labels.numel(), 1, img_size, img_size, generator=gen)
        x = (protos[labels] + SYNTHETIC_NOISE * noise).clamp_(0, 1)
        return x.mul_(255).round_().to(torch.uint8), labels

    x_tr, y_tr = copies(SYNTHETIC_TRAIN_PER_CLASS)
    x_te, y_te = copies(SYNTHETIC_TEST_PER_CLASS)
    train = TensorSource(x_tr, y_tr, 255.0)
    mean, std = _stats(x_tr, 255.0)
    return DataBundle("synthetic", num_classes, 1, img_size, mean, std, pad=0, flip=False,
                      train=train, test=TensorSource(x_te, y_te, 255.0))


def load_data(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
              seed: int = 0, *, num_classes: int | None = None, img_size: int | None = None,
              workers: int | None = None, train_subset: int | None = None) -> DataBundle:
    """Load data set ``name`` (see the module docstring) as a :class:`DataBundle`.

    Args:
        data_dir: where the files are (cifar: default ``./data``; fashion-mnist: default
            Debian's folder; mnist and imagefolder: required).
        download: let torchvision fetch CIFAR files that are missing.
        seed: the data seed: digits' split, synthetic generation, the training subset (not the
            training seed).
        num_classes: synthetic only (default 1000).
        img_size: imagefolder (default: the first training image's shorter side) and
            synthetic (default 8).
        workers: imagefolder DataLoader worker processes (default ``min(4, cpus)``).
        train_subset: keep a stratified subset of this many training images.

    Raises:
        UsageError: unknown name, missing or unreadable files, options that do not apply, a
            subset larger than the training set.
    """
    bundle = _load(name, data_dir, download, seed, num_classes=num_classes,
                   img_size=img_size, workers=workers)
    if train_subset is None:
        return bundle
    if not 1 <= train_subset <= bundle.n_train:
        raise UsageError(f"--train-subset must be in [1, {bundle.n_train}] for {name}, got "
                         f"{train_subset}")
    classes = int(bundle.train.labels.unique().numel())
    if train_subset < classes:  # the subset promises every class's share
        raise UsageError(f"--train-subset must be at least the number of classes ({classes}) "
                         f"for {name}, so that every class keeps a share; got {train_subset}")
    return bundle.with_train_subset(train_subset, seed)


def _load(name: str, data_dir: str | os.PathLike | None, download: bool, seed: int, *,
          num_classes: int | None, img_size: int | None, workers: int | None) -> DataBundle:
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    if num_classes is not None and name != "synthetic":
        raise UsageError(f"--num-classes applies only to --data synthetic (got --data {name})")
    if img_size is not None and name not in ("imagefolder", "synthetic"):
        raise UsageError(f"--img-size applies only to imagefolder and synthetic data, not {name}")
    if img_size is not None and img_size < 1:
        raise UsageError(f"--img-size must be >= 1, got {img_size}")
    if name == "digits":
        return _digits(seed)
    if name in ("fashion-mnist", "mnist"):
        return _idx(name, data_dir)
    if name == "synthetic":
        num_classes = 1000 if num_classes is None else num_classes
        if not 2 <= num_classes <= 1_000_000:
            raise UsageError(f"--num-classes must be in [2, 1000000], got {num_classes}")
        return _synthetic(seed, num_classes, 8 if img_size is None else img_size)
    if name == "imagefolder":
        if data_dir is None:
            raise UsageError("imagefolder needs --data-dir DIR holding DIR/train/<class>/ and "
                             "DIR/val/<class>/ image folders")
        return _imagefolder(Path(data_dir), img_size, workers)
    return _cifar(name, Path("data" if data_dir is None else data_dir), download)


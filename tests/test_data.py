"""tempfast.train.data: the built-in digits split, CIFAR pickles, ImageFolder, synthetic data, and
the seeded on-device augmentation plan."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tempfast.errors import UsageError
from tempfast.train.data import load_data, random_crop

from ._util import write_idx, write_mnist_layout


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _all(batches):
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_digits_split_is_fixed_stratified_and_in_unit_range(digits):
    assert (digits.n_train, digits.n_test, digits.num_classes) == (1437, 360, 10)
    assert (digits.in_chans, digits.img_size, digits.pad, digits.flip) == (1, 8, 1, False)
    x, y = _all(digits.test_batches(100, "cpu"))
    assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y, minlength=10).clamp(35, 37), torch.bincount(y))
    x2, y2 = _all(load_data("digits").test_batches(64, "cpu"))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(_all(digits.test_batches(50, "cpu", limit=70))[1], y[:70])


def test_epoch_plan_is_seeded_and_differs_between_epochs(digits):
    a, b = digits.epoch_plan(3, seed=1, batch_size=64), digits.epoch_plan(3, seed=1, batch_size=64)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.offsets, b.offsets)
    assert not torch.equal(a.indices, digits.epoch_plan(4, seed=1, batch_size=64).indices)
    assert not torch.equal(a.indices, digits.epoch_plan(3, seed=2, batch_size=64).indices)
    assert a.steps == 1437 // 64 and a.indices.unique().numel() == a.indices.numel()
    assert not a.flips.any(), "digits are never flipped"
    assert int(a.offsets.min()) == 0 and int(a.offsets.max()) == 2


def test_ranks_get_disjoint_equal_shards(digits):
    plans = [digits.epoch_plan(0, 0, 64, rank=r, world_size=2) for r in range(2)]
    assert plans[0].steps == plans[1].steps == 718 // 64
    assert not set(plans[0].indices.tolist()) & set(plans[1].indices.tolist())
    shards = [list(digits.test_batches(1000, "cpu", rank=r, world_size=2)) for r in range(2)]
    assert sum(b[0][1].numel() for b in shards) == 360


def test_train_batches_resume_mid_epoch_replays_the_same_batches(digits):
    plan = digits.epoch_plan(0, 0, 100)
    full = list(digits.train_batches(plan, "cpu"))
    tail = list(digits.train_batches(plan, "cpu", start_step=5))
    assert len(full) == plan.steps and len(tail) == plan.steps - 5
    for (x, y), (x2, y2) in zip(full[5:], tail, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_random_crop_matches_slicing_of_the_padded_image():
    x = torch.rand(6, 3, 5, 7)
    offsets = torch.randint(0, 5, (6, 2), generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    expected = torch.stack([padded[i, :, dy:dy + 5, dx:dx + 7]
                            for i, (dy, dx) in enumerate(offsets.tolist())])
    out = random_crop(x, 2, offsets)
    assert torch.equal(out, expected) and out.is_contiguous()
    assert torch.equal(random_crop(x, 2, torch.full((6, 2), 2)), x)


def _write_cifar(folder, files, label_key, n, classes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in files:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, classes, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_loader_reads_python_pickle_batches(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _write_cifar(tmp_path / "cifar-10-batches-py", files, b"labels", 4, 10)
    bundle = load_data("cifar10", tmp_path)
    assert (bundle.n_train, bundle.n_test, bundle.num_classes, bundle.in_chans) == (20, 4, 10, 3)
    assert bundle.flip and bundle.pad == 4 and len(bundle.mean) == 3
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    x, y = _all(bundle.test_batches(3, "cpu"))
    expected = torch.from_numpy(raw[b"data"].reshape(4, 3, 32, 32)).float() / 255
    assert torch.equal(x, expected) and y.tolist() == raw[b"labels"]
    plan = bundle.epoch_plan(0, 0, 8)
    xb, _ = next(bundle.train_batches(plan, "cpu"))
    assert xb.shape == (8, 3, 32, 32) and float(xb.min()) >= 0 and float(xb.max()) <= 1


def test_cifar100_loader_uses_fine_labels(tmp_path):
    _write_cifar(tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", 6, 100)
    bundle = load_data("cifar100", tmp_path)
    assert (bundle.n_train, bundle.n_test, bundle.num_classes) == (6, 6, 100)


def test_missing_cifar_files_name_the_folder_and_download(tmp_path):
    with pytest.raises(UsageError) as err:
        load_data("cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "--download" in msg and "\n" not in msg


def test_failed_download_is_one_line_and_removes_the_folder_it_made(tmp_path, monkeypatch):
    """No network: torchvision's URLError (an OSError) becomes a one-line UsageError."""
    import urllib.error

    import torchvision

    def offline(root, train, download):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"")
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UsageError) as err:
        load_data("cifar10", tmp_path / "new", download=True)
    msg = str(err.value)
    assert "--download failed" in msg and "Name or service not known" in msg
    assert "\n" not in msg and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(UsageError, match="--download failed"):
        load_data("cifar10", tmp_path / "kept", download=True)
    assert (tmp_path / "kept").is_dir(), "a folder the user made is left alone"


def test_corrupt_cifar_batch_is_a_usage_error(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not a pickle")
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="cannot read CIFAR batch"):
        load_data("cifar100", tmp_path)


def test_imagefolder_reads_generated_pngs_with_workers(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    bundle = load_data("imagefolder", tmp_path, workers=1)
    assert (bundle.n_train, bundle.n_test, bundle.num_classes, bundle.img_size) == (6, 4, 2, 12)
    x, y = _all(bundle.test_batches(3, "cpu"))
    assert x.shape == (4, 3, 12, 12) and y.tolist() == [0, 0, 1, 1]
    with Image.open(tmp_path / "val" / "cat" / "0.png") as img:
        first = np.asarray(img)[:, 2:14]  # centre crop of the 16 px wide side
    assert torch.equal(x[0], torch.from_numpy(first.copy()).permute(2, 0, 1).float() / 255)
    xb, yb = next(bundle.train_batches(bundle.epoch_plan(0, 0, 4), "cpu"))
    assert xb.shape == (4, 3, 12, 12) and yb.shape == (4,)
    resized = load_data("imagefolder", tmp_path, img_size=8, workers=0)
    assert next(resized.test_batches(4, "cpu"))[0].shape == (4, 3, 8, 8)


def _image_folder(root, classes=("cat", "dog"), per_class=2, size=(8, 8)):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_a_file_that_is_not_an_image_is_named_in_one_line_before_training(tmp_path):
    root = _image_folder(tmp_path)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(UsageError) as info:
        load_data("imagefolder", root, workers=0)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_is_named_in_one_line_when_it_is_decoded(tmp_path, workers):
    """A PNG whose header is intact but whose data is cut passes the header check and fails
    when decoded, in a worker process or not: one line naming the file."""
    root = _image_folder(tmp_path, size=(64, 64))
    victim = root / "val" / "cat" / "1.png"
    victim.write_bytes(victim.read_bytes()[:120])
    bundle = load_data("imagefolder", root, workers=workers)
    with pytest.raises(UsageError) as info:
        _all(bundle.test_batches(4, "cpu"))
    message = str(info.value)
    assert str(victim) in message and "\n" not in message and "Traceback" not in message


def test_an_imagefolder_of_one_class_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="at least 2"):
        load_data("imagefolder", _image_folder(tmp_path, classes=("only",)))


def test_imagefolder_without_val_split_is_a_usage_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="val"):
        load_data("imagefolder", tmp_path)


def test_synthetic_large_class_set_is_generated_from_the_seed():
    a = load_data("synthetic", seed=3, num_classes=5000)
    assert (a.num_classes, a.n_train, a.n_test, a.img_size) == (5000, 40000, 10000, 8)
    xa, ya = next(a.test_batches(64, "cpu"))
    xb, yb = next(load_data("synthetic", seed=3, num_classes=5000).test_batches(64, "cpu"))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = next(load_data("synthetic", seed=4, num_classes=5000).test_batches(64, "cpu"))
    assert not torch.equal(xa, xc)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="emnist"), "unknown data set"),
    (dict(name="digits", num_classes=5), "--num-classes"),
    (dict(name="cifar10", img_size=16), "--img-size"),
    (dict(name="imagefolder"), "--data-dir"),
])
def test_bad_data_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        load_data(**kwargs)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files_gzipped_or_not(tmp_path, gz):
    labels = write_mnist_layout(tmp_path, gz=gz)
    bundle = load_data("fashion-mnist", tmp_path)
    assert (bundle.n_train, bundle.n_test, bundle.num_classes, bundle.img_size,
            bundle.in_chans) == (60, 20, 10, 28, 1)
    assert bundle.flip and bundle.pad == 2
    x, _ = _all(bundle.test_batches(7, "cpu"))
    assert x.shape == (20, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(bundle.train.labels, torch.from_numpy(labels).long())
    mnist = load_data("mnist", tmp_path)
    assert not mnist.flip, "digits are not mirror-symmetric"


def test_a_missing_idx_file_says_where_and_how_to_install(tmp_path):
    write_mnist_layout(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UsageError) as info:
        load_data("fashion-mnist", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message
    with pytest.raises(UsageError, match="--data-dir"):
        load_data("mnist")


@pytest.mark.parametrize("damage", ["truncated", "not idx", "labels disagree"])
def test_a_damaged_idx_file_is_one_line(tmp_path, damage):
    write_mnist_layout(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "not idx":
        images.write_bytes(b"PNG not an idx file" * 10)
    else:
        write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(59), gz=False)
    with pytest.raises(UsageError) as info:
        load_data("fashion-mnist", tmp_path)
    assert "\n" not in str(info.value) and "train-" in str(info.value)


def test_train_subset_is_stratified_seeded_and_keeps_the_test_set(tmp_path):
    write_mnist_layout(tmp_path, n_train=200)
    a = load_data("fashion-mnist", tmp_path, train_subset=50, seed=3)
    b = load_data("fashion-mnist", tmp_path, train_subset=50, seed=3)
    c = load_data("fashion-mnist", tmp_path, train_subset=50, seed=4)
    assert a.n_train == 50 and a.n_test == 20
    assert torch.bincount(a.train.labels).tolist() == [5] * 10
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    with pytest.raises(UsageError, match="--train-subset"):
        load_data("fashion-mnist", tmp_path, train_subset=201)
    digits = load_data("digits", train_subset=101)
    assert digits.n_train == 101 and digits.n_test == 360

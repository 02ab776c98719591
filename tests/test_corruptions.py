"""Corruptions: seeded and deterministic, shape / dtype / range kept on any image size, harder
with severity; the CIFAR-10-C loader reads generated .npy files and refuses bad ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tempfast.errors import UsageError
from tempfast.robust.corruptions import CORRUPTIONS, SEVERITIES, CorruptionFiles, corrupt

NOISY = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def _digits(digits, n: int = 48) -> torch.Tensor:
    return digits.tensors()[0][digits.n_train:digits.n_train + n]


def _smooth_rgb(n: int = 6, size: int = 32) -> torch.Tensor:
    """Colour images with structure at several scales (gradients plus a few blobs)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, size)
    base = torch.stack([t[None, :].expand(size, size), t[:, None].expand(size, size),
                        (t[None, :] * t[:, None])])
    blobs = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=gen),
                                            size=(size, size), mode="bilinear")
    return (0.5 * base + 0.5 * blobs).clamp(0, 1)


def test_there_are_ten_types_at_five_severities():
    assert len(CORRUPTIONS) >= 8
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 32, 32), (2, 3, 20, 12), (2, 2, 9, 9)])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_keeps_shape_dtype_and_range(name, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for severity in (1, 5):
        out = corrupt(x, name, severity, seed=0)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_deterministic_for_a_seed(name):
    x = _smooth_rgb()
    assert torch.equal(corrupt(x, name, 3, seed=5), corrupt(x, name, 3, seed=5))
    if name in NOISY:
        assert not torch.equal(corrupt(x, name, 3, seed=5), corrupt(x, name, 3, seed=6))


@pytest.mark.parametrize("images", ["digits8x8", "rgb32"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_grows_with_severity(digits, name, images):
    x = _digits(digits) if images == "digits8x8" else _smooth_rgb()
    change = [float((corrupt(x, name, s, seed=0) - x).abs().mean()) for s in SEVERITIES]
    assert change[0] > 0.0
    assert all(b >= a - 2e-3 for a, b in itertools.pairwise(change)), change
    assert change[-1] > change[0], change


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_pulls_each_channel_to_its_own_mean_like_cifar10c(severity):
    """Hendrycks' ``contrast``: ``means = np.mean(x, axis=(0, 1), keepdims=True)`` on an HWC
    image, ``clip((x - means) * c + means, 0, 1)``."""
    x = torch.stack([0.2 + 0.1 * _smooth_rgb(2)[:, 0], 0.5 + 0.2 * _smooth_rgb(2)[:, 1],
                     0.9 - 0.1 * _smooth_rgb(2)[:, 2]], dim=1)
    got = corrupt(x, "contrast", severity, seed=0)
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    expected = []
    for image in x.permute(0, 2, 3, 1).double().numpy():
        means = np.mean(image, axis=(0, 1), keepdims=True)
        expected.append(np.clip((image - means) * c + means, 0, 1))
    expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=0, atol=1e-6)


def test_bad_name_or_severity_raises(digits):
    x = _digits(digits, 2)
    with pytest.raises(ValueError, match="corruption: expected one of"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=r"severity: expected 1\.\.5"):
        corrupt(x, "contrast", 6)
    with pytest.raises(ValueError, match="float"):
        corrupt(x[0], "contrast", 1)


def _write_cifar_c(folder, n=4, names=("gaussian_noise", "fog"), labels_per_severity=False):
    """CIFAR-10-C layout: <name>.npy (5 * n, 32, 32, 3) uint8, labels.npy; image i of
    severity s is filled with the value 10 * s + i, so every read can be checked."""
    folder.mkdir(exist_ok=True)
    values = np.array([10 * s + i for s in SEVERITIES for i in range(n)], dtype=np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (5 * n, 32, 32, 3)).copy()
    for k, name in enumerate(names):
        np.save(folder / f"{name}.npy", images + k)
    labels = np.arange(n) % 10 if labels_per_severity else np.tile(np.arange(n) % 10, 5)
    np.save(folder / "labels.npy", labels.astype(np.int64))
    return folder


@pytest.mark.parametrize("labels_per_severity", [False, True])
def test_cifar_c_loader_reads_generated_files(tmp_path, labels_per_severity):
    files = CorruptionFiles(_write_cifar_c(tmp_path / "c", labels_per_severity=labels_per_severity))
    assert files.names == ["fog", "gaussian_noise"]
    assert files.per_severity == 4 and files.image_shape == (3, 32, 32)
    batches = list(files.batches("gaussian_noise", 3, batch_size=3, device=torch.device("cpu")))
    assert [len(y) for _, y in batches] == [3, 1]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0, 0, 0] * 255, torch.tensor([30.0, 31, 32, 33]))
    assert torch.equal(y, torch.arange(4))
    (x_fog, _), = files.batches("fog", 5, batch_size=8, device=torch.device("cpu"), limit=1)
    assert x_fog.shape[0] == 1 and round(float(x_fog[0, 0, 0, 0]) * 255) == 51


@pytest.mark.parametrize(("damage", "match"), [
    (lambda d: (d / "labels.npy").unlink(), "labels.npy is missing"),
    (lambda d: np.save(d / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8)), "fog.npy: expected"),
    (lambda d: np.save(d / "fog.npy", np.zeros((20, 32, 32, 3), np.float32)), "fog.npy"),
    (lambda d: np.save(d / "labels.npy", np.zeros(3, np.int64)), "labels"),
    (lambda d: (d / "fog.npy").write_bytes(b"not numpy"), "cannot read"),
    (lambda d: [p.unlink() for p in d.glob("[!l]*.npy")], "no <corruption>.npy"),
])
def test_cifar_c_loader_refuses_bad_files(tmp_path, damage, match):
    folder = _write_cifar_c(tmp_path / "c")
    damage(folder)
    with pytest.raises(UsageError, match=match):
        CorruptionFiles(folder)


def test_cifar_c_loader_refuses_missing_folder(tmp_path):
    with pytest.raises(UsageError, match="is not a directory"):
        CorruptionFiles(tmp_path / "nowhere")

"""Common corruptions of [0, 1] images at CIFAR-10-C's severities, and a loader for the published
files.

Regenerated suite (:data:`LABEL`): Hendrycks & Dietterich (2019) corruptions re-implemented in
torch, each at severities 1..5 with CIFAR-10-C's parameters. Every function maps ``x`` of shape
``(N, C, H, W)``, float in [0, 1], any ``C`` and any size (8x8 grey digits included), to a tensor
of the same shape, dtype and device, clamped to [0, 1]. Random corruptions draw from a
``torch.Generator`` on ``x.device``, so the result is a function of ``(x, seed)`` on a given
device. Spatial parameters (blur radii) are CIFAR-10-C's in pixels for images up to 32 px and
scale with the image side above that.

========================  ==============================================================
``gaussian_noise``        ``x + N(0, s^2)``, ``s`` in (0.04, 0.06, 0.08, 0.09, 0.10)
``shot_noise``            ``Poisson(x * k) / k``, ``k`` in (500, 250, 100, 75, 50)
``impulse_noise``         salt and pepper on a fraction (0.01, 0.02, 0.03, 0.05, 0.07)
``speckle_noise``         ``x + x * N(0, s^2)``, ``s`` in (0.06, 0.10, 0.12, 0.16, 0.20)
``gaussian_blur``         Gaussian kernel, sigma (0.4, 0.6, 0.7, 0.8, 1.0) px
``defocus_blur``          disk of radius (0.3, 0.4, 0.5, 1, 1.5) px, aliased by a Gaussian
``contrast``              ``(x - m) * c + m``, ``m`` the per-channel image mean, ``c`` in
                          (0.75, 0.5, 0.4, 0.3, 0.15)
``brightness``            HSV value ``V + b``, ``b`` in (0.05, 0.1, 0.15, 0.2, 0.3)
``pixelate``              area-resize to (0.95, 0.9, 0.85, 0.75, 0.65) of the side, back by
                          nearest neighbour
``jpeg_compression``      JPEG (Pillow) at quality (80, 65, 58, 50, 40)
========================  ==============================================================

Published files (:class:`CorruptionFiles`): CIFAR-10-C / CIFAR-100-C ship one ``<name>.npy``
per corruption, ``(5 * n, 32, 32, 3)`` uint8 NHWC with severity ``s`` in rows
``[(s - 1) * n, s * n)``, and ``labels.npy`` (``5 * n`` or ``n`` labels).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError

LABEL = "common corruptions (Hendrycks & Dietterich), regenerated on the test images"
SEVERITIES = (1, 2, 3, 4, 5)


def _param(values: tuple, severity: int):
    if severity not in SEVERITIES:
        raise ValueError(f"severity: expected 1..5, got {severity}")
    return values[severity - 1]


def _pixel_scale(x: Tensor) -> float:
    return max(1.0, max(x.shape[-2:]) / 32.0)


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    s = _param((0.04, 0.06, 0.08, 0.09, 0.10), severity)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + s * noise).clamp(0.0, 1.0)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    k = _param((500, 250, 100, 75, 50), severity)
    return (torch.poisson(x.clamp(0.0, 1.0) * k, generator=generator) / k).clamp(0.0, 1.0)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    amount = _param((0.01, 0.02, 0.03, 0.05, 0.07), severity)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = torch.where(u < amount / 2, torch.zeros_like(x), x)
    return torch.where(u > 1.0 - amount / 2, torch.ones_like(x), x)


def speckle_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    s = _param((0.06, 0.10, 0.12, 0.16, 0.20), severity)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + x * s * noise).clamp(0.0, 1.0)


def _gaussian_kernel_1d(sigma: float, radius: int, x: Tensor) -> Tensor:
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise 2-D filter with a ``(kh, kw)`` kernel, edge pixels replicated."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    padded = F.pad(x.reshape(n * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2),
                   mode="replicate")
    return F.conv2d(padded, kernel[None, None]).reshape(n, c, h, w)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    k = _gaussian_kernel_1d(sigma, radius, x)
    return _filter(_filter(x, k[None, :]), k[:, None])


def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    sigma = _param((0.4, 0.6, 0.7, 0.8, 1.0), severity) * _pixel_scale(x)
    return _gaussian_blur(x, sigma).clamp(0.0, 1.0)


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    radius, alias = _param(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
                           severity)
    scale = _pixel_scale(x)
    radius, alias = radius * scale, alias * scale
    half = math.ceil(radius) + 1
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(x.dtype)
    disk = _gaussian_blur(disk[None, None] / disk.sum(), alias)[0, 0]
    return _filter(x, disk / disk.sum()).clamp(0.0, 1.0)


def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Pull every pixel towards its channel's mean over the image (CIFAR-10-C's
    ``np.mean(x, axis=(0, 1))`` on HWC), so the image's average colour is kept."""
    c = _param((0.75, 0.5, 0.4, 0.3, 0.15), severity)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0.0, 1.0)


def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Raise the HSV value ``V = max_c x_c`` by ``b`` (clipped to 1), hue and saturation kept.

    With H and S fixed every channel is proportional to V, so the pixel is scaled by
    ``V' / V``; a black pixel (V = 0, no hue) becomes grey ``V'``.
    """
    b = _param((0.05, 0.1, 0.15, 0.2, 0.3), severity)
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + b).clamp(max=1.0)
    scaled = x * (new_value / value.clamp(min=1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(x)).clamp(0.0, 1.0)


def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    c = _param((0.95, 0.9, 0.85, 0.75, 0.65), severity)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def _jpeg_plane(plane: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(plane).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """JPEG round trip with Pillow: RGB images as colour, any other channel count per channel."""
    quality = _param((80, 65, 58, 50, 40), severity)
    pixels = (x.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        if image.shape[0] == 3:
            out[i] = _jpeg_plane(image.transpose(1, 2, 0), quality).transpose(2, 0, 1)
        else:
            for c, plane in enumerate(image):
                out[i, c] = _jpeg_plane(plane, quality)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0


CORRUPTIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Corruption ``name`` at ``severity`` (1..5) of ``x`` ``(N, C, H, W)`` in [0, 1], seeded."""
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption: expected one of {', '.join(CORRUPTIONS)}, got {name!r}")
    if x.dim() != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x: expected a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    with torch.no_grad():
        return CORRUPTIONS[name](x, severity, generator)


class CorruptionFiles:
    """The published CIFAR-10-C / CIFAR-100-C arrays in ``directory`` (memory-mapped).

    ``names``: the corruptions found (every ``*.npy`` but ``labels.npy``), sorted;
    ``per_severity``: images per severity (10000 for the published files).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UsageError(
                f"--corruptions-dir: {self.directory} is not a directory (expected CIFAR-10-C / "
                "CIFAR-100-C files: <corruption>.npy and labels.npy)"
            )
        labels_path = self.directory / "labels.npy"
        if not labels_path.is_file():
            raise UsageError(f"--corruptions-dir: {labels_path} is missing")
        self.names = sorted(p.stem for p in self.directory.glob("*.npy") if p.stem != "labels")
        if not self.names:
            raise UsageError(f"--corruptions-dir: no <corruption>.npy files in {self.directory}")
        self._labels = self._load(labels_path)
        self._images = {name: self._load(self.directory / f"{name}.npy") for name in self.names}
        first = self._images[self.names[0]]
        self.per_severity = first.shape[0] // 5 if first.ndim == 4 else 0
        for name, images in self._images.items():
            if (images.ndim != 4 or images.dtype != np.uint8 or self.per_severity == 0
                    or images.shape != (5 * self.per_severity, *first.shape[1:])):
                raise UsageError(
                    f"--corruptions-dir: {name}.npy: expected uint8 images of shape "
                    f"(5 x n, H, W, C) like {self.names[0]}.npy, got {images.dtype} "
                    f"{images.shape}"
                )
        if self._labels.ndim != 1 or self._labels.shape[0] not in (self.per_severity,
                                                                    5 * self.per_severity):
            raise UsageError(
                f"--corruptions-dir: {labels_path}: expected {5 * self.per_severity} or "
                f"{self.per_severity} labels, got shape {self._labels.shape}"
            )

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--corruptions-dir: cannot read {path}: {exc}") from exc

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        _, h, w, c = self._images[self.names[0]].shape
        return c, h, w

    def batches(self, name: str, severity: int, batch_size: int, device: torch.device,
                limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` batches of corruption ``name`` at ``severity``: x float NCHW in [0, 1]."""
        start = (_param(SEVERITIES, severity) - 1) * self.per_severity
        count = self.per_severity if limit is None else min(limit, self.per_severity)
        labels = self._labels
        if labels.shape[0] != self.per_severity:
            labels = labels[start:start + self.per_severity]
        for i in range(0, count, batch_size):
            j = min(i + batch_size, count)
            images = torch.from_numpy(np.array(self._images[name][start + i:start + j]))
            x = images.to(device).permute(0, 3, 1, 2).float().div_(255.0)
            y = torch.from_numpy(np.array(labels[i:j], dtype=np.int64)).to(device)
            yield x.contiguous(), y

"""Natural perturbations: small rotations, translations, scalings and elastic deformations of
the test images, at three strengths (the paper's robustness claim beside common corruptions).

Each perturbation moves the pixels, never their values: the image is resampled bilinearly from
a displaced grid (``torch.nn.functional.grid_sample``, the border pixels repeated outside).
Every image gets its own random direction at a fixed magnitude, so a strength is exact:

================  ==========  ====  =====
perturbation      strength 1     2      3
================  ==========  ====  =====
``rotation``           5 deg    10     20
``translation``           4%    8%    12%
``scaling``              1.1   1.2   1.35
``elastic``               2%    4%     6%
================  ==========  ====  =====

``rotation``: by +-angle about the centre; ``translation``: a shift of this share of the side
in a uniformly random direction; ``scaling``: zoom in or out by this factor about the centre;
``elastic``: Simard et al. (2003), a uniform random field smoothed by a Gaussian of 10% of the
side, scaled to this RMS displacement (a share of the side).

On 28 x 28 Fashion-MNIST a translation of 4% is about 1.1 pixels; on 8 x 8 digits, 0.3 pixels
(resampled between pixels). The draws come from a generator seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

STRENGTHS = (1, 2, 3)
ROTATION_DEGREES = (5.0, 10.0, 20.0)
TRANSLATION = (0.04, 0.08, 0.12)
SCALING = (1.1, 1.2, 1.35)
ELASTIC_RMS = (0.02, 0.04, 0.06)
ELASTIC_SMOOTHING = 0.1
LABEL = "natural perturbations (rotation, translation, scaling, elastic), resampled"


def _level(values: tuple[float, ...], strength: int) -> float:
    if strength not in STRENGTHS:
        raise ValueError(f"strength: expected one of {STRENGTHS}, got {strength!r}")
    return values[strength - 1]


def _signs(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator, device=device).float() * 2 - 1


def _warp(x: Tensor, theta: Tensor, offset: Tensor | None = None) -> Tensor:
    """``x`` resampled at the affine grid ``theta`` ``(N, 2, 3)`` (plus ``offset``
    ``(N, H, W, 2)`` in grid units [-1, 1]), border pixels repeated."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if offset is not None:
        grid = grid + offset
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _identity(x: Tensor) -> Tensor:
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    return theta


def rotation(x: Tensor, strength: int, generator: torch.Generator) -> Tensor:
    """Rotated by +-angle about the centre (sign per image)."""
    angle = math.radians(_level(ROTATION_DEGREES, strength))
    a = angle * _signs(x.shape[0], generator, x.device).to(x.dtype)
    theta = _identity(x)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _warp(x, theta)


def translation(x: Tensor, strength: int, generator: torch.Generator) -> Tensor:
    """Shifted by a share of the side in a random direction (uniform angle per image)."""
    length = 2.0 * _level(TRANSLATION, strength)  # grid units span 2 per side
    phi = torch.rand(x.shape[0], generator=generator, device=x.device).to(x.dtype) * 2 * math.pi
    theta = _identity(x)
    theta[:, 0, 2], theta[:, 1, 2] = length * torch.cos(phi), length * torch.sin(phi)
    return _warp(x, theta)


def scaling(x: Tensor, strength: int, generator: torch.Generator) -> Tensor:
    """Zoomed in or out (per image) by the strength's factor about the centre."""
    factor = _level(SCALING, strength)
    zoom = torch.where(_signs(x.shape[0], generator, x.device) > 0,
                       torch.tensor(1.0 / factor, device=x.device),
                       torch.tensor(factor, device=x.device)).to(x.dtype)
    theta = _identity(x)
    theta[:, 0, 0] = theta[:, 1, 1] = zoom  # sampling grid scaled: < 1 zooms in
    return _warp(x, theta)


def _smooth(noise: Tensor, sigma: float) -> Tensor:
    """``noise`` ``(N, C, H, W)`` blurred by a separable Gaussian of ``sigma`` pixels (edges
    repeated)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=noise.device, dtype=noise.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = noise.shape[1]
    across = F.pad(noise, (radius, radius, 0, 0), mode="replicate")
    noise = F.conv2d(across, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    down = F.pad(noise, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(down, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def elastic(x: Tensor, strength: int, generator: torch.Generator) -> Tensor:
    """Simard's elastic deformation: a smoothed random displacement field, scaled per image to
    the strength's RMS displacement."""
    n, _, h, w = x.shape
    noise = torch.rand(n, 2, h, w, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    field = _smooth(noise, ELASTIC_SMOOTHING * max(h, w))
    rms = field.pow(2).sum(1).mean((1, 2)).sqrt().clamp_min(1e-12)
    field = field * (2.0 * _level(ELASTIC_RMS, strength) / rms).view(n, 1, 1, 1)
    return _warp(x, _identity(x), field.permute(0, 2, 3, 1))


PERTURBATIONS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "rotation": rotation,
    "translation": translation,
    "scaling": scaling,
    "elastic": elastic,
}


def perturb(x: Tensor, name: str, strength: int, seed: int = 0) -> Tensor:
    """Perturbation ``name`` at ``strength`` (1..3) of ``x`` ``(N, C, H, W)`` in [0, 1],
    seeded; the result is in [0, 1] (bilinear resampling of [0, 1] values)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"perturbation: expected one of {', '.join(PERTURBATIONS)}, got "
                         f"{name!r}")
    if x.dim() != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x: expected a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    with torch.no_grad():
        return PERTURBATIONS[name](x, strength, generator)

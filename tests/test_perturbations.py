"""Natural perturbations: each moves pixels by its stated amount (a translation's shift, a
rotation's angle, a scaling's factor, an elastic field's RMS), keeps values in [0, 1], is
seeded, grows with strength; the evaluation reports them on the images it is told to."""

from __future__ import annotations

import math

import pytest
import torch

from tempfast.robust import perturbations as pert
from tempfast.robust.evaluation import evaluate

SIDE = 28


def _blob() -> torch.Tensor:
    x = torch.zeros(6, 1, SIDE, SIDE)
    x[:, :, 9:19, 11:17] = 1.0
    return x


def _centroid(x: torch.Tensor) -> torch.Tensor:
    cols = torch.arange(SIDE, dtype=x.dtype).view(1, 1, 1, -1)
    rows = torch.arange(SIDE, dtype=x.dtype).view(1, 1, -1, 1)
    mass = x.sum((1, 2, 3))
    return torch.stack([(x * cols).sum((1, 2, 3)) / mass, (x * rows).sum((1, 2, 3)) / mass], 1)


@pytest.mark.parametrize("strength", pert.STRENGTHS)
def test_translation_moves_the_image_by_its_share_of_the_side(strength):
    x = _blob()
    shift = (_centroid(pert.perturb(x, "translation", strength, seed=3)) - _centroid(x)).norm(dim=1)
    assert torch.allclose(shift, torch.full_like(shift, pert.TRANSLATION[strength - 1] * SIDE),
                          atol=1e-3)


def test_rotation_turns_the_principal_axis_by_its_angle():
    x = _blob()  # a tall bar: its principal axis is vertical
    y = pert.perturb(x, "rotation", 3, seed=0)
    c = _centroid(y)
    cols = torch.arange(SIDE, dtype=y.dtype).view(1, 1, 1, -1) - c[:, 0].view(-1, 1, 1, 1)
    rows = torch.arange(SIDE, dtype=y.dtype).view(1, 1, -1, 1) - c[:, 1].view(-1, 1, 1, 1)
    cov_xy, cov_yy = (y * cols * rows).sum((1, 2, 3)), (y * rows * rows).sum((1, 2, 3))
    cov_xx = (y * cols * cols).sum((1, 2, 3))
    axis = 0.5 * torch.atan2(2 * cov_xy, cov_xx - cov_yy)  # angle from the horizontal
    tilt = (axis.abs() - math.pi / 2).abs()
    assert torch.allclose(tilt, torch.full_like(tilt, math.radians(pert.ROTATION_DEGREES[2])),
                          atol=math.radians(1.5))


def test_scaling_changes_the_area_by_the_square_of_its_factor():
    x = _blob()
    ratio = pert.perturb(x, "scaling", 3, seed=1).sum((1, 2, 3)) / x.sum((1, 2, 3))
    f = pert.SCALING[2] ** 2
    assert all(min(abs(r - f), abs(r - 1 / f)) < 0.03 * f for r in ratio.tolist())


def test_every_perturbation_is_seeded_in_range_and_grows_with_strength():
    # smooth images (a Gaussian spot off the centre): a larger move is a larger change (on
    # white noise every move of a pixel or more changes the image about as much)
    g = torch.arange(16, dtype=torch.float32)
    spot = torch.exp(-((g.view(-1, 1) - 5) ** 2 + (g.view(1, -1) - 9) ** 2) / (2 * 2.5 ** 2))
    x = spot.expand(4, 3, 16, 16) * torch.linspace(0.5, 1.0, 4).view(4, 1, 1, 1)
    for name in pert.PERTURBATIONS:
        changes = []
        for strength in pert.STRENGTHS:
            y = pert.perturb(x, name, strength, seed=5)
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
            assert torch.equal(y, pert.perturb(x, name, strength, seed=5))
            changes.append(float((y - x).abs().mean()))
        assert changes == sorted(changes) and changes[0] > 0, (name, changes)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="perturbation: expected one of rotation"):
        pert.perturb(torch.rand(1, 1, 8, 8), "shear", 1)
    with pytest.raises(ValueError, match="strength: expected one of"):
        pert.perturb(torch.rand(1, 1, 8, 8), "rotation", 4)
    with pytest.raises(ValueError, match="x: expected a float"):
        pert.perturb(torch.zeros(1, 8, 8), "rotation", 1)


def test_the_evaluation_reports_perturbations_on_the_images_it_is_told(digits):
    common = dict(train_temperature=1.0, eps=0.1, steps=2, attacks="none", n_examples=40,
                  corruptions=True, severities=(1,), calibration=False, perturbations=True)
    few = evaluate(digits.model(), digits.test(), **common)
    assert few["perturbations"]["n_examples"] == few["corruptions"]["n_examples"] == 40
    assert set(few["perturbations"]["per_perturbation"]) == set(pert.PERTURBATIONS)
    every = evaluate(digits.model(), digits.test(), shift_examples="all", **common)
    n_test = len(digits.test().x)
    assert every["perturbations"]["n_examples"] == every["corruptions"]["n_examples"] == n_test
    assert every["n_examples"] == 40  # attacks and clean accuracy keep n_examples
    assert 0.0 <= every["perturbation_acc"] <= 1.0
    assert every["perturbations"]["per_perturbation"]["rotation"]["1"] >= \
        every["perturbations"]["per_perturbation"]["rotation"]["3"] - 0.05

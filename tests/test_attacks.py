"""Attacks: PGD / APGD / Square stay in the eps-ball and in [0, 1], raise the loss, keep the
caller's RNG and model mode; the CW margin and DLR losses are right for negative logits and
invariant to the logit scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tempfast.robust.attacks import APGD, ATTACKS, PGD, Square, build_attack
from tempfast.robust.losses import attack_loss, dlr_loss, margin_loss

EPS = 0.1


def _assert_in_budget(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("loss", ["ce", "cw", "dlr"])
def test_pgd_stays_in_eps_ball_and_unit_box(digits, loss):
    x, y = digits.batch()  # digits: many pixels exactly 0 or 1, so the clamp is exercised
    torch.manual_seed(0)
    x_adv = PGD(digits.model(), EPS, alpha=0.04, steps=5, loss=loss, restarts=2)(x, y)
    _assert_in_budget(x_adv, x, EPS)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_raises_loss_over_clean(digits, loss):
    model = digits.model()
    x, y = digits.batch()
    torch.manual_seed(0)
    x_adv = PGD(model, EPS, alpha=0.025, steps=10, loss=loss)(x, y)
    with torch.no_grad():
        clean, adv = attack_loss(loss, model(x), y), attack_loss(loss, model(x_adv), y)
    assert float(adv.mean()) > float(clean.mean()) + 0.1
    assert float((adv >= clean).float().mean()) > 0.95


def test_pgd_restarts_keep_fooled_examples_and_attack_only_the_rest(digits):
    model = digits.model()
    x, y = digits.batch(128)
    fooled, sizes = {}, []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    for restarts in (1, 3):
        sizes.clear()
        torch.manual_seed(7)
        with torch.no_grad():
            fooled[restarts] = model(PGD(model, 0.06, 0.02, 3, "cw", restarts=restarts)(x, y))
        fooled[restarts] = fooled[restarts].argmax(1) != y
    # The first restart draws the same random start; later restarts only add fooled examples.
    assert bool((fooled[3] | ~fooled[1]).all())
    left = 128 - int(fooled[1].sum())
    assert 0 < left < 128
    # 3 steps on all, a check on all, the second restart on the unfooled only, a check on all.
    assert sizes[:8] == [128] * 4 + [left] * 3 + [128]


def test_pgd_crafts_in_eval_mode_and_restores_training_mode(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 10)).train()
    stats = model[2].running_mean.clone()
    x, y = digits.batch(32)
    PGD(model, EPS, 0.03, 3)(x, y)
    assert model.training
    assert torch.equal(model[2].running_mean, stats)


def test_margin_loss_is_correct_for_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -7.0, -4.0]])
    y = torch.tensor([1, 1])
    # Zeroing the true logit instead of masking it would give 0 - (-1) = 1 for row 0.
    assert torch.equal(margin_loss(logits, y), torch.tensor([-2.0, 5.0]))


def test_dlr_loss_is_scale_and_shift_invariant():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(32, 10, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    torch.testing.assert_close(dlr_loss(z * 1e3 - 50.0, y), dlr_loss(z, y), rtol=1e-4, atol=1e-5)
    top = z.topk(3, dim=1).values
    torch.testing.assert_close(dlr_loss(z, y), margin_loss(z, y) / (top[:, 0] - top[:, 2]))


def test_dlr_loss_of_two_classes_is_the_margin():
    """Two classes have no third logit: DLR is the CW margin there (a scale-invariant
    function of the single margin would have a zero gradient everywhere)."""
    z, y = torch.tensor([[2.0, -1.0], [0.5, 3.0]]), torch.tensor([0, 0])
    assert torch.equal(dlr_loss(z, y), margin_loss(z, y))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dlr_loss(z[:, :1], y)


@pytest.mark.parametrize("loss", ["dlr", "ce", "cw"])
def test_apgd_returns_a_misclassified_iterate_whenever_one_was_found(digits, loss):
    """APGD keeps the best iterate per example: an example misclassified at any iterate is
    returned misclassified, even when later iterates moved back."""
    model = digits.model()
    x, y = digits.batch(128)
    seen = torch.zeros(len(y), dtype=torch.bool)

    def record(module, args, out):
        if out.shape[0] == len(y):
            seen.logical_or_(out.detach().argmax(1) != y)

    handle = model.register_forward_hook(record)
    x_adv = APGD(model, 0.08, steps=10, loss=loss, seed=5)(x, y)
    handle.remove()
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert int(seen.sum()) > 0
    assert torch.equal(fooled, seen)
    _assert_in_budget(x_adv, x, 0.08)


def test_apgd_is_at_least_as_strong_as_pgd_of_the_same_steps(digits):
    model = digits.model()
    x, y = digits.batch(256)
    torch.manual_seed(0)
    with torch.no_grad():
        pgd = model(PGD(model, 0.06, 0.015, 10, "cw")(x, y)).argmax(1) == y
        apgd = model(APGD(model, 0.06, steps=10, loss="cw", seed=0)(x, y)).argmax(1) == y
    assert float(apgd.float().mean()) <= float(pgd.float().mean()) + 0.01


@pytest.mark.parametrize("make", [
    lambda m: APGD(m, EPS, steps=5, loss="dlr", seed=3),
    lambda m: APGD(m, EPS, steps=5, loss="ce", restarts=2, seed=3),
    lambda m: Square(m, EPS, queries=30, seed=3),
])
def test_seeded_attacks_stay_in_budget_and_keep_the_caller_rng(digits, make):
    model = digits.model()
    x, y = digits.batch()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = make(model)(x, y), make(model)(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    _assert_in_budget(first, x, EPS)
    with torch.no_grad():
        assert int((model(first).argmax(1) == y).sum()) < int((model(x).argmax(1) == y).sum())


@pytest.mark.parametrize("name", ATTACKS)
def test_build_attack_builds_every_suite_attack(digits, name):
    x, y = digits.batch(16)
    attack = build_attack(name, digits.model(), eps=EPS, alpha=0.03, steps=2, temperature=4.0,
                          square_queries=5)
    _assert_in_budget(attack(x, y), x, EPS)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "fgsm"}, "^attack must be one of"),
    ({"eps": -0.1}, r"^eps must lie in \[0, 1\]"),
    ({"eps": 1.5}, r"^eps must lie in \[0, 1\]"),
    ({"alpha": 0.0}, "^alpha must be finite and > 0"),
    ({"steps": 0}, "^steps must be >= 1"),
    ({"restarts": 0}, "^restarts must be >= 1"),
])
def test_bad_attack_settings_raise(digits, kwargs, match):
    settings = {"name": "pgd-cw", "eps": EPS, "alpha": 0.01, "steps": 2, "restarts": 1} | kwargs
    name = settings.pop("name")
    with pytest.raises(ValueError, match=match):
        build_attack(name, digits.model(), **settings)


def test_multi_targeted_pgd_tries_each_target_and_attacks_only_survivors(digits):
    from tempfast.robust.targeted import MultiTargetedPGD

    model = digits.model()
    x, y = digits.batch(128)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    torch.manual_seed(0)
    x_adv = MultiTargetedPGD(model, 0.06, 0.02, 3, targets=3)(x, y)
    _assert_in_budget(x_adv, x, 0.06)
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
        clean = model(x).argmax(1) == y
    assert int(robust.sum()) < int(clean.sum())
    # one clean pass, then per target a survivors' check and 3 steps on the survivors only
    checks = [sizes[1], sizes[5], sizes[9]]
    assert checks == [128] * 3 and sizes[6] <= sizes[2] and sizes[10] <= sizes[6]
    # On two classes there is one target: the attack is margin PGD on z_other - z_y.
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    xs, ys = x[:8], torch.zeros(8, dtype=torch.long)
    torch.manual_seed(0)
    _assert_in_budget(MultiTargetedPGD(net, 0.06, 0.02, 2, targets=3)(xs, ys), xs, 0.06)

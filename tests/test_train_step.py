"""tempfast.train building blocks: train_step, the training attack, schedules, defaults."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import tempfast
from tempfast.errors import SettingError
from tempfast.nn import TemperatureCrossEntropyLoss
from tempfast.robust.attacks import PGD
from tempfast.train import TrainConfig, TrainingAttack, build_optimizer, lr_factor, train_step
from tempfast.train.models import build_model


def _setup(temperature=8.0, learnable=False):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,))
    criterion = TemperatureCrossEntropyLoss(temperature, learnable=learnable)
    cfg = TrainConfig(temp=temperature, learn_temp=learnable).resolved()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return model, criterion, build_optimizer(cfg, model, criterion), cfg, x, y


def test_train_step_is_one_sgd_step_on_the_temperature_scaled_loss():
    model, criterion, opt, _, x, y = _setup()
    ref = build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,))
    ref.load_state_dict(model.state_dict())
    model.train(), ref.train()
    loss, correct = train_step(model, opt, criterion, x, y)
    expected = tempfast.reference.cross_entropy(ref(x), y, 8.0)
    expected.backward()
    assert not loss.requires_grad and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected.detach().float())
    assert correct.dtype == torch.int64 and 0 <= int(correct) <= 16
    weight, ref_weight = model.net[0][0].weight, ref.net[0][0].weight
    # Nesterov SGD from zero momentum: w - lr * (1 + 0.9) * (g + wd * w).
    step = 0.05 * 1.9 * (ref_weight.grad + 5e-4 * ref_weight)
    torch.testing.assert_close(weight, ref_weight - step, rtol=1e-4, atol=1e-6)


def test_train_step_trains_on_the_attacked_batch():
    """The step's weights are those of a step on the attack's output, not on the clean batch
    (a step that called the attack and ignored its result would fail here)."""
    x_adv = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    seen = []

    def attack(xb, yb):
        seen.append(xb)
        return x_adv

    weights = {}
    for name, kwargs, batch in (("attacked", {"attack": attack}, None),
                                ("on x_adv", {}, x_adv), ("on x", {}, None)):
        model, criterion, opt, _, x, y = _setup(1.0)
        model.train()
        train_step(model, opt, criterion, x if batch is None else batch, y, **kwargs)
        weights[name] = model.net[0][0].weight.detach().clone()
    assert seen and seen[0].shape == x_adv.shape
    torch.testing.assert_close(weights["attacked"], weights["on x_adv"])
    assert not torch.allclose(weights["attacked"], weights["on x"])


def test_fp16_autocast_with_a_gradient_scaler_updates_the_weights():
    model, criterion, opt, _, x, y = _setup(2.0)
    model.train()
    before = model.net[0][0].weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu")
    loss, _ = train_step(model, opt, criterion, x, y, scaler=scaler, amp_dtype=torch.float16)
    assert torch.isfinite(loss) and not torch.equal(before, model.net[0][0].weight)


def test_training_attack_follows_the_learned_temperature():
    model, criterion, _, cfg, x, y = _setup(3.0, learnable=True)
    attack = TrainingAttack(model, dataclasses.replace(cfg, adv="pgd", steps=1), criterion)
    with torch.no_grad():
        criterion.log_temperature.fill_(math.log(5.0))
    attack(x, y)
    assert float(attack.pgd.temperature) == pytest.approx(5.0)
    raw = TrainingAttack(model, dataclasses.replace(cfg, attack_loss="raw"), criterion)
    assert raw.pgd.temperature == 1.0 and isinstance(raw.pgd, PGD)


def test_learned_temperature_is_optimised_without_weight_decay():
    _, criterion, opt, *_ = _setup(4.0, learnable=True)
    groups = [g for g in opt.param_groups if any(p is criterion.log_temperature
                                                 for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


def test_schedules():
    assert lr_factor(0, 100, 0, "cosine") == 1.0
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0)
    assert [lr_factor(s, 100, 0, "step") for s in (49, 50, 75)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(4, 100, 10, "none") == 0.5 and lr_factor(60, 100, 10, "none") == 1.0


def test_per_data_defaults():
    digits = TrainConfig().resolved()
    assert (digits.model, digits.eps, digits.steps) == ("small_cnn", 0.1, 7)
    assert digits.output == "output/train/digits-small_cnn-T1-none-seed0"
    cifar = TrainConfig(data="cifar10", opt="adamw").resolved()
    assert (cifar.model, cifar.eps, cifar.alpha, cifar.steps) == ("resnet18", 8 / 255, 2 / 255, 10)
    assert (cifar.lr, cifar.wd) == (1e-3, 0.05)


@pytest.mark.parametrize("changes, match", [
    (dict(temp=float("nan")), "^temp must be finite"), (dict(alpha=0.0), "^alpha must be"),
    (dict(epochs=0), "^epochs must be >= 1"), (dict(lr=-1.0), "^lr must be"),
    (dict(opt="lamb"), "^opt must be one of"), (dict(eps=2.0), r"^eps must lie in \[0, 1\]"),
    (dict(eval_attacks=["fgsm"]), "^eval_attacks names an unknown attack 'fgsm'"),
    (dict(steps=1.5), "^steps must be an integer"),
    (dict(resume=True, overwrite=True), "^resume and --overwrite exclude"),
])
def test_bad_settings_are_value_errors_naming_the_field(changes, match):
    with pytest.raises(SettingError, match=match) as info:
        TrainConfig(**changes).resolved()
    assert isinstance(info.value, ValueError)


def _one_step(compensation, temp, *, wd=None, opt="sgd"):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,))
    criterion = TemperatureCrossEntropyLoss(temp)
    cfg = TrainConfig(temp=temp, temp_compensation=compensation, wd=wd, opt=opt).resolved()
    opt = build_optimizer(cfg, model, criterion)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, criterion, x, y,
               loss_factor=temp if cfg.loss_factor else None)
    return [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


def test_loss_and_lr_compensation_take_the_same_sgd_step_with_weight_decay():
    """Under SGD with momentum and weight decay, loss x T and (lr x T, wd / T) are the same
    update, and both are T times the uncompensated one when there is no weight decay."""
    loss = _one_step("loss", 8.0, wd=5e-4)
    lr = _one_step("lr", 8.0, wd=5e-4)
    for a, b in zip(loss, lr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    plain = _one_step("none", 8.0, wd=0.0)
    scaled = _one_step("loss", 8.0, wd=0.0)
    for a, b in zip(plain, scaled, strict=True):
        torch.testing.assert_close(8.0 * a, b, rtol=1e-4, atol=1e-6)


def test_lr_compensation_is_refused_where_it_is_not_exact():
    with pytest.raises(SettingError, match=r"^temp_compensation lr is exact only for SGD"):
        TrainConfig(temp=4.0, temp_compensation="lr", opt="adamw").resolved()
    with pytest.raises(SettingError, match=r"^temp_compensation"):
        TrainConfig(temp=4.0, temp_compensation="lr", learn_temp=True).resolved()
    assert TrainConfig().resolved().temp_compensation == "loss"

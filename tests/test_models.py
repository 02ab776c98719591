"""tempfast.train.models: normalisation inside the model, the small CNN, timm stems adapted to small
images, unknown names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tempfast.errors import SettingError
from tempfast.train.models import build_model


def test_small_cnn_normalises_inside_and_returns_logits():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,)).eval()
    x = torch.rand(5, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, model.net((x - 0.3) / 0.4), rtol=0, atol=0)
    assert "normalize.mean" in model.state_dict()


def test_small_cnn_takes_any_image_size_and_class_count():
    model = build_model("small_cnn", 3000, 3, 32, (0.5,) * 3, (0.25,) * 3).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3000)


def test_resnet_stem_is_adapted_to_small_images():
    model = build_model("resnet18", 10, 3, 32, (0.5,) * 3, (0.25,) * 3).eval()
    conv = model.net.conv1
    assert (conv.kernel_size, conv.stride) == ((3, 3), (1, 1))
    assert isinstance(model.net.maxpool, nn.Identity)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    large = build_model("resnet18", 10, 3, 96, (0.5,) * 3, (0.25,) * 3)
    assert large.net.conv1.stride == (2, 2) and isinstance(large.net.maxpool, nn.MaxPool2d)


def test_preact_resnet_stem_is_adapted():
    model = build_model("resnetv2_18", 100, 3, 32, (0.5,) * 3, (0.25,) * 3).eval()
    assert model.net.stem.conv.stride == (1, 1) and isinstance(model.net.stem.pool, nn.Identity)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)


def test_vit_takes_the_data_image_size_with_small_patches():
    model = build_model("vit_tiny_patch16_224", 10, 3, 32, (0.5,) * 3, (0.25,) * 3).eval()
    assert model.net.patch_embed.proj.kernel_size == (4, 4)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_is_a_setting_error_naming_the_argument():
    with pytest.raises(SettingError, match=r"^model 'resnet9000' is unknown"):
        build_model("resnet9000", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)

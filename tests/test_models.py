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


def test_vit_patches_divide_the_image_so_no_pixel_goes_unseen():
    """28 px (Fashion-MNIST): the default patch is 4 (7 x 7 tokens; img_size // 8 = 3 would
    leave the last row and column out); an explicit patch size must divide the image and
    belongs to vision transformers only."""
    from tempfast.train.models import default_patch_size

    assert [default_patch_size(s) for s in (8, 28, 32, 64)] == [1, 4, 4, 8]
    model = build_model("vit_tiny_patch16_224", 10, 1, 28, (0.5,), (0.25,)).eval()
    assert model.net.patch_embed.grid_size == (7, 7)
    model = build_model("vit_tiny_patch16_224", 10, 1, 28, (0.5,), (0.25,), patch_size=7)
    assert model.net.patch_embed.grid_size == (4, 4)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    for name, patch, match in (("vit_tiny_patch16_224", 3, r"^patch_size 3 does not divide"),
                               ("vit_tiny_patch16_224", 0, r"^patch_size must be a positive"),
                               ("small_cnn_pool", 4, r"^patch_size is for vision transformers")):
        with pytest.raises(SettingError, match=match):
            build_model(name, 10, 1, 28, (0.5,), (0.25,), patch_size=patch)


def test_unknown_model_is_a_setting_error_naming_the_argument():
    with pytest.raises(SettingError, match=r"^model 'resnet9000' is unknown"):
        build_model("resnet9000", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)


def test_the_patch_size_flag_reaches_the_config_and_the_checkpoints_model_config():
    from tempfast.cli import build_parser
    from tempfast.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--model", "vit_tiny_patch16_224",
                                      "--patch-size", "7", "--data", "fashion-mnist"])
    cfg = config_from_args(args)
    assert cfg.patch_size == 7
    from types import SimpleNamespace

    from tempfast.train.builder import model_config

    bundle = SimpleNamespace(num_classes=10, in_chans=1, img_size=28, mean=(0.5,), std=(0.2,))
    assert model_config(cfg, bundle)["patch_size"] == 7

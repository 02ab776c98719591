"""Classifiers for [0, 1] images: normalisation is the model's first layer.

``build_model(name, ...)`` returns ``Classifier(Normalize(mean, std), net)``: input
``(B, C, H, W)`` in [0, 1], output logits ``(B, num_classes)``. Attacks and corruptions act
on [0, 1] images and never need to know the data statistics.

``name`` is ``"small_cnn"`` or ``"small_cnn_pool"`` (:class:`SmallCNN`, the defaults for digits
and for 28x28 images) or any timm model name (built with ``pretrained=False``: no network). For
images of 64 px or less the timm stem is adapted to small inputs: the first convolution becomes
3x3 stride 1, the stem's max-pool is removed; vision transformers get ``img_size`` set to the
data and ``patch_size`` (``build_model``'s argument, else :func:`default_patch_size`: the
divisor of the image size nearest a eighth of it, so 32 px -> 4 px patches, 8 x 8 tokens, and
28 px -> 4 px, 7 x 7 tokens). A patch size must divide the image size: timm's patch embedding
would otherwise drop the last rows and columns of pixels unseen. """

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import SettingError, UsageError

SMALL_INPUT = 64


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``x`` of shape ``(B, C, H, W)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``net(normalize(x))``: logits ``(B, K)`` for [0, 1] images ``x`` ``(B, C, H, W)``.

    ``features(x)`` is everything up to the linear classifier ``head`` (``(B, F)``), so that
    ``forward(x) == head(features(x))``; the fused linear head uses the two separately.
    """

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))

    @property
    def head(self) -> nn.Linear:
        """The final linear layer (``UsageError`` if the classifier is anything else)."""
        head = self.net[-1] if isinstance(self.net, SmallCNN) else self.net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise UsageError(f"the fused head needs a model whose classifier is one linear "
                             f"layer; {type(self.net).__name__} has {type(head).__name__}")
        return head

    def features(self, x: Tensor) -> Tensor:
        """Pre-logit features ``(B, F)`` of [0, 1] images ``x``."""
        x = self.normalize(x)
        if isinstance(self.net, SmallCNN):
            for layer in list(self.net)[:-1]:
                x = layer(x)
            return x
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class FeatureNet(nn.Module):
    """``classifier.features(x)`` as a module's forward. It holds the whole classifier, head
    included, so DistributedDataParallel synchronises the head's gradients, which the fused
    loss computes outside this forward."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Sequential):
    """Three 3x3 conv-BN-ReLU blocks (``width``, 2x, 4x channels), a 2x2 max-pool after the
    second (and, with ``pool_first``, one after the first too), global average pooling and a
    linear head. About 95k parameters at ``width=32``.

    ``small_cnn`` (digits, 8x8) pools once; ``small_cnn_pool`` (28x28 Fashion-MNIST / MNIST)
    pools after each of the first two blocks, so its costliest blocks run at a quarter and a
    sixteenth of the resolution: about 3.4x the images per second of ``small_cnn`` on 28x28
    inputs (930 vs 270 img/s clean, 146 vs 48 under PGD-7, one CPU thread).
    """

    def __init__(self, in_chans: int, num_classes: int, width: int = 32,
                 pool_first: bool = False) -> None:
        first = [_conv_bn(in_chans, width)] + ([nn.MaxPool2d(2)] if pool_first else [])
        super().__init__(
            *first, _conv_bn(width, 2 * width), nn.MaxPool2d(2),
            _conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )


SMALL_CNNS = {"small_cnn": {}, "small_cnn_pool": {"pool_first": True}}


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _adapt_stem(model: nn.Module) -> None:
    """3x3 stride-1 first convolution and no stem max-pool (timm CNNs on small images)."""
    first = model.pretrained_cfg.get("first_conv")
    conv = model.get_submodule(first) if isinstance(first, str) else None
    if not isinstance(conv, nn.Conv2d):
        conv_name, conv = next(((n, m) for n, m in model.named_modules()
                                if isinstance(m, nn.Conv2d)), (None, None))
        if conv is None:
            return
        first = conv_name
    _set_submodule(model, first, nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1,
                                           padding=1, bias=conv.bias is not None))
    for path in ("maxpool", "stem.pool", "pool"):
        try:
            pool = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(pool, nn.MaxPool2d):
            _set_submodule(model, path, nn.Identity())


def default_patch_size(img_size: int) -> int:
    """The divisor of ``img_size`` nearest ``img_size / 8`` (the smaller on a tie): 8 x 8
    tokens where the size allows, every pixel inside a patch."""
    divisors = [d for d in range(1, img_size + 1) if img_size % d == 0]
    return min(divisors, key=lambda d: (abs(d - img_size / 8), d))


def legacy_patch_size(img_size: int) -> int | None:
    """The patch size of checkpoints written before ``patch_size`` was recorded:
    ``img_size // 8`` for small images (timm's own patch size for larger ones: None)."""
    return max(1, img_size // 8) if img_size <= SMALL_INPUT else None


def _timm_model(name: str, num_classes: int, in_chans: int, img_size: int,
                patch_size: int | None) -> nn.Module:
    import timm

    check_model_name(name)
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans}
    model = timm.create_model(name, **kwargs)
    if hasattr(model, "patch_embed"):
        extra = {"img_size": img_size}
        if patch_size is None and img_size <= SMALL_INPUT:
            patch_size = default_patch_size(img_size)
        if patch_size is not None:
            extra["patch_size"] = patch_size
        try:
            return timm.create_model(name, **kwargs, **extra)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            raise UsageError(f"model {name!r} cannot take {img_size} px images: {exc}") from None
    if patch_size is not None:
        raise SettingError("patch_size", f"is for vision transformers only: {name!r} has none")
    if img_size <= SMALL_INPUT:
        _adapt_stem(model)
    return model


def check_patch_size(patch_size: int | None, img_size: int) -> None:
    """Raise :class:`~tempfast.errors.SettingError` (``patch_size``) unless ``patch_size`` is
    None or a positive divisor of ``img_size``."""
    if patch_size is None:
        return
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise SettingError("patch_size", f"must be a positive int, got {patch_size!r}")
    if img_size % patch_size:
        raise SettingError("patch_size", f"{patch_size} does not divide the {img_size} px "
                                         f"images (the last {img_size % patch_size} rows and "
                                         "columns would go unseen)")


def check_model_name(name: str) -> None:
    """Raise :class:`~tempfast.errors.SettingError` (``model``) unless ``name`` is
    ``small_cnn`` or a timm model name."""
    if name in SMALL_CNNS:
        return
    import timm

    if not timm.is_model(name):
        raise SettingError("model", f"{name!r} is unknown: use small_cnn, small_cnn_pool or a "
                                    "timm model name "
                                    "(e.g. resnet18, resnetv2_18, wide_resnet50_2, "
                                    "vit_tiny_patch16_224)")


def build_model(name: str, num_classes: int, in_chans: int, img_size: int,
                mean: Sequence[float], std: Sequence[float],
                patch_size: int | None = None, *, strict: bool = True) -> nn.Module:
    """A :class:`Classifier` for ``(B, in_chans, img_size, img_size)`` images in [0, 1];
    ``patch_size``: a vision transformer's (None: :func:`default_patch_size` for small images).
    ``strict=False`` accepts a patch size that does not divide the images (only to rebuild a
    checkpoint written before that was refused).

    Raises:
        SettingError: unknown model name, a patch size that does not divide the images or a
            model without patches; UsageError: a model that cannot take the images.
    """
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std: expected {in_chans} values each, got {len(mean)}, "
                         f"{len(std)}")
    if strict:
        check_patch_size(patch_size, img_size)
    if name in SMALL_CNNS:
        if patch_size is not None:
            raise SettingError("patch_size", f"is for vision transformers only: {name!r} has "
                                             "none")
        net = SmallCNN(in_chans, num_classes, **SMALL_CNNS[name])
    else:
        net = _timm_model(name, num_classes, in_chans, img_size, patch_size)
    return Classifier(Normalize(mean, std), net)

"""Residual networks (He, Zhang, Ren & Sun, 2015) built from :class:`kcnn.layers.ResidualBlock`.

ImageNet (``resnet18/34/50/101``): a 7×7/2 convolution and 3×3/2 max pooling,
four stages of basic (18, 34) or bottleneck (50, 101) blocks with 64, 128,
256 and 512 filters, the first block of stages 2–4 striding by 2, then global
average pooling and one FC layer. Shortcuts are identities, or 1×1
projections where the shape changes (option B). ResNet-50 has 25.56 M
trainable parameters.

CIFAR (``resnet20/32/44/56/110``, 6n+2 layers): a 3×3 convolution with 16
filters, three stages of n basic blocks with 16, 32 and 64 filters (stride 2
at the start of stages 2 and 3), global average pooling and one FC layer.
Shortcuts are option A by default: identity, subsampled and padded with zero
channels where the shape changes, so they add no parameters (ResNet-20 has
269,722 trainable parameters).

Both end as the paper does, "global average pooling, then a fully connected
layer" (``head: pool_fc``, the default). ``head: gap`` (a 1×1 convolution to
the classes, then global average pooling, NIN style) is the same linear map
with the same parameters, but its convolution runs at every position of the
last map: at 224×224 ResNet-50 then costs 4.19 G multiply-adds instead of
4.09 G (49 × 2.05 M in the head instead of 2.05 M).

ResNet-50 at 224×224 and 1000 classes: 25,557,032 trainable parameters and
4.09 G multiply-adds (torchvision ``resnet50``: 25,557,032 and 4.09 GFLOPS,
its FLOPs being multiply-adds; the paper's Table 1: 3.8 × 10⁹ FLOPs for the
stride-on-1×1 original, torchvision and kcnn put the stride on the 3×3
convolution, "ResNet v1.5"). ResNet-20 (CIFAR): 269,722 trainable parameters,
40.55 M multiply-adds at 32×32 (the paper's "0.27M").

Reference: K. He, X. Zhang, S. Ren & J. Sun, "Deep Residual Learning for
Image Recognition", CVPR 2016, arXiv:1512.03385 (Table 1; Section 4.2).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.errors import KcnnError
from kcnn.models.common import (
    check_choice,
    check_common,
    classifier_model,
    conv_bn_relu,
    model_inputs,
    pool2d,
    scaled,
)
from kcnn.models.registry import register_variant

SHORTCUTS = ("auto", "projection", "zero_pad")


def _blocks(x, plan, *, kind, shortcut):
    from kcnn.layers import ResidualBlock

    for s, (filters, n, first_stride) in enumerate(plan, start=1):
        for b in range(1, n + 1):
            x = ResidualBlock(filters, kind=kind, strides=first_stride if b == 1 else 1,
                              shortcut=shortcut, name=f"stage{s}_block{b}")(x)
    return x


def _check(batch_norm, shortcut, pooling, head, dropout):
    check_common(pooling, head, dropout)
    check_choice(shortcut, SHORTCUTS, "shortcut")
    if not batch_norm:
        raise KcnnError("model.batch_norm: residual blocks always use batch normalization "
                        "(got false)")


def _imagenet(name, layers, kind, *, num_classes, input_shape, width, shortcut, dropout,
              batch_norm, pooling, head, preprocessing):
    _check(batch_norm, shortcut, pooling, head, dropout)
    base = scaled(64, width)
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, base, 7, strides=2, batch_norm=True, name="conv1")
    x = pool2d(pooling, 3, 2, name="pool1", padding="same")(x)
    plan = [(base * 2**i, n, 1 if i == 0 else 2) for i, n in enumerate(layers)]
    x = _blocks(x, plan, kind=kind, shortcut=shortcut)
    return classifier_model(inputs, x, num_classes, head, name=name, dropout=dropout)


def _cifar(depth, *, num_classes, input_shape, width, shortcut, dropout, batch_norm, pooling,
           head, preprocessing):
    _check(batch_norm, shortcut, pooling, head, dropout)
    n = (depth - 2) // 6
    base = int(width)
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, base, 3, batch_norm=True, name="conv1")
    x = _blocks(x, [(base, n, 1), (2 * base, n, 2), (4 * base, n, 2)], kind="basic",
                shortcut=shortcut)
    return classifier_model(inputs, x, num_classes, head, name=f"resnet{depth}", dropout=dropout)


_IMAGENET_DOC = """ResNet-{depth} for ImageNet-sized inputs ({kind} blocks {layers}).

    ``width`` multiplies the stage widths 64-128-256-512. ``shortcut``: ``auto``
    (identity, projection where the shape changes; the paper's option B),
    ``projection`` (option C) or ``zero_pad`` (option A). ``pooling`` swaps the
    stem's 3×3/2 max pooling. ``head``: ``pool_fc`` (the paper's global average
    pooling and FC) or ``gap`` (1×1 convolution then pooling; same parameters,
    more multiply-adds). Builds from 32×32 up.
    """

_CIFAR_DOC = """ResNet-{depth} for CIFAR (6n+2 layers, n = {n}): 16-32-64 filters.

    ``width`` is the first stage's width (16; the stages use width, 2·width,
    4·width). ``shortcut`` defaults to ``zero_pad`` (option A, no parameters).
    ``head`` defaults to the paper's global average pooling and FC
    (``pool_fc``). These networks have no pooling layer besides the global
    average, so ``pooling`` has nothing to swap.
    """


def _imagenet_entry(depth: int, layers: tuple[int, ...], kind: str):
    def builder(
        num_classes: int = 1000,
        input_shape: Sequence[int] = (224, 224, 3),
        width: float = 1.0,
        shortcut: str = "auto",
        dropout: float = 0.0,
        batch_norm: bool = True,
        pooling: str = "max",
        head: str = "pool_fc",
        preprocessing=(),
    ):
        return _imagenet(f"resnet{depth}", layers, kind, num_classes=num_classes,
                         input_shape=input_shape, width=width, shortcut=shortcut,
                         dropout=dropout, batch_norm=batch_norm, pooling=pooling, head=head,
                         preprocessing=preprocessing)

    doc = _IMAGENET_DOC.format(depth=depth, kind=kind, layers="-".join(map(str, layers)))
    return register_variant(builder, f"resnet{depth}", doc)


def _cifar_entry(depth: int):
    def builder(
        num_classes: int = 10,
        input_shape: Sequence[int] = (32, 32, 3),
        width: int = 16,
        shortcut: str = "zero_pad",
        dropout: float = 0.0,
        batch_norm: bool = True,
        pooling: str = "max",
        head: str = "pool_fc",
        preprocessing=(),
    ):
        return _cifar(depth, num_classes=num_classes, input_shape=input_shape, width=width,
                      shortcut=shortcut, dropout=dropout, batch_norm=batch_norm,
                      pooling=pooling, head=head, preprocessing=preprocessing)

    doc = _CIFAR_DOC.format(depth=depth, n=(depth - 2) // 6)
    return register_variant(builder, f"resnet{depth}", doc)


resnet18 = _imagenet_entry(18, (2, 2, 2, 2), "basic")
resnet34 = _imagenet_entry(34, (3, 4, 6, 3), "basic")
resnet50 = _imagenet_entry(50, (3, 4, 6, 3), "bottleneck")
resnet101 = _imagenet_entry(101, (3, 4, 23, 3), "bottleneck")

resnet20 = _cifar_entry(20)
resnet32 = _cifar_entry(32)
resnet44 = _cifar_entry(44)
resnet56 = _cifar_entry(56)
resnet110 = _cifar_entry(110)

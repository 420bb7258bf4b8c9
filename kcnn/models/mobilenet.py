"""MobileNets: depthwise separable convolutions (v1) and inverted residuals with linear
bottlenecks (v2).

**MobileNetV1** (Howard et al., 2017). A standard k×k convolution from M to N
channels costs k²·M·N multiply-adds per position; a depthwise separable one
(a k×k depthwise convolution, one filter per channel, then a 1×1 "pointwise"
convolution) costs k²·M + M·N, 8–9× less for 3×3 kernels. The network (Table
1): a 3×3/2 convolution (32), thirteen depthwise separable blocks (64, 128,
128, 256, 256, 512 ×6, 1024, 1024; stride 2 where the width doubles, except
64), global average pooling, FC. Every convolution is followed by batch
normalization and ReLU6 (the paper says ReLU; the authors' TF-slim code and
``keras.applications.MobileNet`` use ReLU6, which also quantizes well). The
width multiplier α thins every layer to ``int(α·N)`` channels.

    α = 1.0 at 224×224, 1000 classes: 4,253,864 parameters (4,231,976
    trainable; ``keras.applications.MobileNet``: 4,253,864 / 4,231,976) and
    568.7 M multiply-adds (paper Table 8 and Table 6: 569 M, 4.2 M).

**MobileNetV2** (Sandler et al., 2018). The inverted residual block expands a
narrow input t× with a 1×1 convolution (ReLU6), filters it with a 3×3
depthwise convolution (ReLU6), and projects it back with a *linear* 1×1
convolution (no activation: ReLU in a low-dimensional space destroys
information); a shortcut joins the narrow ends when stride is 1 and the
widths match. Table 2: a 3×3/2 convolution (32), 17 blocks (t, c, n, s) =
(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
(6, 160, 3, 2), (6, 320, 1, 1), a 1×1 convolution to 1280, global average
pooling, dropout 0.2 and FC. Widths are α·c rounded to a multiple of 8
(torchvision's ``_make_divisible``); the last 1280 grows with α > 1 only.

    α = 1.0 at 224×224, 1000 classes: 3,504,872 trainable parameters
    (torchvision ``mobilenet_v2``: 3,504,872; Keras also counts the batch
    normalization moving statistics: 3,538,984 in all, as
    ``keras.applications.MobileNetV2``) and 300.8 M multiply-adds (paper
    Table 4: 3.4 M, 300 M; torchvision 0.30 GFLOPS).

Parameter conventions: Keras' ``count_params()`` counts 4 numbers per batch
normalization channel (γ, β, moving mean and variance), torchvision's
``numel()`` over ``parameters()`` 2 (γ, β): torchvision's count is Keras'
*trainable* count.

Small inputs (``small_input``; auto below 64 px): the stem convolution and
the first stride-2 block after it run at stride 1, so the network
downsamples 8× instead of 32× (32×32 ends on 4×4 maps), as the usual CIFAR
adaptations do. The weights do not change.

References:
    A. G. Howard et al., "MobileNets: Efficient Convolutional Neural Networks
    for Mobile Vision Applications", arXiv:1704.04861, 2017 (Tables 1, 6, 8).
    M. Sandler, A. Howard, M. Zhu, A. Zhmoginov & L.-C. Chen, "MobileNetV2:
    Inverted Residuals and Linear Bottlenecks", CVPR 2018, arXiv:1801.04381
    (Tables 2 and 4).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.errors import KcnnError
from kcnn.models.common import (
    check_common,
    check_positive,
    classifier_model,
    compact_kwargs_check,
    conv_bn_relu,
    depthwise_bn_relu,
    model_inputs,
    require_batch_norm,
    small_input_mode,
)
from kcnn.models.registry import register_model

# MobileNetV1 (Table 1): the pointwise width and the depthwise stride of each block.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# MobileNetV2 (Table 2): expansion t (None: the model's ``expansion``), width c, repeats n,
# first stride s.
V2_STAGES = ((1, 16, 1, 1), (None, 24, 2, 2), (None, 32, 3, 2), (None, 64, 4, 2),
             (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
V2_LAST = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), not
    below 90% of ``value`` (torchvision's and TF-slim's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _check(alpha, pooling, head, dropout, batch_norm, family):
    check_common(pooling, head, dropout)
    check_positive(alpha, "alpha")
    require_batch_norm(batch_norm, family)


@register_model
def mobilenet_v1(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (224, 224, 3),
    alpha: float = 1.0,
    dropout: float = 0.001,
    batch_norm: bool = True,
    pooling: str = "max",
    head: str = "pool_fc",
    small_input: bool | None = None,
    preprocessing=(),
):
    """MobileNetV1: a 3×3/2 convolution and 13 depthwise separable blocks (ReLU6).

    ``alpha`` is the width multiplier (each layer keeps ``int(alpha·N)``
    channels; 1.0, 0.75, 0.5 and 0.25 are the paper's). The resolution
    multiplier is the input size. At α = 1.0, 224×224 and 1000 classes:
    4,253,864 parameters, 568.7 M multiply-adds (``keras.applications``
    4,253,864; paper 4.2 M, 569 M). ``dropout`` (0.001, as Keras) comes before
    the classifier. ``small_input`` (``None``: auto, on below 64 px) runs the
    stem and the first stride-2 block at stride 1. ``pooling`` has nothing to
    swap (the network has no pooling layer besides the global average).
    """
    _check(alpha, pooling, head, dropout, batch_norm, "mobilenet_v1")
    small = small_input_mode(small_input, input_shape)
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, max(1, int(32 * alpha)), 3, strides=1 if small else 2, batch_norm=True,
                     activation="relu6", name="conv1")
    downsampled = not small
    for i, (filters, stride) in enumerate(V1_BLOCKS, start=1):
        if stride == 2 and not downsampled:
            stride, downsampled = 1, True  # small inputs: the first stride-2 block keeps the size
        x = depthwise_bn_relu(x, 3, strides=stride, batch_norm=True, activation="relu6",
                              name=f"block{i}_dw")
        x = conv_bn_relu(x, max(1, int(filters * alpha)), 1, batch_norm=True,
                         activation="relu6", name=f"block{i}_pw")
    return classifier_model(inputs, x, num_classes, head, name="mobilenet_v1", dropout=dropout)


mobilenet_v1.check_kwargs = compact_kwargs_check("mobilenet_v1", positive=("alpha",),
                                                 batch_norm_required=True)


def inverted_residual(x, out_channels: int, *, expansion: int, strides: int, name: str):
    """MobileNetV2 block: 1×1 expand (ReLU6; left out when ``expansion`` is 1) → 3×3
    depthwise (``strides``, ReLU6) → linear 1×1 projection, plus the input when the
    shapes match (stride 1, same width)."""
    import keras

    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn_relu(y, int(round(in_channels * expansion)), 1, batch_norm=True,
                         activation="relu6", name=f"{name}_expand")
    y = depthwise_bn_relu(y, 3, strides=strides, batch_norm=True, activation="relu6",
                          name=f"{name}_dw")
    y = conv_bn_relu(y, out_channels, 1, batch_norm=True, activation=None, name=f"{name}_project")
    if strides == 1 and in_channels == out_channels:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


@register_model
def mobilenet_v2(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (224, 224, 3),
    alpha: float = 1.0,
    expansion: int = 6,
    dropout: float = 0.2,
    batch_norm: bool = True,
    pooling: str = "max",
    head: str = "pool_fc",
    small_input: bool | None = None,
    preprocessing=(),
):
    """MobileNetV2: inverted residuals with linear bottlenecks, ReLU6, expansion 6.

    ``alpha`` is the width multiplier (widths ``alpha·c`` rounded to multiples
    of 8; the paper's 0.35 to 1.4), ``expansion`` the t of every block but the
    first (6). At α = 1.0, 224×224 and 1000 classes: 3,504,872 trainable
    parameters, 300.8 M multiply-adds (torchvision 3,504,872, 0.30 GFLOPS;
    paper 3.4 M, 300 M). ``dropout`` (0.2, as torchvision) comes before the
    classifier. ``small_input`` (``None``: auto, on below 64 px) runs the stem
    and the first stride-2 block at stride 1 (8× downsampling instead of
    32×). ``pooling`` has nothing to swap.
    """
    _check(alpha, pooling, head, dropout, batch_norm, "mobilenet_v2")
    if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
        raise KcnnError(f"model.expansion must be an integer >= 1 (got {expansion!r})")
    small = small_input_mode(small_input, input_shape)
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, make_divisible(32 * alpha), 3, strides=1 if small else 2,
                     batch_norm=True, activation="relu6", name="conv1")
    block, downsampled = 0, not small
    for t, c, n, s in V2_STAGES:
        if s == 2 and not downsampled:
            s, downsampled = 1, True  # small inputs: the first stride-2 stage keeps the size
        for i in range(n):
            block += 1
            x = inverted_residual(x, make_divisible(c * alpha), expansion=t or expansion,
                                  strides=s if i == 0 else 1, name=f"block{block}")
    x = conv_bn_relu(x, make_divisible(V2_LAST * max(1.0, alpha)), 1, batch_norm=True,
                     activation="relu6", name="conv_last")
    return classifier_model(inputs, x, num_classes, head, name="mobilenet_v2", dropout=dropout)


mobilenet_v2.check_kwargs = compact_kwargs_check("mobilenet_v2", positive=("alpha",),
                                                 batch_norm_required=True)

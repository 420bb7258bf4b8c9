"""A plain VGG-style CNN for small images: stages of 3×3 conv (+BN) → pooling → GAP → FC."""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.errors import KcnnError
from kcnn.models.common import conv_bn_relu, logits, model_inputs, pool2d
from kcnn.models.registry import register_model


@register_model
def simple_cnn(
    num_classes: int = 10,
    input_shape: Sequence[int] = (8, 8, 1),
    filters: Sequence[int] = (32, 64),
    convs_per_stage: int | Sequence[int] = 1,
    batch_norm: bool = True,
    dropout: float = 0.0,
    pooling: str = "max",
    preprocessing=(),
):
    """Stages of ``convs_per_stage`` 3×3 convolutions with ``filters[i]`` channels.

    Every stage but the last ends in 2×2 pooling; global average pooling and
    dropout lead to the classifier.
    """
    import keras

    filters = list(filters)
    per_stage = (
        [convs_per_stage] * len(filters) if isinstance(convs_per_stage, int) else list(convs_per_stage)
    )
    if not filters or len(per_stage) != len(filters) or min(per_stage) < 1:
        raise KcnnError(
            f"model.convs_per_stage must be a positive int or one per stage of filters "
            f"(got {convs_per_stage!r} for filters {filters})"
        )
    inputs, x = model_inputs(input_shape, preprocessing)
    for s, (width, n) in enumerate(zip(filters, per_stage), start=1):
        for i in range(1, n + 1):
            x = conv_bn_relu(x, width, batch_norm=batch_norm, name=f"conv{s}_{i}")
        if s < len(filters):
            x = pool2d(pooling, name=f"pool{s}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, logits(x, num_classes), name="simple_cnn")


@register_model
def nin_small(
    num_classes: int = 10,
    input_shape: Sequence[int] = (8, 8, 1),
    width: int = 32,
    batch_norm: bool = True,
    dropout: float = 0.3,
    pooling: str = "max",
    preprocessing=(),
):
    """A small Network-in-Network for tiny inputs (Lin et al. 2013).

    Two mlpconv blocks (3×3 conv followed by two 1×1 convs) with pooling and
    dropout between them, a third block whose last 1×1 conv maps to the classes,
    and global average pooling instead of fully connected layers.
    """
    import keras

    inputs, x = model_inputs(input_shape, preprocessing)
    for b, w in enumerate((width, 2 * width), start=1):
        x = conv_bn_relu(x, w, 3, batch_norm=batch_norm, name=f"mlpconv{b}_3x3")
        x = conv_bn_relu(x, w, 1, batch_norm=batch_norm, name=f"mlpconv{b}_1x1a")
        x = conv_bn_relu(x, w, 1, batch_norm=batch_norm, name=f"mlpconv{b}_1x1b")
        x = pool2d(pooling, name=f"pool{b}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{b}")(x)
    x = conv_bn_relu(x, 2 * width, 3, batch_norm=batch_norm, name="mlpconv3_3x3")
    x = conv_bn_relu(x, 2 * width, 1, batch_norm=batch_norm, name="mlpconv3_1x1a")
    x = keras.layers.Conv2D(num_classes, 1, name="mlpconv3_classes")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap", dtype="float32")(x)
    return keras.Model(inputs, x, name="nin_small")

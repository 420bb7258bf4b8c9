"""Pieces shared by the model families (Keras is imported inside the functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kcnn.errors import KcnnError

POOLINGS = ("max", "avg")


def model_inputs(input_shape: Sequence[int], preprocessing: Sequence[Any] = ()):
    """``keras.Input`` plus the engine's preprocessing layers. Returns (inputs, x)."""
    import keras

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    return inputs, x


def pool2d(kind: str, pool_size: int = 2, strides: int | None = None, name: str | None = None):
    import keras

    if kind == "max":
        return keras.layers.MaxPooling2D(pool_size, strides, padding="same", name=name)
    if kind == "avg":
        return keras.layers.AveragePooling2D(pool_size, strides, padding="same", name=name)
    raise KcnnError(f"unknown pooling {kind!r}; valid: {', '.join(POOLINGS)}")


def conv_bn_relu(x, filters: int, kernel_size: int = 3, *, batch_norm: bool, name: str,
                 strides: int = 1, weight_decay: float = 0.0):
    """Conv (no bias when followed by BN) → BN → ReLU."""
    import keras

    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=not batch_norm,
        kernel_initializer="he_normal", kernel_regularizer=reg, name=name,
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def logits(x, num_classes: int, name: str = "logits"):
    """The classifier's last Dense layer; float32 even under mixed precision."""
    import keras

    return keras.layers.Dense(num_classes, dtype="float32", name=name)(x)

"""Pieces shared by the model families (Keras is imported inside the functions).

Every family builder takes the same common options:

* ``pooling``: ``max``, ``avg``, ``stochastic`` or ``lp`` (L2 pooling); it swaps
  every pooling layer of the family (:func:`pool2d`).
* ``head``: how the feature maps become class scores (:func:`classifier_head`):

  - ``dense``: flatten, fully connected layers, a last FC layer to the classes;
  - ``gap``: Network-in-Network style, a 1×1 convolution to the classes and
    global average pooling (no fully connected layer);
  - ``conv``: the fully connected layers written as convolutions, the first
    one as an h×w convolution over the whole final map, the others 1×1,
    followed by global average pooling of the class-score map (a no-op at the
    training size, a spatial average on larger inputs, as VGG evaluates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kcnn.errors import KcnnError

POOLINGS = ("max", "avg", "stochastic", "lp")
HEADS = ("dense", "gap", "conv")


def check_choice(value: Any, valid: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``valid``; otherwise a KcnnError naming the choices."""
    if value not in valid:
        from kcnn.registry import did_you_mean

        raise KcnnError(
            f"unknown {what} {value!r}{did_you_mean(str(value), list(valid))}; "
            f"valid: {', '.join(valid)}"
        )
    return value


def check_common(pooling: str, head: str, dropout: float) -> None:
    """Validate the options every family builder takes."""
    check_choice(pooling, POOLINGS, "pooling")
    check_choice(head, HEADS, "head")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise KcnnError(f"model.dropout must be in [0, 1) (got {dropout!r})")


def scaled(width: int, multiplier: float, divisor: int = 1) -> int:
    """``width * multiplier`` rounded to a positive multiple of ``divisor``."""
    value = max(divisor, int(round(width * multiplier / divisor)) * divisor)
    return int(value)


def model_inputs(input_shape: Sequence[int], preprocessing: Sequence[Any] = ()):
    """``keras.Input`` plus the engine's preprocessing layers. Returns (inputs, x)."""
    import keras

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    return inputs, x


def pool2d(kind: str, pool_size: int = 2, strides: int | None = None, name: str | None = None,
           padding: str = "same"):
    """A pooling layer of the given kind: ``max``, ``avg``, ``stochastic`` or ``lp`` (p = 2)."""
    import keras

    check_choice(kind, POOLINGS, "pooling")
    if kind == "max":
        return keras.layers.MaxPooling2D(pool_size, strides, padding=padding, name=name)
    if kind == "avg":
        return keras.layers.AveragePooling2D(pool_size, strides, padding=padding, name=name)
    from kcnn.layers import LpPooling2D, StochasticPooling2D

    if kind == "stochastic":
        return StochasticPooling2D(pool_size, strides, padding=padding, name=name)
    return LpPooling2D(p=2.0, pool_size=pool_size, strides=strides, padding=padding, name=name)


def spatial_size(x) -> tuple[int | None, int | None]:
    """Static (height, width) of a channels-last 4D tensor."""
    return x.shape[1], x.shape[2]


def maybe_pool(x, kind: str, pool_size: int = 2, strides: int | None = None, *,
               name: str, padding: str = "valid"):
    """Pool ``x`` unless a ``valid`` window no longer fits the map.

    Families with fixed pooling stages (AlexNet, VGG) thus also build at small
    inputs (e.g. 32×32): a pooling layer that would shrink a map below 1×1 is
    left out. At the paper's input size every pooling layer is kept.
    """
    h, w = spatial_size(x)
    if padding == "valid" and any(d is not None and d < pool_size for d in (h, w)):
        return x
    return pool2d(kind, pool_size, strides, name=name, padding=padding)(x)


def conv_bn_relu(x, filters: int, kernel_size: int = 3, *, batch_norm: bool, name: str,
                 strides: int = 1, weight_decay: float = 0.0, padding: str = "same",
                 groups: int = 1, dilation_rate: int = 1, use_bias: bool | None = None,
                 kernel_initializer: str = "he_normal"):
    """Conv (no bias when followed by BN) → BN → ReLU."""
    import keras

    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, groups=groups,
        dilation_rate=dilation_rate,
        use_bias=(not batch_norm) if use_bias is None else use_bias,
        kernel_initializer=kernel_initializer, kernel_regularizer=reg, name=name,
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def logits(x, num_classes: int, name: str = "logits"):
    """The classifier's last Dense layer; float32 even under mixed precision."""
    import keras

    return keras.layers.Dense(num_classes, dtype="float32", name=name)(x)


def fc_widths(fc_units: int | Sequence[int]) -> list[int]:
    """The hidden FC widths: one int for two layers of that width (AlexNet, VGG), or a list."""
    return [fc_units] * 2 if isinstance(fc_units, int) else list(fc_units)


def classifier_model(inputs, x, num_classes: int, head: str, *, name: str,
                     fc_units: Sequence[int] = (), dropout: float = 0.0,
                     batch_norm: bool = False):
    """``keras.Model`` from ``inputs`` to the :func:`classifier_head` on the feature map ``x``."""
    import keras

    out = classifier_head(x, num_classes, head, fc_units=fc_units, dropout=dropout,
                          batch_norm=batch_norm)
    return keras.Model(inputs, out, name=name)


def classifier_head(x, num_classes: int, head: str, *, fc_units: Sequence[int] = (),
                    dropout: float = 0.0, batch_norm: bool = False):
    """Turn a feature map ``x`` (batch, h, w, c) into float32 logits (batch, num_classes).

    ``dense``: Flatten → [FC(u) → (BN) → ReLU → Dropout] for u in ``fc_units`` → FC(classes).
    The hidden layers are named ``fc1``, ``fc2``…, the last one ``logits``.

    ``conv``: the same layers as convolutions: ``fc1`` is an h×w ``valid``
    convolution, the later ones 1×1, then ``logits_conv`` (1×1 to the classes)
    and global average pooling. Same parameters as ``dense``.

    ``gap``: Dropout → 1×1 convolution to the classes (``classifier``) →
    global average pooling; ``fc_units`` is not used.
    """
    import keras

    check_choice(head, HEADS, "head")
    fc_units = [int(u) for u in fc_units]
    if head == "gap":
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
        return keras.layers.GlobalAveragePooling2D(name="logits", dtype="float32")(x)
    if head == "dense":
        x = keras.layers.Flatten(name="flatten")(x)
        for i, units in enumerate(fc_units, start=1):
            x = keras.layers.Dense(units, use_bias=not batch_norm, name=f"fc{i}")(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"fc{i}_bn")(x)
            x = keras.layers.ReLU(name=f"fc{i}_relu")(x)
            if dropout:
                x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        return logits(x, num_classes)
    # head == "conv": the dense head with every FC layer written as a convolution.
    h, w = spatial_size(x)
    if h is None or w is None:
        raise KcnnError("model.head 'conv' needs a fixed input size (the first FC layer "
                        "becomes an h×w convolution)")
    kernel = (h, w)
    for i, units in enumerate(fc_units, start=1):
        x = keras.layers.Conv2D(units, kernel, use_bias=not batch_norm, name=f"fc{i}")(x)
        kernel = (1, 1)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = keras.layers.ReLU(name=f"fc{i}_relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    x = keras.layers.Conv2D(num_classes, kernel, dtype="float32", name="logits_conv")(x)
    return keras.layers.GlobalAveragePooling2D(name="logits", dtype="float32")(x)

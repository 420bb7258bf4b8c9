"""Pieces shared by the model families (Keras is imported inside the functions).

Every family builder takes the same common options:

* ``pooling``: ``max``, ``avg``, ``stochastic`` or ``lp`` (L2 pooling); it swaps
  every pooling layer of the family (:func:`pool2d`).
* ``head``: how the feature maps become class scores (:func:`classifier_head`):

  - ``dense``: flatten, fully connected layers, a last FC layer to the classes;
  - ``gap``: Network-in-Network style, a 1×1 convolution to the classes and
    global average pooling (no fully connected layer);
  - ``pool_fc``: global average pooling, then one fully connected layer to
    the classes (ResNet, MobileNet, ShuffleNet). The same linear map and the
    same parameters as ``gap``, but the FC layer multiplies once per image
    instead of once per position (ResNet-50 at 224×224: 2.05 M instead of
    100 M multiply-adds);
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
HEADS = ("dense", "gap", "conv", "pool_fc")
ACTIVATIONS = ("relu", "relu6")


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


def activation_layer(activation: str | None, name: str):
    """``relu`` → ``ReLU`` named ``{name}_relu``; ``relu6`` → ``ReLU(max_value=6)`` named
    ``{name}_relu6``; ``None`` → no layer (a linear output, e.g. MobileNetV2's bottlenecks)."""
    import keras

    if activation is None:
        return None
    check_choice(activation, ACTIVATIONS, "activation")
    if activation == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")
    return keras.layers.ReLU(name=f"{name}_relu")


def _bn_act(x, *, batch_norm: bool, activation: str | None, name: str):
    import keras

    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    act = activation_layer(activation, name)
    return x if act is None else act(x)


def conv_bn_relu(x, filters: int, kernel_size: int = 3, *, batch_norm: bool, name: str,
                 strides: int = 1, weight_decay: float = 0.0, padding: str = "same",
                 groups: int = 1, dilation_rate: int = 1, use_bias: bool | None = None,
                 kernel_initializer: str = "he_normal", activation: str | None = "relu"):
    """Conv (no bias when followed by BN) → BN → ReLU (``activation``: ``relu``,
    ``relu6`` or ``None`` for a linear output)."""
    import keras

    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, groups=groups,
        dilation_rate=dilation_rate,
        use_bias=(not batch_norm) if use_bias is None else use_bias,
        kernel_initializer=kernel_initializer, kernel_regularizer=reg, name=name,
    )(x)
    return _bn_act(x, batch_norm=batch_norm, activation=activation, name=name)


def depthwise_bn_relu(x, kernel_size: int = 3, *, batch_norm: bool, name: str,
                      strides: int = 1, padding: str = "same",
                      activation: str | None = "relu"):
    """Depthwise conv (one k×k filter per channel, no bias when followed by BN) → BN →
    activation (``relu``, ``relu6`` or ``None``)."""
    import keras

    x = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, use_bias=not batch_norm,
        depthwise_initializer="he_normal", name=name,
    )(x)
    return _bn_act(x, batch_norm=batch_norm, activation=activation, name=name)


def logits(x, num_classes: int, name: str = "logits"):
    """The classifier's last Dense layer; float32 even under mixed precision."""
    import keras

    return keras.layers.Dense(num_classes, dtype="float32", name=name)(x)


def fc_widths(fc_units: int | Sequence[int]) -> list[int]:
    """The hidden FC widths: one int for two layers of that width (AlexNet, VGG), or a list."""
    return [fc_units] * 2 if isinstance(fc_units, int) else list(fc_units)


def classifier_model(inputs, x, num_classes: int, head: str, *, name: str,
                     fc_units: Sequence[int] = (), dropout: float = 0.0,
                     batch_norm: bool = False, gap_activation: str | None = None):
    """``keras.Model`` from ``inputs`` to the :func:`classifier_head` on the feature map ``x``."""
    import keras

    out = classifier_head(x, num_classes, head, fc_units=fc_units, dropout=dropout,
                          batch_norm=batch_norm, gap_activation=gap_activation)
    return keras.Model(inputs, out, name=name)


def classifier_head(x, num_classes: int, head: str, *, fc_units: Sequence[int] = (),
                    dropout: float = 0.0, batch_norm: bool = False,
                    gap_activation: str | None = None):
    """Turn a feature map ``x`` (batch, h, w, c) into float32 logits (batch, num_classes).

    ``dense``: Flatten → [FC(u) → (BN) → ReLU → Dropout] for u in ``fc_units`` → FC(classes).
    The hidden layers are named ``fc1``, ``fc2``…, the last one ``logits``.

    ``conv``: the same layers as convolutions: ``fc1`` is an h×w ``valid``
    convolution, the later ones 1×1, then ``logits_conv`` (1×1 to the classes)
    and global average pooling. Same parameters as ``dense``.

    ``gap``: Dropout → 1×1 convolution to the classes (``classifier``) →
    global average pooling; ``fc_units`` is not used. ``gap_activation``
    (``relu``) puts an activation between the convolution and the pooling
    (SqueezeNet's conv10 keeps its ReLU).

    ``pool_fc``: global average pooling (``avg_pool``) → Dropout → FC to the
    classes (``logits``); ``fc_units`` is not used.
    """
    import keras

    check_choice(head, HEADS, "head")
    fc_units = [int(u) for u in fc_units]
    if head == "gap":
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
        act = activation_layer(gap_activation, "classifier")
        if act is not None:
            x = act(x)
        return keras.layers.GlobalAveragePooling2D(name="logits", dtype="float32")(x)
    if head == "pool_fc":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        return logits(x, num_classes)
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


# Below this many pixels on the shorter side, the compact families (SqueezeNet, MobileNet,
# ShuffleNet) leave out their stem's 4× downsampling unless told otherwise (``small_input``).
SMALL_INPUT_SIDE = 64


def small_input_mode(small_input: bool | None, input_shape: Sequence[int]) -> bool:
    """Whether a compact family builds its small-input stem.

    ``small_input`` ``True`` or ``False`` decides; ``None`` (auto) is ``True``
    when the shorter side of the (height, width, channels) ``input_shape`` is
    below :data:`SMALL_INPUT_SIDE` (64 px: CIFAR, digits, MNIST), where the
    ImageNet stem would shrink the maps 32× to 1×1 or less.
    """
    if small_input is not None and not isinstance(small_input, bool):
        raise KcnnError(f"model.small_input must be true, false or null (auto) "
                        f"(got {small_input!r})")
    if small_input is not None:
        return small_input
    sides = [d for d in tuple(input_shape)[:2] if d is not None]
    return bool(sides) and min(sides) < SMALL_INPUT_SIDE


def check_positive(value: Any, key: str) -> float:
    """``value`` as a float if it is a number > 0; otherwise a KcnnError naming ``key``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise KcnnError(f"model.{key} must be a number > 0 (got {value!r})")
    return float(value)


def require_batch_norm(batch_norm: bool, family: str) -> None:
    """The families designed around batch normalization refuse ``batch_norm: false``."""
    if not batch_norm:
        raise KcnnError(f"model.batch_norm: {family} always uses batch normalization "
                        f"(got false)")


def compact_kwargs_check(family: str, *, positive: Sequence[str] = (),
                         batch_norm_required: bool = False,
                         choices: dict[str, Sequence[str]] | None = None):
    """A recipe-time ``check_kwargs`` hook (see :func:`kcnn.models.registry.check_kwargs`) for a
    compact family: ``positive`` numeric options, ``small_input``, ``batch_norm`` where the
    family needs it, and choice-valued options; no Keras import."""

    def check_kwargs(kwargs: dict[str, Any]) -> None:
        for key in positive:
            if key in kwargs:
                check_positive(kwargs[key], key)
        if "small_input" in kwargs:
            small_input_mode(kwargs["small_input"], ())
        if batch_norm_required and "batch_norm" in kwargs:
            require_batch_norm(kwargs["batch_norm"], family)
        for key, valid in (choices or {}).items():
            if key in kwargs:
                try:
                    check_choice(kwargs[key], valid, key)
                except KcnnError as err:
                    raise KcnnError(f"model.{key}: {err}") from None

    return check_kwargs
